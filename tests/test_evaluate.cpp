#include "vicreg/evaluate.h"
#include "vicreg/models.h"
#include "vicreg/models/mlp.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace {

TEST(Evaluate, AccuracyTop1AndTop5) {
  // Three samples, six classes; the true class ranks 1st, 3rd and 6th.
  const auto scores =
      torch::tensor({{9., 1., 2., 3., 4., 5.}, {1., 9., 8., 3., 0., 0.}, {6., 5., 4., 3., 2., 1.}});
  const auto labels = torch::tensor({0, 3, 5}, torch::kLong);
  const auto a = vicreg::accuracy(scores, labels);
  EXPECT_NEAR(a.top1, 1.0 / 3, 1e-12);
  EXPECT_NEAR(a.top5, 2.0 / 3, 1e-12);
  EXPECT_THROW(vicreg::accuracy(scores, labels.narrow(0, 0, 2)), c10::Error);
}

TEST(Evaluate, LinearProbeSeparatesLinearlySeparableFeatures) {
  torch::manual_seed(1);
  const int64_t d = 32, c = 5;
  // Five classes around the vertices of a simplex, 8 units apart, unit noise in 32 dimensions,
  // then an affine distortion (offset and scale) that the standardisation must undo.
  const auto centers = torch::eye(c).mul(8.0);
  const auto make = [&](int64_t m) {
    const auto y = torch::arange(m) % c;
    auto x = torch::randn({m, d});
    x.narrow(1, 0, c).add_(centers.index_select(0, y));
    return std::make_pair(x * 3 + 7, y);
  };
  const auto [xtr, ytr] = make(2000);
  const auto [xte, yte] = make(500);
  vicreg::LinearProbeOptions o;
  o.epochs = 20;
  const auto a = vicreg::linear_probe(xtr, ytr, xte, yte, o);
  EXPECT_GE(a.top1, 0.99);
  EXPECT_DOUBLE_EQ(a.top5, 1.0);
  // Same seed, same result.
  EXPECT_EQ(vicreg::linear_probe(xtr, ytr, xte, yte, o).top1, a.top1);
  EXPECT_THROW(vicreg::linear_probe(xtr, ytr, xte.narrow(1, 0, 3), yte, o), c10::Error);
  auto bad = xtr.clone();
  bad[0][0] = NAN;
  EXPECT_THROW(vicreg::linear_probe(bad, ytr, xte, yte, o), c10::Error);
}

TEST(Evaluate, OnlineProbeLearnsSeparableClassesAndNoGradientReachesTheBackbone) {
  torch::manual_seed(3);
  const int64_t d = 16, c = 4, batch = 64;
  // A "backbone" whose output the probe reads: a linear map with parameters that require grad.
  torch::nn::Linear backbone(d, d);
  const auto make = [&](int64_t m) {
    const auto y = torch::randint(0, c, {m}, torch::kLong);
    auto x = torch::randn({m, d});
    x.narrow(1, 0, c).add_(torch::eye(c).mul(6.0).index_select(0, y));
    return std::make_pair(x * 50 + 20, y);  // a scale the probe's BatchNorm must absorb
  };
  {
    torch::NoGradGuard g;
    backbone->weight.copy_(torch::eye(d));
    backbone->bias.zero_();
  }
  vicreg::OnlineProbe probe(d, c);
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    const auto [x, y] = make(batch);
    const torch::Tensor features = backbone(x);  // part of the backbone's graph
    ASSERT_TRUE(features.requires_grad());
    const vicreg::OnlineProbeStep s = probe->train_step(features, y);
    EXPECT_EQ(s.count, batch);
    EXPECT_TRUE(std::isfinite(s.loss));
    if (step == 0) first = static_cast<double>(s.correct) / batch;  // before any update
    if (step >= 140) last += static_cast<double>(s.correct) / batch / 10;
  }
  // Nothing flowed back: the backbone's parameters never got a gradient.
  for (const auto& p : backbone->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_LT(first, 0.6);
  EXPECT_GT(last, 0.95);
  const auto [xte, yte] = make(400);
  const vicreg::Accuracy a = probe->evaluate(xte, yte);
  EXPECT_GT(a.top1, 0.95);
  EXPECT_TRUE(probe->is_training());  // evaluate leaves the mode as it was
  EXPECT_THROW(probe->train_step(torch::randn({8, d + 1}), torch::zeros({8}, torch::kLong)),
               c10::Error);
  EXPECT_THROW(vicreg::OnlineProbe(d, 1), c10::Error);
}

