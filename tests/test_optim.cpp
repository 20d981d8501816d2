// LARS against steps computed by hand, its exclusions, state save/load; the fused AdamW against
// LibTorch's and against steps by hand; the lr schedule; the optimizer factory's parameter groups.
#include "vicreg/optim.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <sstream>
#include <vector>

namespace {

using vicreg::LARS;
using vicreg::LARSOptions;

double norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

/// One LARS step by hand (facebookresearch/vicreg's algorithm) on flat vectors.
void lars_by_hand(std::vector<double>& p, std::vector<double>& mu, const std::vector<double>& g,
                  double lr, double momentum, double wd, double eta, bool adapt) {
  std::vector<double> u(p.size());
  for (size_t i = 0; i < p.size(); ++i) u[i] = g[i] + (adapt ? wd * p[i] : 0.0);
  double q = 1.0;
  if (adapt && norm(p) > 0 && norm(u) > 0) q = eta * norm(p) / norm(u);
  for (size_t i = 0; i < p.size(); ++i) {
    mu[i] = momentum * mu[i] + q * u[i];
    p[i] -= lr * mu[i];
  }
}

std::vector<double> flat(const torch::Tensor& t) {
  auto c = t.to(torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

void expect_equal(const torch::Tensor& got, const std::vector<double>& want, double tol) {
  const auto g = flat(got);
  ASSERT_EQ(g.size(), want.size());
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], want[i], tol) << "element " << i;
}

TEST(Lars, TwoStepsMatchHandComputation) {
  const std::vector<double> p0 = {1, 2, 3, 4}, g = {0.1, 0.2, -0.1, 0.3};
  const std::vector<double> b0 = {1, -2}, gb = {0.5, 0.5};
  auto w = torch::tensor(p0, torch::kDouble).view({2, 2}).requires_grad_(true);
  auto b = torch::tensor(b0, torch::kDouble).requires_grad_(true);
  LARS opt({w, b}, LARSOptions(0.5).momentum(0.9).weight_decay(0.1).eta(0.01));
  std::vector<double> pw = p0, mw(4, 0.0), pb = b0, mb(2, 0.0);
  for (int step = 0; step < 2; ++step) {
    w.mutable_grad() = torch::tensor(g, torch::kDouble).view({2, 2});
    b.mutable_grad() = torch::tensor(gb, torch::kDouble);
    opt.step();
    lars_by_hand(pw, mw, g, 0.5, 0.9, 0.1, 0.01, /*adapt=*/true);
    lars_by_hand(pb, mb, gb, 0.5, 0.9, 0.1, 0.01, /*adapt=*/false);  // 1-D: excluded
    expect_equal(w, pw, 1e-14);
    expect_equal(b, pb, 1e-14);
  }
}

TEST(Lars, FirstStepAsNumbers) {
  // u = g + 0.1 p = (0.2, 0.4, 0.2, 0.7); q = 0.01 sqrt(30) / sqrt(0.73) = 0.064105...;
  // p1 = p - 0.5 q u.
  auto w = torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kDouble).view({2, 2}).requires_grad_(true);
  LARS opt({w}, LARSOptions(0.5).momentum(0.9).weight_decay(0.1).eta(0.01));
  w.mutable_grad() = torch::tensor({0.1, 0.2, -0.1, 0.3}, torch::kDouble).view({2, 2});
  opt.step();
  const double q = 0.064105;
  expect_equal(w, {1 - 0.5 * q * 0.2, 2 - 0.5 * q * 0.4, 3 - 0.5 * q * 0.2, 4 - 0.5 * q * 0.7},
               1e-6);
}

TEST(Lars, OneDimensionalParametersAdaptedWhenNotExcluded) {
  auto b = torch::tensor({3.0, 4.0}, torch::kDouble).requires_grad_(true);
  LARS opt({b}, LARSOptions(0.1).momentum(0).weight_decay(0).eta(0.5).exclude_1d(false));
  b.mutable_grad() = torch::tensor({1.0, 0.0}, torch::kDouble);
  opt.step();
  // q = 0.5 * 5 / 1 = 2.5: b = (3, 4) - 0.1 * 2.5 * (1, 0)
  expect_equal(b, {3.0 - 0.25, 4.0}, 1e-15);
}

