// The training loop on a small synthetic data set: the loss falls, a stopped and resumed run
// ends with the same parameters as an uninterrupted one, checkpoints (between epochs, the
// previous one kept, checksums, damage) and the backbone file, the config file, and divergence.
#include "vicreg/run/trainer.h"

#include "vicreg/data.h"
#include "vicreg/error.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/loader.h"
#include "vicreg/precision.h"

#include "support/synthetic_data.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace {

namespace fs = std::filesystem;

class Train : public vicreg::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    vicreg::testing::write_idx_dataset(dir_ / "data", 96, 16);
  }

  vicreg::TrainConfig small(const std::string& name) {
    vicreg::TrainConfig c;
    c.data.dataset = vicreg::DatasetKind::Mnist;
    c.runtime.data_dir = (dir_ / "data").string();
    c.data.image_size = 16;
    c.model.width = 8;
    c.model.stages = 3;
    c.model.mlp = "64-64";
    c.optim.batch_size = 16;  // 6 steps per epoch
    c.optim.epochs = 3;
    c.optim.warmup_epochs = 1;
    c.runtime.threads = 1;
    c.runtime.workers = 2;
    c.runtime.log_every = 2;
    c.runtime.exp_dir = (dir_ / name).string();
    // The same numbers on every machine (auto would pick bf16 where the CPU has it), and in
    // every run (auto times both memory formats at the start of a new run).
    c.runtime.precision = vicreg::Precision::Fp32;
    c.runtime.channels_last = vicreg::Toggle::Off;
    return c;
  }

  /// A batch of the small config's data, as the trainer's loader makes it.
  vicreg::TwoViewBatch batch_of(const vicreg::Trainer& t, bool channels_last = false) {
    auto data = std::make_shared<vicreg::Dataset>(
        vicreg::load_dataset(t.config().dataset_config(vicreg::Split::Train)));
    vicreg::TwoViewLoader loader(
        data,
        std::make_shared<vicreg::ImageTwoViewTransform>(
            vicreg::make_recipe(t.config().resolved_recipe(), 1, 16), channels_last),
        {t.config().optim.batch_size, 1, 1, 0});
    loader.start();
    return loader.next();
  }

  static void expect_same_parameters(vicreg::VICReg a, vicreg::VICReg b) {
    const auto pa = a->named_parameters(), pb = b->named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (const auto& p : pa) {
      EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
    }
    const auto ba = a->named_buffers(), bb = b->named_buffers();
    for (const auto& p : ba) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key();
  }
};

std::vector<nlohmann::json> read_metrics(const fs::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST_F(Train, LossFallsAndTheExperimentDirIsComplete) {
  auto c = small("run");
  c.optim.epochs = 20;
  c.runtime.log_every = 6;
  c.optim.optimizer = vicreg::OptimizerKind::AdamW;
  c.optim.base_lr = 2e-3;
  vicreg::Trainer trainer(c);
  EXPECT_EQ(trainer.steps_per_epoch(), 6);
  const auto r = trainer.run({vicreg::ProgressStyle::None});
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.step, 120);
  const auto metrics = read_metrics(fs::path(c.runtime.exp_dir) / "metrics.jsonl");
  ASSERT_EQ(metrics.size(), 20u);
  for (const char* key : {"epoch", "step", "lr", "loss", "invariance", "variance", "covariance",
                          "std_z", "images_per_s", "elapsed_s"}) {
    EXPECT_TRUE(metrics[0].contains(key)) << key;
  }
  // Mean of the first and last three intervals (18 steps each).
  const auto mean_of = [&](const char* key, size_t from) {
    double s = 0;
    for (size_t i = from; i < from + 3; ++i) s += metrics[i][key].get<double>();
    return s / 3;
  };
  EXPECT_LT(mean_of("loss", 17), 0.93 * mean_of("loss", 0));
  EXPECT_LT(mean_of("invariance", 17), mean_of("invariance", 0));
  EXPECT_NEAR(metrics.back()["lr"].get<double>(), 2e-3 * 0.001, 1e-5);  // cosine end
  for (const char* f : {"config.json", "checkpoint.pt", "backbone.pt"}) {
    EXPECT_TRUE(fs::exists(fs::path(c.runtime.exp_dir) / f)) << f;
  }
  for (const auto& e : fs::directory_iterator(c.runtime.exp_dir)) {  // no temporary left over
    if (e.path().filename() == ".lock") continue;  // the directory's lock (one run at a time)
    EXPECT_NE(e.path().filename().string().front(), '.') << e.path();
  }

  // config.json holds everything and reads back into the same config.
  std::ifstream in(fs::path(c.runtime.exp_dir) / "config.json");
  nlohmann::json j;
  in >> j;
  vicreg::TrainConfig back;
  vicreg::update_from_json(back, j);
  // What auto chose is recorded, the recipe resolved, and every view setting of the recipe.
  auto resolved = c;
  resolved.runtime.channels_last = vicreg::Toggle::Off;
  resolved.data.recipe = "fashion-mnist";
  resolved.data.recipe_overrides = vicreg::recipe_override_spec(c.recipe(1));
  EXPECT_NE(resolved.data.recipe_overrides.find("brightness=1.5,contrast=1.5"), std::string::npos);
  EXPECT_FALSE(trainer.channels_last());
  EXPECT_EQ(vicreg::to_json(back), vicreg::to_json(resolved));

  // The backbone alone, rebuilt from its file, gives the trained model's representations.
  auto backbone = vicreg::load_backbone((fs::path(c.runtime.exp_dir) / "backbone.pt").string());
  auto model = trainer.model();
  model->eval();
  const auto x = torch::randn({4, 1, 16, 16});
  EXPECT_TRUE(torch::allclose(backbone->forward(x), model->represent(x)));
}