TEST(Evaluate, PrincipalComponentsMatchAnEigendecomposition) {
  torch::manual_seed(5);
  // Variances 25, 9, 1, 0.01 along a random orthonormal basis, plus an offset.
  const auto basis = std::get<0>(torch::linalg_qr(torch::randn({4, 4}, torch::kDouble)));
  const auto scales = torch::tensor({5.0, 3.0, 1.0, 0.1}, torch::kDouble);
  const auto x = (torch::randn({3000, 4}, torch::kDouble) * scales).mm(basis.t()) + 3.0;
  const vicreg::PrincipalComponents pc = vicreg::principal_components(x.to(torch::kFloat), 2);
  ASSERT_EQ(pc.projection.sizes(), (std::vector<int64_t>{3000, 2}));
  // Against the covariance matrix's eigenvectors: the same projection, up to the sign.
  const auto xc = x - x.mean(0);
  const auto [values, vectors] = torch::linalg_eigh(xc.t().mm(xc));
  for (int64_t k = 0; k < 2; ++k) {
    const auto expected = xc.mv(vectors.select(1, 3 - k));
    const auto got = pc.projection.select(1, k).to(torch::kDouble);
    const double agree = std::abs(torch::dot(expected, got).item<double>()) /
                         (expected.norm().item<double>() * got.norm().item<double>());
    EXPECT_GT(agree, 1 - 1e-6) << k;
    EXPECT_NEAR(pc.explained[static_cast<size_t>(k)],
                values[3 - k].item<double>() / values.sum().item<double>(), 1e-6);
  }
  EXPECT_NEAR(pc.explained[0], 25.0 / 35.01, 0.03);
  // The same data, the same picture (signs included).
  EXPECT_TRUE(
      torch::equal(vicreg::principal_components(x.to(torch::kFloat), 2).projection, pc.projection));
  EXPECT_THROW(vicreg::principal_components(x.narrow(0, 0, 1), 2), c10::Error);
}

TEST(Evaluate, KnnOnHandPlacedPoints) {
  // Class 0 around +x, class 1 around +y; cosine similarity ignores the norm.
  const auto bank = torch::tensor({{1.f, 0.f}, {10.f, 1.f}, {2.f, -0.1f}, {0.f, 1.f}, {0.2f, 5.f}});
  const auto labels = torch::tensor({0, 0, 0, 1, 1}, torch::kLong);
  const auto queries = torch::tensor({{3.f, 0.2f}, {0.1f, 2.f}, {1.f, 1.3f}});
  const auto s1 = vicreg::knn_scores(bank, labels, queries, /*k=*/1, 0.07);
  EXPECT_EQ(s1.argmax(1)[0].item<int64_t>(), 0);
  EXPECT_EQ(s1.argmax(1)[1].item<int64_t>(), 1);
  // (1, 1.3) is at 52.4 deg: 35.3 deg from (0.2, 5) (class 1), 46.7 deg from (10, 1) (class 0).
  EXPECT_EQ(s1.argmax(1)[2].item<int64_t>(), 1);
  // k = all: three class-0 votes against two, but with a low temperature the closest dominate.
  const auto all = vicreg::knn_scores(bank, labels, queries, 5, 0.01);
  EXPECT_EQ(all.argmax(1)[1].item<int64_t>(), 1);
  // Weights: one neighbour with similarity 1 votes exp(1 / T).
  const auto one = vicreg::knn_scores(bank, labels, torch::tensor({{1.f, 0.f}}), 1, 0.5);
  EXPECT_NEAR(one[0][0].item<float>(), std::exp(2.0), 1e-4);
  EXPECT_EQ(one.size(1), 2);
}