TEST(Lars, ZeroNormsGiveTrustRatioOne) {
  auto w = torch::zeros({2, 2}, torch::kDouble).requires_grad_(true);
  LARS opt({w}, LARSOptions(0.1).momentum(0).eta(1e-3));
  w.mutable_grad() = torch::ones({2, 2}, torch::kDouble);
  opt.step();  // ||p|| = 0: q = 1, plain SGD step
  expect_equal(w, {-0.1, -0.1, -0.1, -0.1}, 1e-15);
  auto v = torch::ones({2, 2}, torch::kDouble).requires_grad_(true);
  LARS opt2({v}, LARSOptions(0.1).momentum(0).weight_decay(0));
  v.mutable_grad() = torch::zeros({2, 2}, torch::kDouble);
  opt2.step();  // ||u|| = 0: no movement, no NaN
  expect_equal(v, {1, 1, 1, 1}, 0.0);
}

TEST(Lars, ClipLrCapsTheAdaptedRate) {
  // q = eta ||p|| / ||g|| = 0.02 * 5 / 0.001 = 100; clipped: min(100 / lr, 1) = 1.
  auto w = torch::tensor({3.0, 4.0}, torch::kDouble).view({1, 2}).requires_grad_(true);
  LARS opt({w}, LARSOptions(0.3).momentum(0).weight_decay(0).eta(0.02).clip_lr(true));
  w.mutable_grad() = torch::tensor({0.001, 0.0}, torch::kDouble).view({1, 2});
  opt.step();
  expect_equal(w, {3.0 - 0.3 * 0.001, 4.0}, 1e-15);
}

TEST(Lars, SaveAndLoadContinueIdentically) {
  torch::manual_seed(0);
  auto make = [] { return torch::randn({3, 4}, torch::kDouble); };
  const auto w0 = make();
  const std::vector<torch::Tensor> grads = {make(), make(), make()};
  auto w = w0.clone().requires_grad_(true);
  LARS opt({w}, LARSOptions(0.2).weight_decay(1e-2).eta(0.05));
  for (int i = 0; i < 2; ++i) {
    w.mutable_grad() = grads[i];
    opt.step();
  }
  std::stringstream buffer;
  {
    torch::serialize::OutputArchive out;
    opt.save(out);
    out.save_to(buffer);
  }
  auto w2 = w.detach().clone().requires_grad_(true);
  LARS restored({w2}, LARSOptions(0.0));
  torch::serialize::InputArchive in;
  in.load_from(buffer);
  restored.load(in);
  EXPECT_DOUBLE_EQ(static_cast<LARSOptions&>(restored.param_groups()[0].options()).eta(), 0.05);
  w.mutable_grad() = grads[2];
  w2.mutable_grad() = grads[2];
  opt.step();
  restored.step();
  EXPECT_TRUE(torch::equal(w, w2));  // momentum buffer and options came back
}

TEST(OptimizerState, KeysAreLibTorchsAndOnesThisLibTorchMisreadsAreNamed) {
  auto w = torch::randn({3, 4}).requires_grad_(true);
  LARS opt({w}, LARSOptions(0.1));
  w.mutable_grad() = torch::ones({3, 4});
  opt.step();
  EXPECT_EQ(opt.state().count(vicreg::optimizer_state_key(w)), 1u);
  // The keys as saved: this LibTorch reads them back; a LibTorch that keys the state by pointer
  // (2.x) reads only decimal keys right, and 1.x writes hexadecimal ones.
  torch::serialize::OutputArchive out;
  opt.save(out);
  std::stringstream buffer;
  out.save_to(buffer);
  torch::serialize::InputArchive in, state;
  in.load_from(buffer);
  in.read("state", state);
  const std::vector<std::string> keys = state.keys();
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_TRUE(vicreg::optimizer_state_keys_readable(keys));
  const bool hex = keys[0].rfind("0x", 0) == 0;
  EXPECT_EQ(hex, TORCH_VERSION_MAJOR < 2) << keys[0];
  EXPECT_EQ(vicreg::optimizer_state_keys_readable<void*>(keys), !hex) << keys[0];
  EXPECT_TRUE(vicreg::optimizer_state_keys_readable<std::string>({"0x55d0c3a0", "123"}));
  EXPECT_TRUE(vicreg::optimizer_state_keys_readable<void*>({"93824992236832", "0"}));
  EXPECT_TRUE(vicreg::optimizer_state_keys_readable<void*>({}));
  EXPECT_FALSE(vicreg::optimizer_state_keys_readable<void*>({"93824992236832", "0x55d0c3a0"}));
  EXPECT_FALSE(vicreg::optimizer_state_keys_readable<void*>({""}));
}

