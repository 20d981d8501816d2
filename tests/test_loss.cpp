// vicreg_loss(): against the plain-autograd reference, finite differences, hand-computed cases,
// dtypes, memory, and every rejected input.
#include "vicreg/loss.h"
#include "vicreg/objective.h"
#include "vicreg/runtime.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

namespace {

using torch::Tensor;
using vicreg::LossPreset;
using vicreg::VICRegLossOptions;
using vicreg::VICRegLossTerms;

/// Embeddings whose columns have spreads from 0.2 to 2, so that some standard deviations sit
/// below gamma = 1 (the hinge is active) and some above; columns are correlated through a shared
/// component so the covariance term is far from zero. [n, d]
Tensor embeddings(int64_t n, int64_t d, torch::Dtype dtype, uint64_t seed) {
  torch::manual_seed(seed);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const Tensor shared = torch::randn({n, 1}, opts);
  const Tensor scale = torch::linspace(0.2, 2.0, d, opts).index_select(0, torch::randperm(d));
  return ((torch::randn({n, d}, opts) + 0.5 * shared) * scale + 0.3).to(dtype);
}

double rel_err(const Tensor& got, const Tensor& want) {
  const double denom = std::max(want.to(torch::kDouble).norm().item<double>(), 1e-30);
  return (got.to(torch::kDouble) - want.to(torch::kDouble)).norm().item<double>() / denom;
}

struct Outcome {
  VICRegLossTerms terms;
  Tensor grad_a, grad_b;
};

/// Runs `loss` and back-propagates a combination of all four outputs with the given weights, so
/// that the backward pass of every output is exercised.
template <typename LossFn>
Outcome run(LossFn loss, const Tensor& a, const Tensor& b, const VICRegLossOptions& o,
            const std::vector<double>& w = {1.0, 0.0, 0.0, 0.0}) {
  Tensor za = a.detach().clone().requires_grad_(true);
  Tensor zb = b.detach().clone().requires_grad_(true);
  Outcome out;
  out.terms = loss(za, zb, o);
  Tensor objective = w[0] * out.terms.total + w[1] * out.terms.invariance +
                     w[2] * out.terms.variance + w[3] * out.terms.covariance;
  objective.backward();
  out.grad_a = za.grad();
  out.grad_b = zb.grad();
  return out;
}

Outcome fused(const Tensor& a, const Tensor& b, const VICRegLossOptions& o,
              const std::vector<double>& w = {1.0, 0.0, 0.0, 0.0}) {
  return run(vicreg::vicreg_loss, a, b, o, w);
}
Outcome reference(const Tensor& a, const Tensor& b, const VICRegLossOptions& o,
                  const std::vector<double>& w = {1.0, 0.0, 0.0, 0.0}) {
  return run(vicreg::vicreg_loss_reference, a, b, o, w);
}

void expect_close(const Outcome& got, const Outcome& want, double tol, const std::string& what) {
  EXPECT_LE(rel_err(got.terms.total, want.terms.total), tol) << what << " total";
  EXPECT_LE(rel_err(got.terms.invariance, want.terms.invariance), tol) << what << " invariance";
  EXPECT_LE(rel_err(got.terms.variance, want.terms.variance), tol) << what << " variance";
  // The covariance can be tiny next to its parts (d = 1 makes it exactly 0): compare on the
  // scale of the variance-sized quantities as well.
  const double cov_scale = std::max(want.terms.covariance.abs().item<double>(), 1e-12);
  EXPECT_LE((got.terms.covariance - want.terms.covariance).abs().item<double>() / cov_scale, tol)
      << what << " covariance " << got.terms.covariance.item<double>() << " vs "
      << want.terms.covariance.item<double>();
  EXPECT_LE(rel_err(got.grad_a, want.grad_a), tol) << what << " grad z_a";
  EXPECT_LE(rel_err(got.grad_b, want.grad_b), tol) << what << " grad z_b";
}

VICRegLossOptions make_options(LossPreset preset, double sim, double std_, double cov,
                               double gamma = 1.0, double eps = 1e-4) {
  return VICRegLossOptions()
      .preset(preset)
      .sim_coeff(sim)
      .std_coeff(std_)
      .cov_coeff(cov)
      .gamma(gamma)
      .eps(eps);
}

// Shapes: n < d (Gram form), n = d, n > d (covariance form), n = 2, d = 1.
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{8, 40}, {24, 24}, {64, 9}, {2, 7},
                                                          {2, 1},  {13, 1},  {5, 6}};