TEST_F(Train, StopAndResumeGivesTheSameParametersAsOneRun) {
  auto c = small("straight");
  vicreg::Trainer straight(c);
  straight.run({vicreg::ProgressStyle::None});

  auto c2 = small("resumed");
  c2.runtime.max_steps = 8;  // mid-epoch 2
  {
    vicreg::Trainer first(c2);
    const auto r = first.run({vicreg::ProgressStyle::None});
    EXPECT_EQ(r.step, 8);
    EXPECT_TRUE(r.stopped);
  }
  {
    // A stop request (as from SIGINT) after the next step.
    auto c3 = c2;
    c3.runtime.max_steps = 0;
    std::atomic<bool> stop{true};
    vicreg::Trainer second(c3);
    EXPECT_EQ(second.step(), 8);
    vicreg::TrainHooks hooks{vicreg::ProgressStyle::None, &stop};
    EXPECT_EQ(second.run(hooks).step, 9);
  }
  // As if killed after logging steps past its checkpoint (9), midway through a line.
  std::ofstream(fs::path(c2.runtime.exp_dir) / "metrics.jsonl", std::ios::app)
      << R"({"step": 12, "loss": 1.0})"
      << "\n"
      << R"({"step": 13, "lo)";
  auto c4 = c2;
  c4.runtime.max_steps = 0;
  c4.runtime.workers = 1;  // the data do not depend on the number of workers
  vicreg::Trainer last(c4);
  EXPECT_EQ(last.step(), 9);
  const auto r = last.run({vicreg::ProgressStyle::None});
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.step, 18);
  expect_same_parameters(straight.model(), last.model());
  const auto m = read_metrics(fs::path(c2.runtime.exp_dir) / "metrics.jsonl");
  EXPECT_EQ(m.back()["step"].get<int64_t>(), 18);
  // Resumed twice: every step logged once, in order (the lines past the checkpoint were cut).
  for (size_t k = 1; k < m.size(); ++k) {
    EXPECT_GT(m[k]["step"].get<int64_t>(), m[k - 1]["step"].get<int64_t>()) << "line " << k;
  }
}

TEST_F(Train, ResumeKeepsTheStoredModelSettings) {
  auto c = small("keep");
  c.runtime.max_steps = 2;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  auto changed = c;
  changed.model.mlp = "32-32";
  changed.runtime.max_steps = 3;
  // Found in the directory, a run of another model is refused, naming the difference...
  try {
    vicreg::Trainer refused(changed);
    FAIL() << "expected a UsageError";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("(it has --mlp \"64-64\")"), std::string::npos)
        << e.what();
  }
  // ...and named, it continues with the checkpoint's model.
  const std::string checkpoint = (fs::path(c.runtime.exp_dir) / "checkpoint.pt").string();
  vicreg::Trainer t(changed, checkpoint);
  EXPECT_EQ(t.config().model.mlp, "64-64");
  EXPECT_EQ(t.step(), 2);
}

