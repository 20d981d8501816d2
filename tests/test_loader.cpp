#include "vicreg/loader.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <opencv2/imgcodecs.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

namespace {

std::shared_ptr<vicreg::Dataset> images(int64_t n, int64_t side = 12, int64_t channels = 1) {
  auto d = std::make_shared<vicreg::Dataset>();
  d->name = "synthetic";
  d->channels = channels;
  d->images = torch::randint(0, 256, {n, side, side, channels}, torch::kUInt8);
  d->labels = torch::arange(n) % 10;
  return d;
}

std::shared_ptr<vicreg::TwoViewTransform> fmnist(int size = 12) {
  return std::make_shared<vicreg::ImageTwoViewTransform>(
      vicreg::make_recipe("fashion-mnist", 1, size));
}

TEST(Loader, SameBatchesWhateverTheNumberOfWorkers) {
  torch::manual_seed(0);
  auto data = images(50);
  std::vector<vicreg::TwoViewBatch> reference;
  for (int workers : {1, 2, 4}) {
    vicreg::TwoViewLoader loader(data, fmnist(), {8, workers, 3, /*seed=*/42});
    loader.start();
    for (int b = 0; b < 14; ++b) {  // more than one epoch (6 batches each)
      const auto batch = loader.next();
      if (workers == 1) {
        reference.push_back(batch);
        continue;
      }
      EXPECT_TRUE(torch::equal(batch.view_a, reference[b].view_a)) << workers << " " << b;
      EXPECT_TRUE(torch::equal(batch.view_b, reference[b].view_b));
      EXPECT_TRUE(torch::equal(batch.indices, reference[b].indices));
    }
  }
  EXPECT_EQ(reference[6].epoch, 1);
  EXPECT_EQ(reference[6].index, 0);
  EXPECT_EQ(reference[0].view_a.sizes(), (std::vector<int64_t>{8, 1, 12, 12}));
  EXPECT_FALSE(torch::equal(reference[0].view_a, reference[0].view_b));  // two different views
  EXPECT_TRUE(torch::equal(reference[3].labels, reference[3].indices % 10));
}

TEST(Loader, EpochsShuffleDropTheLastBatchAndCoverEachSampleOnce) {
  auto data = images(50);
  vicreg::TwoViewLoader loader(data, fmnist(), {8, 2, 2, 7});
  EXPECT_EQ(loader.batches_per_epoch(), 6);  // 50 / 8, the last 2 samples dropped
  std::set<int64_t> seen;
  loader.start();
  for (int b = 0; b < 6; ++b) {
    const auto batch = loader.next();
    const int64_t* p = batch.indices.data_ptr<int64_t>();
    seen.insert(p, p + 8);
  }
  EXPECT_EQ(seen.size(), 48u);  // no repeats within an epoch
  EXPECT_FALSE(torch::equal(loader.epoch_order(0), loader.epoch_order(1)));
  EXPECT_FALSE(torch::equal(loader.epoch_order(0), torch::arange(50)));
  vicreg::TwoViewLoader other_seed(data, fmnist(), {8, 2, 2, 8});
  EXPECT_FALSE(torch::equal(loader.epoch_order(0), other_seed.epoch_order(0)));
}

TEST(Loader, ResumesMidStreamWithTheSameData) {
  auto data = images(40);
  vicreg::TwoViewLoader a(data, fmnist(), {4, 2, 4, 3});
  a.start();
  std::vector<vicreg::TwoViewBatch> all;
  for (int b = 0; b < 15; ++b) all.push_back(a.next());
  vicreg::TwoViewLoader b(data, fmnist(), {4, 1, 2, 3});
  b.start(12);  // epoch 1, batch 2
  const auto batch = b.next();
  EXPECT_EQ(batch.epoch, 1);
  EXPECT_EQ(batch.index, 2);
  EXPECT_TRUE(torch::equal(batch.view_a, all[12].view_a));
  EXPECT_TRUE(torch::equal(b.next().view_b, all[13].view_b));
}

TEST(Loader, ShardsSplitEveryGlobalBatchWithoutOverlap) {
  auto data = images(50);
  vicreg::LoaderOptions whole{8, 1, 2, /*seed=*/5};
  vicreg::TwoViewLoader one(data, fmnist(), whole);
  one.start(5);  // across the epoch boundary (6 batches per epoch)
  std::vector<std::unique_ptr<vicreg::TwoViewLoader>> shards;
  for (int r = 0; r < 4; ++r) {
    vicreg::LoaderOptions o = whole;
    o.shard_rank = r;
    o.shard_count = 4;
    shards.push_back(std::make_unique<vicreg::TwoViewLoader>(data, fmnist(), o));
    EXPECT_EQ(shards.back()->batches_per_epoch(), one.batches_per_epoch());
    shards.back()->start(5);
  }
  for (int b = 0; b < 3; ++b) {
    const auto full = one.next();
    std::vector<torch::Tensor> a, v, idx;
    for (auto& s : shards) {
      const auto part = s->next();
      EXPECT_EQ(part.view_a.size(0), 2);
      EXPECT_EQ(part.epoch, full.epoch);
      a.push_back(part.view_a);
      v.push_back(part.view_b);
      idx.push_back(part.indices);
    }
    // The shards in rank order are the global batch, views included: no overlap, no gap.
    EXPECT_TRUE(torch::equal(torch::cat(idx), full.indices)) << b;
    EXPECT_TRUE(torch::equal(torch::cat(a), full.view_a)) << b;
    EXPECT_TRUE(torch::equal(torch::cat(v), full.view_b)) << b;
  }
  vicreg::LoaderOptions bad = whole;
  bad.shard_count = 3;  // 8 rows do not split over 3
  try {
    vicreg::TwoViewLoader l(data, fmnist(), bad);
    ADD_FAILURE() << "no error";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the 3 processes"), std::string::npos)
        << e.what();
  }
  bad.shard_count = 2;
  bad.shard_rank = 2;
  EXPECT_THROW(vicreg::TwoViewLoader(data, fmnist(), bad), vicreg::UsageError);
}

TEST(Loader, RejectsImpossibleOptions) {
  auto data = images(10);
  EXPECT_THROW(vicreg::TwoViewLoader(data, fmnist(), {1, 1, 1, 0}), vicreg::UsageError);
  EXPECT_THROW(vicreg::TwoViewLoader(data, fmnist(), {11, 1, 1, 0}), vicreg::UsageError);
  EXPECT_THROW(vicreg::TwoViewLoader(data, fmnist(), {4, 0, 1, 0}), vicreg::UsageError);
  auto rgb = images(10, 12, 3);
  // make_recipe sizes the statistics for the data's channels; a 1-channel recipe on RGB data fails.
  EXPECT_NO_THROW(vicreg::TwoViewLoader(
      rgb,
      std::make_shared<vicreg::ImageTwoViewTransform>(vicreg::make_recipe("fashion-mnist", 3, 12)),
      {4, 1, 1, 0}));
  EXPECT_THROW(vicreg::TwoViewLoader(rgb, fmnist(), {4, 1, 1, 0}), vicreg::UsageError);
  auto vectors = std::make_shared<vicreg::Dataset>();
  vectors->vectors = torch::randn({10, 3});
  EXPECT_THROW(vicreg::TwoViewLoader(vectors, fmnist(), {4, 1, 1, 0}), vicreg::UsageError);
}

TEST(Loader, ForwardsAWorkersError) {
  auto data = std::make_shared<vicreg::Dataset>();
  data->name = "files";
  data->channels = 3;
  data->files = {"/nonexistent/a.png", "/nonexistent/b.png"};
  vicreg::TwoViewLoader loader(
      data, std::make_shared<vicreg::ImageTwoViewTransform>(vicreg::make_recipe("cifar", 3)),
      {2, 2, 2, 0});
  loader.start();
  try {
    loader.next();
    FAIL() << "expected the decode error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("skip_bad_images"), std::string::npos) << e.what();
  }
}

TEST(Loader, SkipsUnreadableImagesDeterministicallyWhenAsked) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("vicreg_skip_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto data = std::make_shared<vicreg::Dataset>();
  data->name = "files";
  data->source = dir.string();
  data->channels = 3;
  for (int i = 0; i < 6; ++i) {
    const std::string f = (dir / (std::to_string(i) + ".png")).string();
    data->files.push_back(f);
    if (i == 2) {
      std::ofstream(f) << "not a png";  // undecodable
    } else if (i != 4) {                // 4 vanished
      ASSERT_TRUE(cv::imwrite(f, cv::Mat(8, 8, CV_8UC3, cv::Scalar(i * 40, 0, 0))));
    }
  }
  data->labels = torch::arange(6);
  const auto transform =
      std::make_shared<vicreg::ImageTwoViewTransform>(vicreg::make_recipe("cifar", 3, 8));
  vicreg::LoaderOptions o{6, 2, 2, 0};
  o.shuffle = false;
  o.skip_bad_images = true;
  std::vector<vicreg::TwoViewBatch> runs;
  for (int r = 0; r < 2; ++r) {
    vicreg::TwoViewLoader loader(data, transform, o);
    loader.start();
    runs.push_back(loader.next());
  }
  const auto& b = runs[0];
  ASSERT_EQ(b.skipped.size(), 2u);
  EXPECT_NE(b.skipped[0].find("2.png"), std::string::npos) << b.skipped[0];
  EXPECT_NE(b.skipped[1].find("4.png"), std::string::npos) << b.skipped[1];
  // Each bad sample's place goes to the next readable one; labels follow the samples used.
  EXPECT_TRUE(b.indices.equal(torch::tensor({0, 1, 3, 3, 5, 5}, torch::kLong)));
  EXPECT_TRUE(b.labels.equal(b.indices));
  EXPECT_TRUE(torch::equal(b.view_a, runs[1].view_a));
  std::filesystem::remove_all(dir);
}

TEST(Loader, VectorViews) {
  auto data = std::make_shared<vicreg::Dataset>();
  data->name = "vectors";
  data->vectors = torch::randn({30, 5});
  vicreg::TwoViewLoader loader(
      data, std::make_shared<vicreg::VectorTwoViewTransform>(vicreg::VectorAugment{}),
      {6, 2, 2, 1});
  loader.start();
  const auto batch = loader.next();
  EXPECT_EQ(batch.view_a.sizes(), (std::vector<int64_t>{6, 5}));
  EXPECT_FALSE(batch.labels.defined());
  EXPECT_FALSE(torch::equal(batch.view_a, batch.view_b));
  // Views stay close to their source row.
  const auto src = data->vectors.index_select(0, batch.indices);
  EXPECT_LT((batch.view_a - src).abs().mean().item<float>(), 1.0f);
}

}  // namespace