TEST(Lars, RejectsBadOptions) {
  auto w = torch::zeros({2, 2}).requires_grad_(true);
  EXPECT_THROW(LARS({w}, LARSOptions(-1)), c10::Error);
  EXPECT_THROW(LARS({w}, LARSOptions(0.1).momentum(1.0)), c10::Error);
  EXPECT_THROW(LARS({w}, LARSOptions(0.1).eta(0)), c10::Error);
  EXPECT_THROW(LARS({w}, LARSOptions(0.1).weight_decay(-1e-6)), c10::Error);
}

// ---------------------------------------------------------------------------------------------
// AdamW

/// Parameters of awkward sizes (the fused kernel's masked last group of eight, at::parallel_for's
/// chunks), a channels_last one, and a 1-D one in a group without weight decay.
std::vector<torch::Tensor> adamw_params(torch::Dtype dtype) {
  torch::manual_seed(7);
  const auto o = torch::TensorOptions(dtype);
  std::vector<torch::Tensor> ps = {torch::randn({1}, o), torch::randn({7}, o),
                                   torch::randn({3, 3}, o), torch::randn({1000}, o),
                                   torch::randn({100003}, o)};
  ps.push_back(torch::randn({16, 8, 3, 3}, o).contiguous(torch::MemoryFormat::ChannelsLast));
  ps.push_back(torch::randn({24}, o));
  for (auto& p : ps) p.requires_grad_(true);
  return ps;
}

template <class Optimizer>
std::unique_ptr<torch::optim::Optimizer> make_adamw(const std::vector<torch::Tensor>& ps,
                                                    bool amsgrad = false) {
  const auto o = torch::optim::AdamWOptions(1e-2).betas({0.8, 0.95}).eps(1e-6).amsgrad(amsgrad);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>(ps.begin(), ps.end() - 1),
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(o).weight_decay(0.05)));
  groups.emplace_back(
      std::vector<torch::Tensor>{ps.back()},
      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(o).weight_decay(0)));
  return std::make_unique<Optimizer>(std::move(groups), o);
}

/// Gradients of step t for parameters shaped like ps, the same whoever asks; large and tiny
/// values so that the moments span magnitudes.
void set_grads(const std::vector<torch::Tensor>& ps, int t) {
  torch::manual_seed(100 + t);
  for (const auto& p : ps) {
    p.mutable_grad() = (torch::randn_like(p) * std::pow(10.0, t % 3 - 1)).to(p.scalar_type());
  }
}

void expect_same_state(torch::optim::Optimizer& a, torch::optim::Optimizer& b,
                       const std::vector<torch::Tensor>& pa, const std::vector<torch::Tensor>& pb) {
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(torch::equal(pa[i], pb[i])) << "parameter " << i << " of " << pa[i].sizes();
    const auto& sa = static_cast<torch::optim::AdamWParamState&>(
        *a.state().at(vicreg::optimizer_state_key(pa[i])));
    const auto& sb = static_cast<torch::optim::AdamWParamState&>(
        *b.state().at(vicreg::optimizer_state_key(pb[i])));
    EXPECT_EQ(sa.step(), sb.step());
    EXPECT_TRUE(torch::equal(sa.exp_avg(), sb.exp_avg())) << "exp_avg " << i;
    EXPECT_TRUE(torch::equal(sa.exp_avg_sq(), sb.exp_avg_sq())) << "exp_avg_sq " << i;
  }
}

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::Tensor> out;
  for (const auto& p : ps) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