TEST_F(Train, DivergenceStopsWithTheStepAndKeepsTheCheckpoint) {
  auto c = small("diverge");
  c.optim.optimizer = vicreg::OptimizerKind::Sgd;
  c.optim.base_lr = 1e12;
  c.optim.warmup_epochs = 0;
  try {
    vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
    FAIL() << "expected DivergedError";
  } catch (const vicreg::DivergedError& e) {
    EXPECT_GE(e.step, 1);
    EXPECT_NE(std::string(e.what()).find("diverged at step " + std::to_string(e.step)),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(fs::path(c.runtime.exp_dir) / "checkpoint.pt"));  // never a bad one
}

TEST_F(Train, RejectsBadConfigs) {
  auto c = small("bad");
  c.optim.batch_size = 200;  // more than the 96 images
  EXPECT_THROW(vicreg::Trainer{c}, vicreg::UsageError);
  c = small("bad");
  c.optim.batch_size = 1;
  EXPECT_THROW(c.validate(), vicreg::UsageError);
  c = small("bad");
  c.model.mlp = "64-x";
  EXPECT_THROW(c.validate(), vicreg::UsageError);
  c = small("bad");
  c.model.arch = "resnet99";
  EXPECT_THROW(c.validate(), vicreg::UsageError);
  c.model.arch = "mlp";  // vector data only
  EXPECT_THROW(c.validate(), vicreg::UsageError);
  c = small("bad");
  c.runtime.data_dir = (dir_ / "nowhere").string();
  EXPECT_THROW(vicreg::Trainer{c}, std::runtime_error);
  vicreg::TrainConfig j;
  EXPECT_THROW(vicreg::update_from_json(j, {{"epochz", 3}}), vicreg::UsageError);
  EXPECT_THROW(vicreg::update_from_json(j, {{"epochs", "three"}}), vicreg::UsageError);
  std::ofstream(dir_ / "junk.pt") << "not a checkpoint";
  EXPECT_THROW(vicreg::Trainer(small("bad"), (dir_ / "junk.pt").string()), std::runtime_error);
  EXPECT_THROW(vicreg::load_backbone((dir_ / "junk.pt").string()), std::runtime_error);
}

TEST_F(Train, OtherDataSetsAndSeparateBranches) {
  // Vectors: npy + the mlp encoder + vector augmentations.
  vicreg::write_npy((dir_ / "train.npy").string(), torch::randn({64, 12}));
  auto c = small("npy");
  c.data.dataset = vicreg::DatasetKind::Npy;
  c.runtime.data_dir = dir_.string();
  c.model.arch = "mlp";
  c.model.encoder_mlp = "32-16";
  c.runtime.max_steps = 3;
  c.runtime.channels_last = vicreg::Toggle::Auto;
  {
    // No convolutions: nothing to time, contiguous.
    const vicreg::Trainer vectors(c);
    EXPECT_FALSE(vectors.memory_format_timing());
    EXPECT_FALSE(vectors.channels_last());
  }
  auto r = vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  EXPECT_EQ(r.step, 3);
  auto backbone = vicreg::load_backbone((fs::path(c.runtime.exp_dir) / "backbone.pt").string());
  EXPECT_EQ(backbone->forward(torch::randn({2, 12})).sizes(), (std::vector<int64_t>{2, 16}));

  // An image folder of RGB PNGs of different sizes, one subfolder per class.
  cv::RNG rng(3);
  for (int i = 0; i < 40; ++i) {
    cv::Mat img(20 + i % 7, 24, CV_8UC3);
    rng.fill(img, cv::RNG::UNIFORM, 0, 256);
    const fs::path p = dir_ / "folder" / (i % 2 ? "a" : "b") / (std::to_string(i) + ".png");
    fs::create_directories(p.parent_path());
    cv::imwrite(p.string(), img);
  }
  c = small("folder");
  c.data.dataset = vicreg::DatasetKind::ImageFolder;
  c.runtime.data_dir = (dir_ / "folder").string();
  c.data.recipe = "cifar";
  c.runtime.max_steps = 2;
  r = vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  EXPECT_EQ(r.step, 2);

  // Separate branches with different backbones.
  c = small("separate");
  c.model.shared_weights = false;
  c.model.arch_b = "resnet18";
  c.runtime.max_steps = 2;
  vicreg::Trainer t(c);
  EXPECT_TRUE(t.model()->backbone_b);
  EXPECT_EQ(t.run({vicreg::ProgressStyle::None}).step, 2);
}

TEST_F(Train, BackboneWhoseWeightsDoNotFitItsArchitectureIsRejected) {
  auto c = small("arch");
  c.runtime.max_steps = 1;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  const auto good = vicreg::read_backbone((fs::path(c.runtime.exp_dir) / "backbone.pt").string());
  EXPECT_EQ(good.in_channels, 1);
  EXPECT_EQ(good.image_size, 16);
  EXPECT_EQ(good.config.model.width, 8);
  // The same weights stored with a config that says width 16.
  torch::serialize::OutputArchive out, weights;
  good.encoder->save(weights);
  auto wrong = c;
  wrong.model.width = 16;
  out.write("backbone", weights);
  out.write("config", c10::IValue(vicreg::to_json(wrong).dump()));
  out.write("in_channels", c10::IValue(int64_t{1}));
  out.write("image_size", c10::IValue(int64_t{16}));
  out.write("in_features", c10::IValue(int64_t{0}));
  const std::string path = (dir_ / "wrong.pt").string();
  out.save_to(path);
  try {
    vicreg::read_backbone(path);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("do not fit its stored architecture"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST_F(Train, ReadModelRebuildsTheWholeCheckpointedModel) {
  auto c = small("whole");
  c.runtime.max_steps = 2;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  vicreg::DatasetConfig dc;
  dc.dataset = vicreg::DatasetKind::Mnist;
  dc.data_dir = c.runtime.data_dir;
  const vicreg::Dataset data = vicreg::load_dataset(dc);
  const std::string path = (fs::path(c.runtime.exp_dir) / "checkpoint.pt").string();
  auto m = vicreg::read_model(path, data);
  EXPECT_EQ(m.step, 2);
  EXPECT_EQ(m.config.model.mlp, c.model.mlp);
  EXPECT_FALSE(m.model->is_training());
  // Its backbone is the backbone.pt's, and its expander maps to the embedding size.
  const auto b = vicreg::read_backbone((fs::path(c.runtime.exp_dir) / "backbone.pt").string());
  const auto x = torch::randn({4, 1, 16, 16});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(m.model->backbone->forward(x), b.encoder->forward(x)));
  EXPECT_EQ(m.model->projector->forward(m.model->backbone->forward(x)).size(1),
            vicreg::parse_layer_spec(c.model.mlp).back());
  // Data of another shape (3 channels) do not fit the stored model: the error names the file.
  vicreg::Dataset rgb = data;
  rgb.channels = 3;
  try {
    vicreg::read_model(path, rgb);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_THROW(vicreg::read_model((dir_ / "none.pt").string(), data), std::runtime_error);
}

TEST_F(Train, OnlineKnnProbeAndCollapseDiagnosticsInTheMetrics) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 40, 16, 5, "t10k");
  auto c = small("probe");
  c.optim.epochs = 2;
  c.runtime.eval_every = 1;
  c.runtime.eval_bank = 60;
  c.runtime.online_probe = vicreg::Toggle::Off;  // the online probe: its own test, below
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  const auto metrics = read_metrics(fs::path(c.runtime.exp_dir) / "metrics.jsonl");
  std::vector<nlohmann::json> probes;
  for (const auto& m : metrics) {
    if (m.contains("event")) {
      probes.push_back(m);
    } else {
      EXPECT_FALSE(m.contains("online_probe_top1"));
      EXPECT_LE(m["std_z_min"].get<double>(), m["std_z"].get<double>());
      EXPECT_GE(m["rankme_y"].get<double>(), 1.0);
      EXPECT_LE(m["rankme_z"].get<double>(), 16.0 + 1e-6);  // at most the batch size
    }
  }
  ASSERT_EQ(probes.size(), 2u);
  EXPECT_EQ(probes[0]["event"], "knn");
  EXPECT_EQ(probes[0]["step"], 6);
  EXPECT_EQ(probes[1]["bank"], 60);
  // Ten well-separated classes (the place of a bright square): far above chance (10 %).
  EXPECT_GE(probes[1]["knn_top1"].get<double>(), 0.3);
  EXPECT_GE(probes[1]["knn_top5"].get<double>(), probes[1]["knn_top1"].get<double>());
}

TEST_F(Train, OnlineLinearProbeLearnsWatchesAndResumesWithoutTouchingTheBackbone) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 40, 16, 5, "t10k");
  // With the probe (auto: the data have labels) and without it: the same backbone, bit for bit,
  // so no gradient of the probe reached it.
  auto with = small("with");
  with.optim.epochs = 4;
  with.runtime.eval_every = 1;
  vicreg::Trainer a(with);
  ASSERT_TRUE(a.online_probe());
  a.run({vicreg::ProgressStyle::None});
  auto without = with;
  without.runtime.exp_dir = (dir_ / "without").string();
  without.runtime.online_probe = vicreg::Toggle::Off;
  vicreg::Trainer b(without);
  EXPECT_FALSE(b.online_probe());
  b.run({vicreg::ProgressStyle::None});
  expect_same_parameters(a.model(), b.model());

  const auto metrics = read_metrics(fs::path(with.runtime.exp_dir) / "metrics.jsonl");
  std::vector<double> train_top1, held_out;
  for (const auto& m : metrics) {
    if (m.value("event", "") == "online_probe") {
      held_out.push_back(m["top1"].get<double>());
      EXPECT_GE(m["top5"].get<double>(), m["top1"].get<double>());
    } else if (!m.contains("event")) {
      train_top1.push_back(m["online_probe_top1"].get<double>());
      EXPECT_GT(m["online_probe_loss"].get<double>(), 0.0);
    }
  }
  ASSERT_EQ(held_out.size(), 4u);  // one per epoch, after the kNN probe's line
  ASSERT_FALSE(train_top1.empty());
  std::printf(
      "online probe, held-out top-1 by epoch: %.3f %.3f %.3f %.3f; training: %.3f -> %.3f\n",
      held_out[0], held_out[1], held_out[2], held_out[3], train_top1.front(), train_top1.back());
  // Ten well-separated classes (the place of a bright square): it learns them, well above chance.
  EXPECT_GT(train_top1.back(), train_top1.front());
  EXPECT_GT(held_out.back(), held_out.front());
  EXPECT_GE(held_out.back(), 0.25) << "held-out top-1 by epoch: " << held_out[0] << " "
                                   << held_out[1] << " " << held_out[2] << " " << held_out[3];

  // Stopped and resumed: the probe ends as in one run (it is in the checkpoint).
  auto stopped = with;
  stopped.runtime.exp_dir = (dir_ / "stopped").string();
  stopped.runtime.max_steps = 13;
  vicreg::Trainer(stopped).run({vicreg::ProgressStyle::None});
  stopped.runtime.max_steps = 0;
  vicreg::Trainer resumed(stopped);
  EXPECT_EQ(resumed.step(), 13);
  resumed.run({vicreg::ProgressStyle::None});
  const auto pa = a.online_probe()->named_parameters(),
             pr = resumed.online_probe()->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pr[p.key()])) << p.key();
  const auto ba = a.online_probe()->named_buffers(), br = resumed.online_probe()->named_buffers();
  for (const auto& p : ba) EXPECT_TRUE(torch::equal(p.value(), br[p.key()])) << p.key();

  // "on" needs labels.
  fs::create_directories(dir_ / "table");
  vicreg::write_npy((dir_ / "table" / "train.npy").string(), torch::randn({64, 12}));
  auto table = small("table-run");
  table.data.dataset = vicreg::DatasetKind::Npy;
  table.runtime.data_dir = (dir_ / "table").string();
  table.model.arch = "mlp";
  table.model.encoder_mlp = "16-16";
  table.runtime.online_probe = vicreg::Toggle::On;
  EXPECT_THROW(vicreg::Trainer{table}, vicreg::UsageError);
  table.runtime.online_probe = vicreg::Toggle::Auto;
  EXPECT_FALSE(vicreg::Trainer(table).online_probe());
}