std::vector<VICRegLossOptions> all_option_sets() {
  std::vector<VICRegLossOptions> sets;
  for (LossPreset p : {LossPreset::Official, LossPreset::Paper}) {
    sets.push_back(make_options(p, 25, 25, 1));
    sets.push_back(make_options(p, 1, 1, 0.04));           // solo-learn-like small weights
    sets.push_back(make_options(p, 0, 3, 0));              // variance only
    sets.push_back(make_options(p, 5, 0, 2.5));            // no variance
    sets.push_back(make_options(p, 2, 10, 1, 1.5, 1e-3));  // other gamma and eps
  }
  return sets;
}

std::string label(int64_t n, int64_t d, const VICRegLossOptions& o) {
  return "n=" + std::to_string(n) + " d=" + std::to_string(d) + " " + to_string(o.preset()) + " (" +
         std::to_string(o.sim_coeff()) + "," + std::to_string(o.std_coeff()) + "," +
         std::to_string(o.cov_coeff()) + ",gamma=" + std::to_string(o.gamma()) + ")";
}

TEST(LossReference, MatchesInDoubleForAllShapesPresetsAndCoefficients) {
  uint64_t seed = 1;
  for (auto [n, d] : kShapes) {
    for (const auto& o : all_option_sets()) {
      const Tensor a = embeddings(n, d, torch::kDouble, seed++);
      const Tensor b = embeddings(n, d, torch::kDouble, seed++);
      expect_close(fused(a, b, o), reference(a, b, o), 1e-9, label(n, d, o));
    }
  }
}

TEST(LossReference, EveryOutputIsDifferentiable) {
  // Back-propagate through the four outputs with unrelated weights: exercises each output's
  // own gradient, not only the total's.
  uint64_t seed = 100;
  const std::vector<double> w = {0.7, -1.3, 2.1, 0.4};
  for (auto [n, d] : kShapes) {
    for (LossPreset p : {LossPreset::Official, LossPreset::Paper}) {
      const auto o = make_options(p, 25, 25, 1);
      const Tensor a = embeddings(n, d, torch::kDouble, seed++);
      const Tensor b = embeddings(n, d, torch::kDouble, seed++);
      expect_close(fused(a, b, o, w), reference(a, b, o, w), 1e-9, label(n, d, o));
    }
  }
}

TEST(LossReference, MatchesInFloat) {
  uint64_t seed = 200;
  for (auto [n, d] : std::vector<std::pair<int64_t, int64_t>>{
           {32, 256}, {128, 128}, {512, 64}, {2, 9}, {16, 1}}) {
    for (const auto& o : all_option_sets()) {
      const Tensor a = embeddings(n, d, torch::kDouble, seed++);
      const Tensor b = embeddings(n, d, torch::kDouble, seed++);
      // Same float inputs for both; the reference computes in double from them.
      const Tensor af = a.to(torch::kFloat), bf = b.to(torch::kFloat);
      const Outcome got = fused(af, bf, o);
      EXPECT_EQ(got.terms.total.scalar_type(), torch::kFloat);
      EXPECT_EQ(got.grad_a.scalar_type(), torch::kFloat);
      expect_close(got, reference(af.to(torch::kDouble), bf.to(torch::kDouble), o), 1e-4,
                   label(n, d, o));
    }
  }
}

TEST(LossReference, SameTensorForBothViews) {
  const Tensor a = embeddings(10, 30, torch::kDouble, 7);
  for (LossPreset p : {LossPreset::Official, LossPreset::Paper}) {
    const auto o = make_options(p, 25, 25, 1);
    Tensor z1 = a.clone().requires_grad_(true), z2 = a.clone().requires_grad_(true);
    vicreg::vicreg_loss(z1, z1, o).total.backward();
    vicreg::vicreg_loss_reference(z2, z2, o).total.backward();
    EXPECT_LE(rel_err(z1.grad(), z2.grad()), 1e-9);
  }
}