TEST(AdamW, FusedStepIsLibTorchsBitForBit) {
  const auto ours = adamw_params(torch::kFloat), theirs = clones(ours);
  ASSERT_TRUE(ours[5].is_contiguous(torch::MemoryFormat::ChannelsLast));
  auto a = make_adamw<vicreg::AdamW>(ours);
  auto b = make_adamw<torch::optim::AdamW>(theirs);
  for (int t = 0; t < 6; ++t) {
    if (t == 3) {  // a new learning rate half-way, as the schedule sets it
      vicreg::set_learning_rate(*a, 3e-3);
      vicreg::set_learning_rate(*b, 3e-3);
    }
    set_grads(ours, t);
    set_grads(theirs, t);
    a->step();
    b->step();
  }
  expect_same_state(*a, *b, ours, theirs);
  // The in-place update is seen by autograd like ATen's: a graph that saved a parameter before
  // the step refuses to run backward after it.
  auto saved = (ours[3] * ours[3]).sum();
  set_grads(ours, 6);
  a->step();
  EXPECT_THROW(saved.backward(), c10::Error);
#ifdef __x86_64__
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    // Where the CPU allows it, the fused kernel is what ran (else the test compares LibTorch's
    // operations with themselves).
    for (const auto& p : ours) EXPECT_TRUE(vicreg::adamw_fuses(p, p.grad())) << p.sizes();
  }
#endif
}

TEST(AdamW, MatchesStepsByHandInDoubleAndFloat) {
  // Loshchilov & Hutter's decoupled weight decay with Adam's bias corrections, in long double.
  for (const auto dtype : {torch::kDouble, torch::kFloat}) {
    const auto ps = adamw_params(dtype);
    std::vector<std::vector<long double>> p, m, v;
    for (const auto& t : ps) {
      const auto f = flat(t);
      p.emplace_back(f.begin(), f.end());
      m.emplace_back(f.size(), 0.0L);
      v.emplace_back(f.size(), 0.0L);
    }
    auto opt = make_adamw<vicreg::AdamW>(ps);
    const long double lr = 1e-2L, b1 = 0.8L, b2 = 0.95L, eps = 1e-6L;
    for (int t = 0; t < 4; ++t) {
      set_grads(ps, t);
      for (size_t k = 0; k < ps.size(); ++k) {
        const auto g = flat(ps[k].grad());
        const long double wd = k + 1 == ps.size() ? 0.0L : 0.05L;
        for (size_t i = 0; i < g.size(); ++i) {
          m[k][i] = b1 * m[k][i] + (1 - b1) * g[i];
          v[k][i] = b2 * v[k][i] + (1 - b2) * g[i] * g[i];
          const long double mh = m[k][i] / (1 - std::pow(b1, t + 1));
          const long double vh = v[k][i] / (1 - std::pow(b2, t + 1));
          p[k][i] = p[k][i] * (1 - lr * wd) - lr * mh / (std::sqrt(vh) + eps);
        }
      }
      opt->step();
    }
    // LibTorch adds eps to sqrt(v) / sqrt(bc2), not to sqrt(v / bc2): the same number.
    const double tol = dtype == torch::kDouble ? 1e-13 : 2e-6;
    for (size_t k = 0; k < ps.size(); ++k) {
      const auto got = flat(ps[k]);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], static_cast<double>(p[k][i]), tol * (1 + std::fabs(got[i])))
            << "dtype " << dtype << ", parameter " << k << ", element " << i;
      }
    }
  }
}