// ---------------------------------------------------------------------------------------------
// Mixed precision (precision.h)

TEST_F(Train, Bf16StepsAgreeWithFp32WithinBf16Tolerance) {
  auto c = small("fp32");
  vicreg::Trainer fp32(c);
  auto cb = small("bf16");
  cb.runtime.precision = vicreg::Precision::Bf16;
  vicreg::Trainer bf16(cb);
  EXPECT_EQ(bf16.precision().precision, vicreg::Precision::Bf16);
  EXPECT_FALSE(bf16.channels_last());
  EXPECT_FALSE(fp32.channels_last());
  const auto batch = batch_of(fp32);
  for (int i = 0; i < 3; ++i) {
    const auto a = fp32.train_step(batch), b = bf16.train_step(batch);
    EXPECT_NEAR(b.loss, a.loss, 0.03 * std::abs(a.loss)) << "step " << i;
    ASSERT_EQ(a.terms.size(), 3u);  // invariance, variance, covariance
    ASSERT_EQ(b.terms.size(), 3u);
    EXPECT_NEAR(b.terms[1], a.terms[1], 0.03 * std::abs(a.terms[1]) + 1e-3) << "step " << i;
    EXPECT_NEAR(b.std_z, a.std_z, 0.02 * a.std_z) << "step " << i;
  }
  // Master weights, BatchNorm statistics and gradients stay fp32; they moved alike.
  const auto pa = fp32.model()->named_parameters(), pb = bf16.model()->named_parameters();
  for (const auto& p : pb) {
    EXPECT_EQ(p.value().scalar_type(), torch::kFloat) << p.key();
    EXPECT_EQ(p.value().grad().scalar_type(), torch::kFloat) << p.key();
    const auto diff = (p.value() - pa[p.key()]).abs().max().item<double>();
    EXPECT_LT(diff, 0.02 + 0.02 * pa[p.key()].abs().max().item<double>()) << p.key();
  }
  for (const auto& b : bf16.model()->named_buffers()) {
    if (b.value().is_floating_point()) {
      EXPECT_EQ(b.value().scalar_type(), torch::kFloat) << b.key();
    }
  }
}