/// Central differences of the total in double, over every input element.
void check_finite_differences(int64_t n, int64_t d, LossPreset preset, uint64_t seed) {
  const auto o = make_options(preset, 25, 25, 1);
  const Tensor a = embeddings(n, d, torch::kDouble, seed);
  const Tensor b = embeddings(n, d, torch::kDouble, seed + 1);
  const Outcome got = fused(a, b, o);
  const double h = 1e-6;
  for (int view = 0; view < 2; ++view) {
    const Tensor& base = view == 0 ? a : b;
    const Tensor& analytic = view == 0 ? got.grad_a : got.grad_b;
    auto acc = analytic.accessor<double, 2>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < d; ++j) {
        Tensor plus = base.clone(), minus = base.clone();
        plus[i][j] += h;
        minus[i][j] -= h;
        auto loss_at = [&](const Tensor& z) {
          const Tensor& za = view == 0 ? z : a;
          const Tensor& zb = view == 0 ? b : z;
          return vicreg::vicreg_loss(za, zb, o).total.item<double>();
        };
        const double numeric = (loss_at(plus) - loss_at(minus)) / (2 * h);
        EXPECT_NEAR(acc[i][j], numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
            << "view " << view << " element (" << i << "," << j << ") n=" << n << " d=" << d << " "
            << to_string(preset);
      }
    }
  }
}

TEST(LossFiniteDifferences, GramFormBothPresets) {
  check_finite_differences(4, 9, LossPreset::Official, 11);
  check_finite_differences(4, 9, LossPreset::Paper, 13);
}

TEST(LossFiniteDifferences, CovarianceFormBothPresets) {
  check_finite_differences(9, 4, LossPreset::Official, 17);
  check_finite_differences(9, 4, LossPreset::Paper, 19);
  check_finite_differences(2, 1, LossPreset::Paper, 23);
}

TEST(LossByHand, IdenticalConstantEmbeddings) {
  // Var = 0 in every column: v = gamma - sqrt(eps) per view, no invariance, no covariance.
  const Tensor z = torch::full({6, 10}, 3.0, torch::kDouble);
  for (LossPreset p : {LossPreset::Official, LossPreset::Paper}) {
    const auto t = vicreg::vicreg_loss(z, z, make_options(p, 25, 25, 1));
    const double v = 1.0 - std::sqrt(1e-4);
    EXPECT_NEAR(t.variance.item<double>(), 2 * v, 1e-15);
    EXPECT_EQ(t.invariance.item<double>(), 0.0);
    EXPECT_EQ(t.covariance.item<double>(), 0.0);
    const double w = p == LossPreset::Official ? 0.5 : 1.0;
    EXPECT_NEAR(t.total.item<double>(), 25 * w * 2 * v, 1e-12);
  }
}

TEST(LossByHand, OrthogonalDimensionsHaveNoCovariance) {
  // Centred columns (1,-1,1,-1) and (1,1,-1,-1) are orthogonal: C_12 = 0. Var = 4/3 > 1.
  const Tensor z =
      torch::tensor({1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0}, torch::kDouble).view({4, 2});
  const auto t = vicreg::vicreg_loss(z, z);
  EXPECT_NEAR(t.covariance.item<double>(), 0.0, 1e-15);
  EXPECT_EQ(t.variance.item<double>(), 0.0);  // sqrt(4/3 + eps) > gamma
}

TEST(LossByHand, IdenticalColumnsAndConstantShift) {
  // Two equal columns (1,-1,1,-1): C_12 = C_21 = 4/3, so c = 2 (4/3)^2 / 2 = 16/9 per view.
  const Tensor z =
      torch::tensor({1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0}, torch::kDouble).view({4, 2});
  // z_b = z_a + 1 everywhere: ||z_a - z_b||^2 = d per row, s = d = 2, mse = 1.
  const auto official = vicreg::vicreg_loss(z, z + 1.0);
  EXPECT_NEAR(official.covariance.item<double>(), 2 * 16.0 / 9.0, 1e-14);
  EXPECT_NEAR(official.invariance.item<double>(), 1.0, 1e-15);
  const auto paper = vicreg::vicreg_loss(z, z + 1.0, VICRegLossOptions().preset(LossPreset::Paper));
  EXPECT_NEAR(paper.invariance.item<double>(), 2.0, 1e-15);
  EXPECT_NEAR(paper.total.item<double>(), 25 * 2.0 + 1 * 2 * 16.0 / 9.0, 1e-12);
}