TEST(Evaluate, RankMeOfMatricesOfKnownRank) {
  torch::manual_seed(0);
  // Equal singular values: exactly the rank.
  const auto q = std::get<0>(torch::linalg_qr(torch::randn({64, 64}, torch::kDouble)));
  EXPECT_NEAR(vicreg::rankme(q.narrow(1, 0, 10)), 10.0, 1e-6);
  EXPECT_NEAR(vicreg::rankme(q), 64.0, 1e-6);
  // Rank 3 with unequal singular values: between 1 and 3.
  const auto low = torch::randn({100, 3}).mm(torch::randn({3, 40}));
  const double r = vicreg::rankme(low);
  EXPECT_GT(r, 1.5);
  EXPECT_LE(r, 3.0 + 1e-6);
  EXPECT_NEAR(vicreg::rankme(torch::ones({20, 8})), 1.0, 1e-6);  // collapsed
}

TEST(Evaluate, CollapseStatsMatchTheDefinitions) {
  torch::manual_seed(3);
  for (const auto& shape : {std::make_pair(40, 6), std::make_pair(5, 12)}) {  // n > d and n < d
    const auto z = torch::randn({shape.first, shape.second}, torch::kDouble) *
                   torch::linspace(0.5, 2.0, shape.second, torch::kDouble);
    const auto s = vicreg::collapse_stats(z);
    const auto std = z.std(0);
    EXPECT_NEAR(s.std_mean, std.mean().item<double>(), 1e-12);
    EXPECT_NEAR(s.std_min, std.min().item<double>(), 1e-12);
    // c(Z) from the d x d covariance matrix, off-diagonal by masking.
    const auto c = z - z.mean(0);
    const auto cov = c.t().mm(c) / (shape.first - 1);
    const auto off = cov * (1 - torch::eye(shape.second, torch::kDouble));
    EXPECT_NEAR(s.covariance, off.pow(2).sum().item<double>() / shape.second, 1e-10);
    EXPECT_NEAR(s.rankme, vicreg::rankme(z), 1e-12);
    EXPECT_EQ(s.dim, shape.second);
  }
  // Decorrelated unit-variance columns: covariance term 0, std 1.
  const auto h = torch::tensor({{1., 1.}, {1., -1.}, {-1., 1.}, {-1., -1.}}, torch::kDouble) *
                 std::sqrt(3.0 / 4.0);
  const auto s = vicreg::collapse_stats(h);
  EXPECT_NEAR(s.covariance, 0.0, 1e-14);
  EXPECT_NEAR(s.std_min, 1.0, 1e-12);
  // A collapsed dimension shows as std_min 0.
  EXPECT_NEAR(
      vicreg::collapse_stats(torch::cat({h, torch::ones({4, 1}, torch::kDouble)}, 1)).std_min, 0.0,
      1e-14);
  EXPECT_THROW(vicreg::collapse_stats(torch::ones({1, 3})), c10::Error);
}

TEST(Evaluate, BalancedSubsetIsBalancedAndSeeded) {
  // 3 classes with 100, 50 and 7 samples, interleaved.
  std::vector<int64_t> y;
  for (int i = 0; i < 100; ++i) y.push_back(0);
  for (int i = 0; i < 50; ++i) y.push_back(1);
  for (int i = 0; i < 7; ++i) y.push_back(2);
  const auto labels = torch::tensor(y).index_select(0, torch::randperm(157));
  const auto a = vicreg::balanced_subset(labels, 0.1, 5);
  // round(10), round(5), max(1, round(0.7)) = 10 + 5 + 1
  ASSERT_EQ(a.numel(), 16);
  const auto counts = torch::bincount(labels.index_select(0, a));
  EXPECT_EQ(counts[0].item<int64_t>(), 10);
  EXPECT_EQ(counts[1].item<int64_t>(), 5);
  EXPECT_EQ(counts[2].item<int64_t>(), 1);
  EXPECT_EQ(std::get<0>(at::_unique(a)).numel(), 16);  // no repeats
  EXPECT_TRUE(a.equal(std::get<0>(a.sort())));         // sorted
  EXPECT_TRUE(a.equal(vicreg::balanced_subset(labels, 0.1, 5)));
  EXPECT_FALSE(a.equal(vicreg::balanced_subset(labels, 0.1, 6)));
  EXPECT_EQ(vicreg::balanced_subset(labels, 1.0, 0).numel(), 157);
  EXPECT_THROW(vicreg::balanced_subset(labels, 0.0, 0), c10::Error);
  EXPECT_THROW(vicreg::balanced_subset(labels, 1.5, 0), c10::Error);
}