TEST_F(Train, ChannelsLastTrainsLikeContiguous) {
  auto c = small("contiguous");
  c.runtime.channels_last = vicreg::Toggle::Off;
  vicreg::Trainer plain(c);
  EXPECT_FALSE(plain.channels_last());
  auto cl_config = small("channels_last");
  cl_config.runtime.channels_last = vicreg::Toggle::On;
  vicreg::Trainer cl(cl_config);
  EXPECT_TRUE(cl.channels_last());
  EXPECT_TRUE(vicreg::has_channels_last_weights(*cl.model()) ||
              cl.model()->parameters().front().size(1) == 1);
  const auto a = plain.train_step(batch_of(plain)), b = cl.train_step(batch_of(cl, true));
  EXPECT_NEAR(a.loss, b.loss, 1e-4 * std::abs(a.loss));
  EXPECT_NEAR(a.std_z, b.std_z, 1e-4);
}

TEST_F(Train, ChannelsLastAutoTimesBothFormatsInANewRunOnACpu) {
  for (const auto precision : {vicreg::Precision::Fp32, vicreg::Precision::Bf16}) {
    const std::string name = vicreg::to_string(precision);
    auto c = small("auto_" + name);
    c.runtime.precision = precision;
    c.runtime.channels_last = vicreg::Toggle::Auto;
    c.runtime.max_steps = 2;
    bool chosen = false;
    {
      vicreg::Trainer measured(c);
      ASSERT_TRUE(measured.memory_format_timing()) << name;
      const vicreg::MemoryFormatTiming t = *measured.memory_format_timing();
      EXPECT_GT(t.contiguous_s, 0) << name;
      EXPECT_GT(t.channels_last_s, 0) << name;
      EXPECT_TRUE(std::isfinite(t.contiguous_s) && std::isfinite(t.channels_last_s)) << name;
      EXPECT_GE(t.rounds, 1) << name;
      EXPECT_LE(t.rounds, 3) << name;
      // The faster format is taken, recorded, and the weights are in it.
      chosen = measured.channels_last();
      EXPECT_EQ(chosen, t.channels_last_s < t.contiguous_s) << name;
      EXPECT_EQ(measured.config().runtime.channels_last,
                chosen ? vicreg::Toggle::On : vicreg::Toggle::Off)
          << name;
      EXPECT_EQ(vicreg::has_channels_last_weights(*measured.model()), chosen) << name;

      // Timing leaves no trace: the run trains as one told that format from the start (the same
      // initial weights, the same data), bit for bit.
      auto told = small("told_" + name);
      told.runtime.precision = precision;
      told.runtime.max_steps = 2;
      told.runtime.channels_last = chosen ? vicreg::Toggle::On : vicreg::Toggle::Off;
      vicreg::Trainer pinned(told);
      EXPECT_FALSE(pinned.memory_format_timing()) << name;
      measured.run({vicreg::ProgressStyle::None});
      pinned.run({vicreg::ProgressStyle::None});
      expect_same_parameters(measured.model(), pinned.model());
    }

    // Resumed, the recorded format is kept without timing again.
    c.runtime.max_steps = 3;
    vicreg::Trainer resumed(c);
    EXPECT_EQ(resumed.step(), 2) << name;
    EXPECT_FALSE(resumed.memory_format_timing()) << name;
    EXPECT_EQ(resumed.channels_last(), chosen) << name;
  }
  // Asked for, nothing is timed.
  auto on = small("on");
  on.runtime.channels_last = vicreg::Toggle::On;
  vicreg::Trainer asked(on);
  EXPECT_FALSE(asked.memory_format_timing());
  EXPECT_TRUE(asked.channels_last());
}