TEST(LossGradient, ColumnsOfRegularizerGradientSumToZero) {
  // Variance and covariance are invariant to shifting a column: their gradient's columns sum
  // to zero (docs/loss.md: the centring needs no projection).
  for (auto [n, d] : std::vector<std::pair<int64_t, int64_t>>{{6, 20}, {20, 6}}) {
    const Tensor a = embeddings(n, d, torch::kDouble, 31);
    const auto o = make_options(LossPreset::Paper, 0, 25, 1);
    const Outcome got = fused(a, a * 0.5, o);
    EXPECT_LT(got.grad_a.sum(0).abs().max().item<double>(), 1e-12);
  }
}

TEST(LossDtypes, HalfAndBFloat16AccumulateInFloat) {
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    const Tensor a = embeddings(64, 128, dtype, 41), b = embeddings(64, 128, dtype, 43);
    const Outcome got = fused(a, b, VICRegLossOptions());
    EXPECT_EQ(got.terms.total.scalar_type(), torch::kFloat);
    EXPECT_EQ(got.grad_a.scalar_type(), dtype);
    EXPECT_EQ(got.grad_b.scalar_type(), dtype);
    // Reference in double on the same (rounded) inputs: fp32 accumulation keeps the values to
    // float accuracy; gradients are rounded once, to the input dtype.
    const Outcome want = reference(a.to(torch::kDouble), b.to(torch::kDouble), VICRegLossOptions());
    EXPECT_LE(rel_err(got.terms.total, want.terms.total), 1e-5);
    EXPECT_LE(rel_err(got.grad_a, want.grad_a), dtype == torch::kHalf ? 2e-3 : 1e-2);
  }
}

TEST(LossInputs, WorksWithoutGradients) {
  const Tensor a = embeddings(8, 16, torch::kFloat, 51), b = embeddings(8, 16, torch::kFloat, 52);
  torch::NoGradGuard no_grad;
  const auto t = vicreg::vicreg_loss(a, b);
  EXPECT_FALSE(t.total.requires_grad());
  EXPECT_NEAR(t.total.item<double>(), vicreg::vicreg_loss_reference(a, b).total.item<double>(),
              1e-4 * std::abs(t.total.item<double>()));
}

TEST(LossInputs, OnlyOneViewRequiresGrad) {
  const Tensor a = embeddings(8, 16, torch::kDouble, 53), b = embeddings(8, 16, torch::kDouble, 54);
  Tensor za = a.clone().requires_grad_(true);
  vicreg::vicreg_loss(za, b).total.backward();
  Tensor ra = a.clone().requires_grad_(true);
  vicreg::vicreg_loss_reference(ra, b).total.backward();
  EXPECT_LE(rel_err(za.grad(), ra.grad()), 1e-9);
}

TEST(LossMemory, GramFormNeverBuildsADxDMatrix) {
  vicreg::enable_memory_tracking();
  const int64_t n = 16, d = 4096;
  const Tensor a = embeddings(n, d, torch::kFloat, 61).requires_grad_(true);
  const Tensor b = embeddings(n, d, torch::kFloat, 62).requires_grad_(true);
  const torch::Device cpu(torch::kCPU);
  const int64_t before = vicreg::memory_stats(cpu).current_bytes;
  vicreg::reset_peak_memory(cpu);
  vicreg::vicreg_loss(a, b).total.backward();
  const int64_t extra = vicreg::memory_stats(cpu).peak_bytes - before;
  const int64_t dxd = d * d * static_cast<int64_t>(sizeof(float));
  EXPECT_GT(extra, 0);
  EXPECT_LT(extra, dxd / 10) << "peak " << extra << " bytes; a d x d float matrix is " << dxd;
}