TEST(Evaluate, TrainClassifierFinetunesAndFreezes) {
  // Vectors of five Gaussian classes behind an MLP encoder: fine-tuning (backbone and head) and
  // the frozen probe both classify held-out samples; the frozen backbone's weights stay put.
  torch::manual_seed(2);
  const int64_t d = 16, c = 5;
  const auto make = [&](int64_t m) {
    vicreg::Dataset data;
    data.name = "synthetic";
    data.labels = torch::arange(m) % c;
    data.vectors = torch::randn({m, d});
    data.vectors.narrow(1, 0, c).add_(torch::eye(c).mul(6.0).index_select(0, data.labels));
    return data;
  };
  const auto train = make(1000), test = make(300);
  auto encoder = std::make_shared<vicreg::MLPImpl>(vicreg::MLPOptions(d, "64-32"));
  const auto before = encoder->parameters()[0].clone();
  vicreg::ClassifierOptions o;
  o.epochs = 10;
  o.batch_size = 64;
  o.lr_backbone = 0;  // frozen
  o.lr_head = 0.05;
  auto a = vicreg::train_classifier(*encoder, train, test, vicreg::ViewConfig{}, {}, o);
  EXPECT_GE(a.top1, 0.95);
  EXPECT_TRUE(encoder->parameters()[0].equal(before));
  o.lr_backbone = 0.05;
  a = vicreg::train_classifier(*encoder, train, test, vicreg::ViewConfig{}, {}, o);
  EXPECT_GE(a.top1, 0.99);
  EXPECT_FALSE(encoder->parameters()[0].equal(before));
  EXPECT_FALSE(encoder->is_training());
  o.lr_head = 0;
  EXPECT_THROW(vicreg::train_classifier(*encoder, train, test, vicreg::ViewConfig{}, {}, o),
               c10::Error);
}

TEST(Evaluate, TrainClassifierOnAugmentedImages) {
  // 16 x 16 images of two classes (bright left half or bright right half): flips would confuse
  // them, crops keep them apart. With a frozen pixel "encoder" this is a linear probe on
  // augmented inputs; the classification-time transform is the plain evaluation one.
  vicreg::Dataset data;
  data.name = "halves";
  data.channels = 1;
  const int64_t n = 200, s = 16;
  data.images = torch::zeros({n, s, s, 1}, torch::kUInt8);
  data.labels = torch::arange(n) % 2;
  for (int64_t i = 0; i < n; ++i) {
    data.images[i].narrow(1, data.labels[i].item<int64_t>() * 8, 8).fill_(200);
  }
  auto augment = vicreg::classifier_augmentation("fashion-mnist", 1, s);
  EXPECT_EQ(augment.jitter_p, 0);
  EXPECT_EQ(augment.solarize_p, 0);
  EXPECT_EQ(augment.crop.size, s);
  augment.flip_p = 0;
  augment.crop.scale_min = 0.8;
  vicreg::EvalTransform eval = vicreg::eval_transform_for("fashion-mnist", 1, s);
  vicreg::PixelEncoderImpl pixels(s * s);
  vicreg::ClassifierOptions o;
  o.epochs = 5;
  o.batch_size = 32;
  const auto a = vicreg::train_classifier(pixels, data, data, augment, eval, o);
  EXPECT_DOUBLE_EQ(a.top1, 1.0);
}

}  // namespace
