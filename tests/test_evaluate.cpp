#include "vicreg/evaluate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace {

TEST(Evaluate, AccuracyTop1AndTop5) {
  // Three samples, six classes; the true class ranks 1st, 3rd and 6th.
  const auto scores = torch::tensor({{9., 1., 2., 3., 4., 5.},
                                     {1., 9., 8., 3., 0., 0.},
                                     {6., 5., 4., 3., 2., 1.}});
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

}  // namespace