TEST_F(Train, Bf16StopAndResumeGivesTheSameParametersAsOneRun) {
  auto c = small("bf16_straight");
  c.runtime.precision = vicreg::Precision::Bf16;
  c.optim.epochs = 2;
  vicreg::Trainer straight(c);
  straight.run({vicreg::ProgressStyle::None});
  auto c2 = small("bf16_resumed");
  c2.runtime.precision = vicreg::Precision::Bf16;
  c2.optim.epochs = 2;
  c2.runtime.max_steps = 5;
  vicreg::Trainer(c2).run({vicreg::ProgressStyle::None});
  c2.runtime.max_steps = 0;
  c2.runtime.precision = vicreg::Precision::Auto;  // auto continues in the run's precision
  vicreg::Trainer last(c2);
  EXPECT_EQ(last.precision().precision, vicreg::Precision::Bf16);
  EXPECT_EQ(last.step(), 5);
  EXPECT_EQ(last.run({vicreg::ProgressStyle::None}).step, 12);
  expect_same_parameters(straight.model(), last.model());
}

TEST_F(Train, ConfigRecordsThePrecisionAutoChose) {
  auto c = small("auto");
  c.runtime.precision = vicreg::Precision::Auto;
  c.runtime.max_steps = 1;
  vicreg::Trainer t(c);
  t.run({vicreg::ProgressStyle::None});
  std::ifstream in(fs::path(c.runtime.exp_dir) / "config.json");
  nlohmann::json j;
  in >> j;
  const auto chosen = vicreg::resolve_precision(vicreg::Precision::Auto, torch::kCPU).precision;
  EXPECT_EQ(j["runtime"]["precision"], vicreg::to_string(chosen));
  EXPECT_EQ(t.config().runtime.precision, chosen);
  auto bad = small("fp16");
  bad.runtime.precision = vicreg::Precision::Fp16;
  EXPECT_THROW(vicreg::Trainer{bad}, vicreg::UsageError);
}

TEST_F(Train, LossScalingSkipsNonFiniteStepsThenStopsAsDiverged) {
  auto c = small("scaled");
  c.runtime.loss_scale = vicreg::Toggle::On;
  c.runtime.max_skipped_steps = 2;
  vicreg::Trainer t(c);
  ASSERT_TRUE(t.scaler().enabled());
  const auto good = batch_of(t);
  auto bad = good;
  bad.view_a = good.view_a.clone();
  bad.view_a[0][0][0][0] = std::numeric_limits<float>::quiet_NaN();

  EXPECT_FALSE(t.train_step(good).skipped);
  EXPECT_EQ(t.scaler().scale(), 65536.0);
  EXPECT_EQ(t.scaler().growth_tracker(), 1);
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : t.model()->named_parameters()) before[p.key()] = p.value().clone();
  const auto s = t.train_step(bad);  // NaN embeddings: skipped, not an error
  EXPECT_TRUE(s.skipped);
  EXPECT_EQ(t.step(), 2);                  // the schedule moves on
  EXPECT_EQ(t.scaler().scale(), 32768.0);  // backoff
  for (const auto& p : t.model()->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), before[p.key()])) << p.key();  // no update
  }
  EXPECT_FALSE(t.train_step(good).skipped);  // a good step resets the count
  EXPECT_TRUE(t.train_step(bad).skipped);
  try {
    t.train_step(bad);
    FAIL() << "expected DivergedError";
  } catch (const vicreg::DivergedError& e) {
    EXPECT_NE(std::string(e.what()).find("2 steps in a row"), std::string::npos) << e.what();
  }
}

TEST_F(Train, CudaFp16RunsWithLossScalingAndResumes) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto c = small("cuda_fp16");
  c.runtime.device = "cuda";
  c.runtime.precision = vicreg::Precision::Fp16;
  c.runtime.max_steps = 4;
  vicreg::Trainer t(c);
  EXPECT_TRUE(t.scaler().enabled());  // auto: with fp16
  EXPECT_TRUE(t.channels_last());     // auto: on for GPUs
  const auto r = t.run({vicreg::ProgressStyle::None});
  EXPECT_EQ(r.step, 4);
  EXPECT_TRUE(std::isfinite(r.last_loss));
  const auto m = read_metrics(fs::path(c.runtime.exp_dir) / "metrics.jsonl");
  EXPECT_TRUE(m.back().contains("loss_scale"));
  c.runtime.max_steps = 6;
  c.runtime.precision = vicreg::Precision::Auto;  // continues in fp16
  vicreg::Trainer resumed(c);
  EXPECT_EQ(resumed.precision().precision, vicreg::Precision::Fp16);
  EXPECT_EQ(resumed.scaler().scale(), t.scaler().scale());
  EXPECT_EQ(resumed.scaler().growth_tracker(), t.scaler().growth_tracker());
  EXPECT_EQ(resumed.run({vicreg::ProgressStyle::None}).step, 6);
}