TEST(AdamW, StateReadsBothWaysWithLibTorchsAndResumesExactly) {
  const auto start = adamw_params(torch::kFloat);
  // Uninterrupted: four steps of ours.
  const auto whole = clones(start);
  auto w = make_adamw<vicreg::AdamW>(whole);
  for (int t = 0; t < 4; ++t) {
    set_grads(whole, t);
    w->step();
  }
  // Two steps of ours, saved, read by LibTorch's for one, saved again, read by ours for the last.
  const auto parts = clones(start);
  auto save = [](torch::optim::Optimizer& o) {
    auto buffer = std::make_shared<std::stringstream>();
    torch::serialize::OutputArchive out;
    o.save(out);
    out.save_to(*buffer);
    return buffer;
  };
  auto load = [](torch::optim::Optimizer& o, std::stringstream& buffer) {
    torch::serialize::InputArchive in;
    in.load_from(buffer);
    o.load(in);
  };
  auto first = make_adamw<vicreg::AdamW>(parts);
  for (int t = 0; t < 2; ++t) {
    set_grads(parts, t);
    first->step();
  }
  auto second = make_adamw<torch::optim::AdamW>(parts);
  load(*second, *save(*first));
  set_grads(parts, 2);
  second->step();
  auto third = make_adamw<vicreg::AdamW>(parts);
  load(*third, *save(*second));
  set_grads(parts, 3);
  third->step();
  expect_same_state(*w, *third, whole, parts);
}

TEST(AdamW, SkipsParametersWithoutGradientAndKeepsAmsgradAndDoublesOnLibTorchsPath) {
  for (const bool amsgrad : {false, true}) {
    for (const auto dtype : {torch::kFloat, torch::kDouble}) {
      const auto ours = adamw_params(dtype), theirs = clones(ours);
      auto a = make_adamw<vicreg::AdamW>(ours, amsgrad);
      auto b = make_adamw<torch::optim::AdamW>(theirs, amsgrad);
      for (int t = 0; t < 3; ++t) {
        set_grads(ours, t);
        set_grads(theirs, t);
        ours[1].mutable_grad() = torch::Tensor();  // no gradient: left alone, no state
        theirs[1].mutable_grad() = torch::Tensor();
        a->step();
        b->step();
      }
      EXPECT_TRUE(torch::equal(ours[1], adamw_params(dtype)[1]));
      EXPECT_EQ(a->state().count(vicreg::optimizer_state_key(ours[1])), 0u);
      for (size_t i = 0; i < ours.size(); ++i) {
        EXPECT_TRUE(torch::equal(ours[i], theirs[i])) << amsgrad << " " << dtype << " " << i;
      }
    }
  }
  // A gradient in another layout than its parameter (contiguous for a channels_last weight)
  // takes LibTorch's operations, with the same result.
  const auto p = adamw_params(torch::kFloat)[5];
  EXPECT_FALSE(vicreg::adamw_fuses(p, torch::randn(p.sizes())));
  EXPECT_FALSE(vicreg::adamw_fuses(p.to(torch::kDouble), p.to(torch::kDouble)));
}

TEST(Schedule, WarmupThenCosineToEndRatio) {
  const vicreg::WarmupCosineSchedule s{/*peak_lr=*/2.0, /*warmup_steps=*/10, /*total_steps=*/110,
                                       /*end_ratio=*/0.001};
  s.validate();
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at(5), 1.0);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 2.0);                        // end of warm-up: the peak
  EXPECT_NEAR(s.lr_at(60), 0.5 * 2.0 + 0.5 * 0.002, 1e-15);  // half-way through the cosine
  EXPECT_NEAR(s.lr_at(110), 0.002, 1e-15);                   // the end: end_ratio * peak
  EXPECT_NEAR(s.lr_at(500), 0.002, 1e-15);                   // and after
  for (int64_t t = 11; t <= 110; ++t) EXPECT_LE(s.lr_at(t), s.lr_at(t - 1)) << t;
}