TEST(LossModule, ForwardEqualsFunctionAndPrints) {
  vicreg::VICRegLoss module(VICRegLossOptions().preset(LossPreset::Paper).cov_coeff(0.5));
  const Tensor a = embeddings(8, 16, torch::kDouble, 71), b = embeddings(8, 16, torch::kDouble, 72);
  const auto via_module = module(a, b);
  const auto via_function =
      vicreg::vicreg_loss(a, b, VICRegLossOptions().preset(LossPreset::Paper).cov_coeff(0.5));
  EXPECT_EQ(via_module.total.item<double>(), via_function.total.item<double>());
  std::ostringstream s;
  s << *module;
  EXPECT_NE(s.str().find("preset=paper"), std::string::npos) << s.str();
  EXPECT_NE(s.str().find("cov_coeff=0.5"), std::string::npos) << s.str();
}

TEST(LossPresets, ParseAndPrint) {
  EXPECT_EQ(vicreg::parse_name<LossPreset>("official"), LossPreset::Official);
  EXPECT_EQ(vicreg::parse_name<LossPreset>("paper"), LossPreset::Paper);
  EXPECT_EQ(vicreg::to_string(LossPreset::Paper), "paper");
  try {
    vicreg::parse_name<LossPreset>("solo");
    FAIL() << "expected an error";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown loss preset 'solo': use official or paper"),
              std::string::npos)
        << e.what();
  }
}

/// Expects both implementations to reject (a, b, o) with a message holding every `needles`.
void expect_rejected(const Tensor& a, const Tensor& b, const VICRegLossOptions& o,
                     const std::vector<std::string>& needles) {
  for (auto fn : {&vicreg::vicreg_loss, &vicreg::vicreg_loss_reference}) {
    try {
      fn(a, b, o);
      ADD_FAILURE() << "expected an error containing '" << needles.front() << "'";
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      for (const auto& needle : needles) {
        EXPECT_NE(msg.find(needle), std::string::npos) << "'" << needle << "' not in: " << msg;
      }
    }
  }
}

TEST(LossInputs, RejectsBadShapesDtypesAndDevices) {
  const Tensor good = torch::randn({4, 3});
  const VICRegLossOptions o;
  expect_rejected(torch::randn({1, 3}), torch::randn({1, 3}), o, {"at least 2 rows", "n = 1"});
  expect_rejected(good, torch::randn({4, 5}), o, {"same shape", "[4, 3]", "[4, 5]"});
  expect_rejected(good, torch::randn({5, 3}), o, {"same shape"});
  expect_rejected(torch::randn({12}), torch::randn({12}), o, {"2-D", "1-D", "[12]"});
  expect_rejected(torch::randn({2, 2, 3}), torch::randn({2, 2, 3}), o, {"2-D", "3-D"});
  expect_rejected(good, torch::randn({4, 3, 1}), o, {"z_b must be a 2-D", "3-D"});
  expect_rejected(torch::ones({4, 3}, torch::kLong), torch::ones({4, 3}, torch::kLong), o,
                  {"floating point", "Long"});
  expect_rejected(good, good.to(torch::kDouble), o, {"same dtype", "Float", "Double"});
  expect_rejected(torch::randn({4, 0}), torch::randn({4, 0}), o, {"at least 1 column"});
  if (torch::cuda::is_available()) {
    expect_rejected(good, good.cuda(), o, {"same device", "cpu", "cuda"});
  }
}

TEST(LossInputs, RejectsNaNAndInfUnlessTheCheckIsOff) {
  Tensor with_nan = torch::randn({6, 4});
  with_nan[2][1] = std::nan("");
  Tensor with_inf = torch::randn({6, 4});
  with_inf[0][3] = std::numeric_limits<float>::infinity();
  with_inf[5][0] = -std::numeric_limits<float>::infinity();
  const Tensor good = torch::randn({6, 4});
  expect_rejected(with_nan, good, {}, {"z_a contains 1 NaN or Inf"});
  expect_rejected(good, with_inf, {}, {"z_b contains 2 NaN or Inf"});
  expect_rejected(good, with_nan.to(torch::kHalf).to(torch::kFloat), {}, {"z_b contains 1"});
  // Switched off: no check, and the NaN propagates.
  const auto t = vicreg::vicreg_loss(with_nan, good, VICRegLossOptions().check_finite(false));
  EXPECT_TRUE(std::isnan(t.total.item<double>()));
}