TEST_F(Train, LossScalerStateIsCheckpointedAndLogged) {
  auto c = small("scaler_resume");
  c.runtime.loss_scale = vicreg::Toggle::On;
  c.runtime.max_steps = 4;
  c.runtime.log_every = 2;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  c.runtime.max_steps = 0;
  vicreg::Trainer resumed(c);
  EXPECT_EQ(resumed.step(), 4);
  EXPECT_EQ(resumed.scaler().growth_tracker(), 4);
  EXPECT_EQ(resumed.scaler().scale(), 65536.0);
  const auto m = read_metrics(fs::path(c.runtime.exp_dir) / "metrics.jsonl");
  ASSERT_FALSE(m.empty());
  EXPECT_EQ(m[0]["loss_scale"].get<double>(), 65536.0);
  EXPECT_EQ(m[0]["skipped_steps"].get<int64_t>(), 0);
  // Without loss scaling, neither is logged.
  auto plain = small("no_scaler");
  plain.runtime.max_steps = 2;
  vicreg::Trainer(plain).run({vicreg::ProgressStyle::None});
  EXPECT_FALSE(
      read_metrics(fs::path(plain.runtime.exp_dir) / "metrics.jsonl")[0].contains("loss_scale"));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Bounded loss of work: checkpoints between epochs, the previous one kept, damage detected

namespace {

int64_t checkpoint_step(const fs::path& path) {
  torch::serialize::InputArchive archive;
  vicreg::load_archive(archive, path.string(), "checkpoint");
  c10::IValue v;
  archive.read("step", v);
  return v.toInt();
}

std::string slurp_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void flip_byte(const fs::path& p, size_t at) {
  std::string bytes = slurp_bytes(p);
  bytes.at(at) = static_cast<char>(bytes.at(at) ^ 0x5a);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace

TEST_F(Train, CheckpointsEveryNStepsKeepThePreviousOneAndCarryAChecksum) {
  auto c = small("every");
  c.runtime.checkpoint_every = 2;
  c.runtime.max_steps = 5;
  const fs::path d = c.runtime.exp_dir;
  fs::create_directories(d);
  // What a process killed while writing leaves behind goes; other files stay.
  std::ofstream(d / ".checkpoint.pt.Ab3xYz") << "partial";
  std::ofstream(d / "notes.txt") << "mine";
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  EXPECT_FALSE(fs::exists(d / ".checkpoint.pt.Ab3xYz"));
  EXPECT_TRUE(fs::exists(d / "notes.txt"));
  // Steps 2 and 4 (--checkpoint-every), 5 (the stop): the latest and the one before.
  EXPECT_EQ(checkpoint_step(d / "checkpoint.pt"), 5);
  EXPECT_EQ(checkpoint_step(d / "checkpoint.prev.pt"), 4);
  EXPECT_EQ(vicreg::verify_checksum(slurp_bytes(d / "checkpoint.pt")),
            vicreg::ArchiveChecksum::Good);
  EXPECT_EQ(vicreg::verify_checksum(slurp_bytes(d / "backbone.pt")), vicreg::ArchiveChecksum::Good);

  // --checkpoint-minutes: a checkpoint after every step once that much time has passed.
  auto m = small("minutes");
  m.runtime.checkpoint_minutes = 1e-9;
  m.runtime.max_steps = 3;
  vicreg::Trainer(m).run({vicreg::ProgressStyle::None});
  EXPECT_EQ(checkpoint_step(fs::path(m.runtime.exp_dir) / "checkpoint.prev.pt"), 2);
  // Off: only the stop's.
  auto off = small("off");
  off.runtime.checkpoint_minutes = 0;
  off.runtime.max_steps = 3;
  vicreg::Trainer(off).run({vicreg::ProgressStyle::None});
  EXPECT_FALSE(fs::exists(fs::path(off.runtime.exp_dir) / "checkpoint.prev.pt"));
  off.runtime.checkpoint_minutes = -1;
  EXPECT_THROW(vicreg::Trainer{off}, vicreg::UsageError);
}

TEST_F(Train, ADamagedCheckpointIsDetectedAndTheRunGoesOnFromThePreviousOne) {
  auto c = small("damaged");
  c.runtime.checkpoint_every = 1;
  c.runtime.max_steps = 4;
  const fs::path d = c.runtime.exp_dir;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  const std::string good = slurp_bytes(d / "checkpoint.pt");
  // One byte changed in the middle (the tensors' data): the checksum tells.
  flip_byte(d / "checkpoint.pt", good.size() / 2);
  EXPECT_EQ(vicreg::verify_checksum(slurp_bytes(d / "checkpoint.pt")),
            vicreg::ArchiveChecksum::Bad);
  try {
    vicreg::read_checkpoint_config((d / "checkpoint.pt").string());
    ADD_FAILURE() << "a damaged checkpoint was read";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("is damaged"), std::string::npos) << e.what();
  }
  // Resuming goes back to the previous checkpoint, says so, and keeps the damaged file.
  auto again = c;
  again.runtime.max_steps = 6;
  ::testing::internal::CaptureStderr();
  {
    vicreg::Trainer t(again);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(t.step(), 3);
    EXPECT_NE(err.find("resuming from the previous checkpoint"), std::string::npos) << err;
    EXPECT_TRUE(fs::exists(d / "checkpoint.pt.damaged"));
    EXPECT_FALSE(fs::exists(d / "checkpoint.pt"));
    // While it holds the directory, a second trainer is refused before it reads anything.
    EXPECT_THROW(vicreg::Trainer{again}, vicreg::UsageError);
    EXPECT_EQ(t.run({vicreg::ProgressStyle::None}).step, 6);
  }
  EXPECT_EQ(checkpoint_step(d / "checkpoint.pt"), 6);
  EXPECT_EQ(checkpoint_step(d / "checkpoint.prev.pt"), 5);
  // Truncated latest and damaged previous: an error that names both, nothing renamed.
  fs::resize_file(d / "checkpoint.pt", fs::file_size(d / "checkpoint.pt") / 3);
  flip_byte(d / "checkpoint.prev.pt", fs::file_size(d / "checkpoint.prev.pt") / 2);
  try {
    vicreg::Trainer t(again);
    ADD_FAILURE() << "resumed from damaged checkpoints";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("the previous checkpoint is damaged too"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(fs::exists(d / "checkpoint.pt"));
  // A checksum can only be added to a zip archive with an empty comment, and files without one
  // (vicreg 0.1's) read as before.
  std::string not_zip = "hello";
  EXPECT_THROW(vicreg::add_checksum(not_zip), vicreg::FormatError);
  EXPECT_EQ(vicreg::verify_checksum(not_zip), vicreg::ArchiveChecksum::Absent);
  std::string zip = good.substr(0, good.size() - 21);  // the checksum's comment taken off
  zip[zip.size() - 2] = 0;
  EXPECT_EQ(vicreg::verify_checksum(zip), vicreg::ArchiveChecksum::Absent);
  std::ofstream(dir_ / "old.pt", std::ios::binary) << zip;
  EXPECT_NO_THROW(vicreg::read_checkpoint_config((dir_ / "old.pt").string()));
  vicreg::add_checksum(zip);
  EXPECT_EQ(zip, good);
}

TEST_F(Train, StoredSettingsMustFitTheWeightsTheFileHolds) {
  // A backbone whose stored settings ask for a model far larger than the file: refused before
  // any memory goes to it (was: a 4,000-wide convnet built, 4 GB and 9 s, from a small file).
  auto c = small("plausible");
  c.runtime.max_steps = 1;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  const auto good = vicreg::read_backbone((fs::path(c.runtime.exp_dir) / "backbone.pt").string());
  struct Case {
    int64_t width, in_channels;
  };
  for (const Case k : {Case{4000, 1}, Case{8, 20000000}}) {
    torch::serialize::OutputArchive out, weights;
    good.encoder->save(weights);
    auto big = c;
    big.model.width = k.width;
    out.write("backbone", weights);
    out.write("config", c10::IValue(vicreg::to_json(big).dump()));
    out.write("in_channels", c10::IValue(k.in_channels));
    out.write("image_size", c10::IValue(int64_t{16}));
    out.write("in_features", c10::IValue(int64_t{0}));
    const std::string path = (dir_ / "big.pt").string();
    vicreg::save_archive(out, path);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      vicreg::read_backbone(path);
      ADD_FAILURE() << "expected an error";
    } catch (const vicreg::FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("parameters, but the file holds at most"),
                std::string::npos)
          << e.what();
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  }
  // The same for exported safetensors, whose metadata carries the settings.
  const std::string exported = (dir_ / "b.safetensors").string();
  vicreg::export_backbone(good, exported);
  vicreg::WeightsFile file = vicreg::read_weights(exported);
  auto big = good.config;
  big.model.width = 4000;
  file.metadata["vicreg.config"] = vicreg::to_json(big).dump();
  vicreg::write_safetensors(exported, file.tensors, file.metadata);
  EXPECT_THROW(vicreg::read_backbone(exported), vicreg::FormatError);
  file.metadata["vicreg.config"] = vicreg::to_json(good.config).dump();
  file.metadata["vicreg.in_channels"] = "-3";
  vicreg::write_safetensors(exported, file.tensors, file.metadata);
  EXPECT_THROW(vicreg::read_backbone(exported), vicreg::FormatError);
}

TEST_F(Train, StoredSettingsNoEncoderCanHaveAreFormatErrors) {
  // Settings small enough to pass the size check but impossible (no channels, a width or a
  // number of stages below 1): a FormatError naming the setting, not LibTorch's c10::Error out
  // of the ConvNet's constructor (found by fuzz_backbone in 180 k executions).
  auto c = small("impossible");
  c.runtime.max_steps = 1;
  vicreg::Trainer(c).run({vicreg::ProgressStyle::None});
  const auto good = vicreg::read_backbone((fs::path(c.runtime.exp_dir) / "backbone.pt").string());
  const std::string exported = (dir_ / "b.safetensors").string();
  vicreg::export_backbone(good, exported);
  const vicreg::WeightsFile file = vicreg::read_weights(exported);
  struct Case {
    int64_t width, stages;
    std::string in_channels, expected;
  };
  for (const Case& k : {Case{0, 2, "1", "width must be in [1, 4096], got 0"},
                        Case{-4, 2, "1", "width must be in [1, 4096], got -4"},
                        Case{8, 0, "1", "stages must be in [1, 8], got 0"},
                        Case{8, 2, "0", "images of 0 channels"}}) {
    auto bad = good.config;
    bad.model.width = k.width;
    bad.model.stages = k.stages;
    auto metadata = file.metadata;
    metadata["vicreg.config"] = vicreg::to_json(bad).dump();
    metadata["vicreg.in_channels"] = k.in_channels;
    vicreg::write_safetensors(exported, file.tensors, metadata);
    try {
      vicreg::read_backbone(exported);
      ADD_FAILURE() << "expected an error for width " << k.width;
    } catch (const vicreg::FormatError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("cannot be built"), std::string::npos) << what;
      EXPECT_NE(what.find(k.expected), std::string::npos) << what;
    }
  }
  // A foreign state dict (no metadata) whose first convolution has no output channels.
  auto tensors = file.tensors;
  for (auto& [name, t] : tensors) {
    if (name == "stage1.0.weight") t = torch::zeros({0, t.size(1), 3, 3});
  }
  vicreg::write_safetensors(exported, tensors, {});
  EXPECT_THROW(vicreg::read_backbone(exported), vicreg::FormatError);
}