TEST(Schedule, NoWarmupAndValidation) {
  const vicreg::WarmupCosineSchedule s{1.0, 0, 4, 0.0};
  EXPECT_DOUBLE_EQ(s.lr_at(0), 1.0);
  EXPECT_NEAR(s.lr_at(2), 0.5, 1e-15);
  EXPECT_NEAR(s.lr_at(4), 0.0, 1e-15);
  EXPECT_THROW((vicreg::WarmupCosineSchedule{1.0, 5, 4, 0.001}.validate()), c10::Error);
  EXPECT_THROW((vicreg::WarmupCosineSchedule{1.0, 0, 0, 0.001}.validate()), c10::Error);
  EXPECT_THROW((vicreg::WarmupCosineSchedule{-1.0, 0, 4, 0.001}.validate()), c10::Error);
  EXPECT_THROW((vicreg::WarmupCosineSchedule{1.0, 0, 4, 1.5}.validate()), c10::Error);
  EXPECT_DOUBLE_EQ(vicreg::scaled_lr(0.2, 2048), 1.6);
  EXPECT_DOUBLE_EQ(vicreg::scaled_lr(0.3, 256), 0.3);
  EXPECT_THROW(vicreg::scaled_lr(0.3, 0), c10::Error);
}

TEST(MakeOptimizer, GroupsAndWeightDecay) {
  auto w = torch::randn({4, 3}).requires_grad_(true);
  auto b = torch::randn({4}).requires_grad_(true);
  vicreg::OptimizerConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.05;

  c.kind = vicreg::OptimizerKind::Lars;
  auto lars = vicreg::make_optimizer({w, b}, c);
  EXPECT_NE(dynamic_cast<LARS*>(lars.get()), nullptr);

  c.kind = vicreg::OptimizerKind::AdamW;
  auto adamw = vicreg::make_optimizer({w, b}, c);
  ASSERT_EQ(adamw->param_groups().size(), 2u);
  auto wd_of = [](torch::optim::Optimizer& o, size_t g) {
    return static_cast<torch::optim::AdamWOptions&>(o.param_groups()[g].options()).weight_decay();
  };
  EXPECT_DOUBLE_EQ(wd_of(*adamw, 0), 0.05);
  EXPECT_TRUE(adamw->param_groups()[0].params()[0].is_same(w));
  EXPECT_DOUBLE_EQ(wd_of(*adamw, 1), 0.0);
  EXPECT_TRUE(adamw->param_groups()[1].params()[0].is_same(b));

  c.kind = vicreg::OptimizerKind::Sgd;
  auto sgd = vicreg::make_optimizer({w}, c);  // no 1-D parameter: one group
  ASSERT_EQ(sgd->param_groups().size(), 1u);
  auto& so = static_cast<torch::optim::SGDOptions&>(sgd->param_groups()[0].options());
  EXPECT_DOUBLE_EQ(so.weight_decay(), 0.05);
  EXPECT_DOUBLE_EQ(so.momentum(), 0.9);

  vicreg::set_learning_rate(*adamw, 0.25);
  for (auto& g : adamw->param_groups()) EXPECT_DOUBLE_EQ(g.options().get_lr(), 0.25);

  try {
    vicreg::parse_name<vicreg::OptimizerKind>("adam");
    FAIL() << "expected an error";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("use lars, adamw or sgd"), std::string::npos) << e.what();
  }
}

TEST(MakeOptimizer, LarsTrainsALeastSquaresProblem) {
  // A real use: LARS with the schedule drives a linear least-squares loss down.
  torch::manual_seed(3);
  const auto x = torch::randn({64, 8}), target = x.mm(torch::randn({8, 2}));
  auto w = (0.1 * torch::randn({8, 2})).requires_grad_(true);
  vicreg::OptimizerConfig c;
  c.eta = 0.02;
  auto opt = vicreg::make_optimizer({w}, c);
  const vicreg::WarmupCosineSchedule s{1.0, 5, 200, 0.001};
  double first = 0, last = 0;
  for (int64_t t = 0; t < 200; ++t) {
    vicreg::set_learning_rate(*opt, s.lr_at(t));
    opt->zero_grad();
    auto loss = (x.mm(w) - target).pow(2).mean();
    loss.backward();
    opt->step();
    (t == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.05 * first) << first << " -> " << last;
}

}  // namespace