TEST(LossInputs, ReportsOverflowOfFiniteInputs) {
  // Finite in float, but squares overflow: the loss says so instead of returning Inf.
  const Tensor huge = torch::randn({4, 3}) * 1e30;
  try {
    vicreg::vicreg_loss(huge, -huge);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("overflowed"), std::string::npos) << e.what();
  }
}

TEST(LossInputs, RejectsNegativeOrNonFiniteOptions) {
  const Tensor a = torch::randn({4, 3}), b = torch::randn({4, 3});
  expect_rejected(a, b, VICRegLossOptions().sim_coeff(-1), {"sim_coeff", ">= 0", "-1"});
  expect_rejected(a, b, VICRegLossOptions().std_coeff(-0.5), {"std_coeff"});
  expect_rejected(a, b, VICRegLossOptions().cov_coeff(-2), {"cov_coeff"});
  expect_rejected(a, b, VICRegLossOptions().eps(-1e-4), {"eps"});
  expect_rejected(a, b, VICRegLossOptions().gamma(-1), {"gamma"});
  expect_rejected(a, b, VICRegLossOptions().cov_coeff(std::nan("")), {"cov_coeff", "finite"});
}

TEST(LossCuda, MatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (auto [n, d] : std::vector<std::pair<int64_t, int64_t>>{{64, 512}, {512, 64}}) {
    const Tensor a = embeddings(n, d, torch::kDouble, 81), b = embeddings(n, d, torch::kDouble, 82);
    const Outcome cpu = fused(a, b, {});
    const Outcome gpu = fused(a.cuda(), b.cuda(), {});
    EXPECT_TRUE(gpu.grad_a.is_cuda());
    expect_close(
        Outcome{{gpu.terms.total.cpu(), gpu.terms.invariance.cpu(), gpu.terms.variance.cpu(),
                 gpu.terms.covariance.cpu(), gpu.terms.std_a.cpu()},
                gpu.grad_a.cpu(),
                gpu.grad_b.cpu()},
        cpu, 1e-9, "cuda n=" + std::to_string(n));
  }
}

}  // namespace

TEST(Objective, VICRegIsTheFusedLossOfTheFirstTwoViewsWithNamedTerms) {
  torch::manual_seed(8);
  const auto options = VICRegLossOptions().preset(LossPreset::Paper).cov_coeff(0.5);
  const vicreg::VICRegObjective objective(options);
  std::vector<std::string> keys;
  for (const vicreg::ObjectiveTerm& t : objective.terms()) keys.push_back(t.key);
  // metrics.jsonl's keys, as every version wrote them.
  EXPECT_EQ(keys, (std::vector<std::string>{"invariance", "variance", "covariance"}));
  vicreg::ModelOutputs out;
  for (int v = 0; v < 2; ++v) {
    vicreg::ViewOutput view;
    view.z = torch::randn({16, 12}, torch::requires_grad());
    out.views.push_back(view);
  }
  const vicreg::ObjectiveLoss got = objective.loss(out, /*group=*/nullptr);
  const vicreg::VICRegLossTerms want = vicreg::vicreg_loss(out.views[0].z, out.views[1].z, options);
  EXPECT_TRUE(torch::equal(got.total, want.total));
  ASSERT_EQ(got.terms.size(), 3u);
  EXPECT_TRUE(torch::equal(got.terms[0], want.invariance));
  EXPECT_TRUE(torch::equal(got.terms[1], want.variance));
  EXPECT_TRUE(torch::equal(got.terms[2], want.covariance));
  EXPECT_TRUE(torch::equal(got.embedding_std, want.std_a));
  got.total.backward();
  EXPECT_TRUE(out.views[0].z.grad().defined());
  out.views.pop_back();
  EXPECT_THROW(objective.loss(out, nullptr), c10::Error);
}
