// distributed.h in one process: torchrun's environment, the sharded loss and SyncBatchNorm against
// single-process references (SimulatedGroup), gradient buckets, and a real Gloo group of two
// ranks on loopback, in two threads, including a rank that goes away.
#include "vicreg/distributed.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"

#include "support/free_port.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <chrono>
#include <future>
#include <map>
#include <string>
#include <thread>

namespace {

using torch::Tensor;

std::function<const char*(const char*)> env_of(std::map<std::string, std::string> vars) {
  auto owned = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [owned](const char* name) -> const char* {
    auto it = owned->find(name);
    return it == owned->end() ? nullptr : it->second.c_str();
  };
}

void expect_env_error(const std::map<std::string, std::string>& vars, const std::string& message) {
  try {
    vicreg::read_distributed_env(env_of(vars));
    ADD_FAILURE() << "no error; expected '" << message << "'";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos)
        << "expected '" << message << "' in: " << e.what();
  }
}

double rel_diff(const Tensor& a, const Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).norm().item<double>() /
         std::max(b.to(torch::kDouble).norm().item<double>(), 1e-300);
}

TEST(DistributedEnv, NothingSetIsOneProcess) {
  const auto env = vicreg::read_distributed_env(env_of({}));
  EXPECT_FALSE(env.distributed());
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  // torchrun --nproc_per_node=1 sets a world of one: no address needed.
  EXPECT_FALSE(
      vicreg::read_distributed_env(env_of({{"WORLD_SIZE", "1"}, {"RANK", "0"}})).distributed());
}

TEST(DistributedEnv, ReadsTorchrunsVariables) {
  const auto env = vicreg::read_distributed_env(env_of({{"RANK", "3"},
                                                        {"WORLD_SIZE", "4"},
                                                        {"LOCAL_RANK", "1"},
                                                        {"MASTER_ADDR", "10.0.0.1"},
                                                        {"MASTER_PORT", "29500"},
                                                        {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                        {"TORCHELASTIC_RESTART_COUNT", "2"}}));
  EXPECT_TRUE(env.distributed());
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "10.0.0.1");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_TRUE(env.agent_store);
  EXPECT_EQ(env.restart_count, 2);
}

TEST(DistributedEnv, InconsistentEnvironmentsAreNamed) {
  const std::map<std::string, std::string> ok = {
      {"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& k, const std::string& v) {
    auto m = ok;
    m[k] = v;
    return m;
  };
  auto without = [&](const std::string& k) {
    auto m = ok;
    m.erase(k);
    return m;
  };
  expect_env_error(without("MASTER_ADDR"), "MASTER_ADDR is not set");
  expect_env_error(without("MASTER_PORT"), "MASTER_PORT is not set");
  expect_env_error(without("RANK"), "RANK is not set");
  expect_env_error(without("WORLD_SIZE"), "WORLD_SIZE is not");
  expect_env_error(with("RANK", "2"), "RANK=2 is not below WORLD_SIZE=2");
  expect_env_error(with("RANK", "-1"), "RANK='-1' must be an integer");
  expect_env_error(with("WORLD_SIZE", "two"), "WORLD_SIZE='two'");
  expect_env_error(with("WORLD_SIZE", "0"), "WORLD_SIZE='0'");
  expect_env_error(with("MASTER_PORT", "70000"), "MASTER_PORT='70000'");
  expect_env_error(with("LOCAL_RANK", "x"), "LOCAL_RANK='x'");
}

// ---------------------------------------------------------------------------------------------
// The sharded loss: W ranks holding the same rows compute the loss of the batch repeated W times.

struct ShardCase {
  int64_t n, d;
  int world;
  vicreg::LossPreset preset;
};

class ShardedLoss : public ::testing::TestWithParam<ShardCase> {};

TEST_P(ShardedLoss, EqualsTheLossOfTheGatheredBatch) {
  const ShardCase c = GetParam();
  torch::manual_seed(11);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const Tensor za = (torch::randn({c.n, c.d}, opts) * 0.7 + 0.2).requires_grad_(true);
  const Tensor zb = (za.detach() + 0.5 * torch::randn({c.n, c.d}, opts)).requires_grad_(true);
  vicreg::VICRegLossOptions o;
  o.preset(c.preset);
  for (int rank : {0, c.world - 1}) {
    vicreg::SimulatedGroup group(rank, c.world);
    za.mutable_grad() = Tensor();
    zb.mutable_grad() = Tensor();
    const auto sharded = vicreg::vicreg_loss_sharded(za, zb, group, o);
    (sharded.total + 0.3 * sharded.covariance).backward();

    // Independent reference: the d x d autograd formulation on the W-fold batch.
    const Tensor ra = torch::cat(std::vector<Tensor>(c.world, za.detach())).requires_grad_(true);
    const Tensor rb = torch::cat(std::vector<Tensor>(c.world, zb.detach())).requires_grad_(true);
    const auto ref = vicreg::vicreg_loss_reference(ra, rb, o);
    (ref.total + 0.3 * ref.covariance).backward();
    for (const auto& [got, want] : {std::pair{sharded.total, ref.total},
                                    {sharded.invariance, ref.invariance},
                                    {sharded.variance, ref.variance},
                                    {sharded.covariance, ref.covariance}}) {
      EXPECT_NEAR(got.item<double>(), want.item<double>(),
                  1e-10 * (1 + std::abs(want.item<double>())));
    }
    EXPECT_LT(rel_diff(sharded.std_a, torch::cat(std::vector<Tensor>(c.world, za.detach())).std(0)),
              1e-12);
    // This rank's rows get W times their share (the averaging over ranks divides by W).
    const Tensor want_a = c.world * ra.grad().narrow(0, rank * c.n, c.n);
    const Tensor want_b = c.world * rb.grad().narrow(0, rank * c.n, c.n);
    EXPECT_LT(rel_diff(za.grad(), want_a), 1e-10) << "rank " << rank;
    EXPECT_LT(rel_diff(zb.grad(), want_b), 1e-10) << "rank " << rank;
  }
}

INSTANTIATE_TEST_SUITE_P(
    GramAndCovarianceForms, ShardedLoss,
    ::testing::Values(ShardCase{6, 40, 1, vicreg::LossPreset::Official},  // N < d: Gram form
                      ShardCase{6, 40, 2, vicreg::LossPreset::Official},
                      ShardCase{5, 64, 4, vicreg::LossPreset::Paper},
                      ShardCase{24, 8, 1, vicreg::LossPreset::Official},  // N >= d: covariance
                      ShardCase{12, 8, 2, vicreg::LossPreset::Paper},
                      ShardCase{3, 10, 4, vicreg::LossPreset::Official}),  // N = 12 >= d = 10
    [](const ::testing::TestParamInfo<ShardCase>& param_info) {
      const ShardCase& c = param_info.param;
      return "n" + std::to_string(c.n) + "_d" + std::to_string(c.d) + "_W" +
             std::to_string(c.world);
    });

TEST(ShardedLossFinite, NonFiniteInputIsNamed) {
  vicreg::SimulatedGroup group(0, 2);
  Tensor za = torch::randn({4, 16});
  za[1][3] = std::numeric_limits<float>::quiet_NaN();
  try {
    vicreg::vicreg_loss_sharded(za, torch::randn({4, 16}), group);
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("z_a contains 1 NaN"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// SyncBatchNorm against torch::batch_norm

TEST(SyncBatchNorm, OneRankIsBatchNorm) {
  for (const auto& shape : {std::vector<int64_t>{7, 5}, std::vector<int64_t>{4, 3, 5, 6}}) {
    torch::manual_seed(5);
    const auto opts = torch::TensorOptions().dtype(torch::kDouble);
    const Tensor x = (torch::randn(shape, opts) * 3 + 1).requires_grad_(true);
    const Tensor w = torch::rand({shape[1]}, opts).add_(0.5).requires_grad_(true);
    const Tensor b = torch::randn({shape[1]}, opts).requires_grad_(true);
    const Tensor dy = torch::randn(shape, opts);
    Tensor rm = torch::zeros({shape[1]}, opts), rv = torch::ones({shape[1]}, opts);
    Tensor rm2 = rm.clone(), rv2 = rv.clone();

    auto group = std::make_shared<vicreg::SimulatedGroup>(0, 1);
    const Tensor y = vicreg::sync_batch_norm(x, w, b, rm, rv, 0.1, 1e-5, group);
    const auto g = torch::autograd::grad({y}, {x, w, b}, {dy});
    const Tensor x2 = x.detach().requires_grad_(true);
    const Tensor w2 = w.detach().requires_grad_(true), b2 = b.detach().requires_grad_(true);
    const Tensor y2 = torch::batch_norm(x2, w2, b2, rm2, rv2, true, 0.1, 1e-5, false);
    const auto g2 = torch::autograd::grad({y2}, {x2, w2, b2}, {dy});
    EXPECT_LT(rel_diff(y, y2), 1e-12);
    for (int i = 0; i < 3; ++i) EXPECT_LT(rel_diff(g[i], g2[i]), 1e-12) << "gradient " << i;
    EXPECT_LT(rel_diff(rm, rm2), 1e-12);
    EXPECT_LT(rel_diff(rv, rv2), 1e-12);
  }
}

TEST(SyncBatchNorm, GradientMatchesFiniteDifferences) {
  // Rank 1 of 3 ranks that hold the same rows: by symmetry, the gradient of its rows equals the
  // derivative of its own output's objective <dy, y> with respect to the rows all ranks share.
  torch::manual_seed(6);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto group = std::make_shared<vicreg::SimulatedGroup>(1, 3);
  const Tensor x = torch::randn({5, 3, 2, 2}, opts).requires_grad_(true);
  const Tensor w = torch::rand({3}, opts).add_(0.5).requires_grad_(true);
  const Tensor b = torch::randn({3}, opts).requires_grad_(true);
  const Tensor dy = torch::randn({5, 3, 2, 2}, opts);
  auto objective = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
    return (vicreg::sync_batch_norm(xx, ww, bb, Tensor(), Tensor(), 0.1, 1e-5, group) * dy).sum();
  };
  const auto g = torch::autograd::grad({objective(x, w, b)}, {x, w, b});
  const Tensor inputs[3] = {x.detach(), w.detach(), b.detach()};
  const double h = 1e-6;
  for (int which = 0; which < 3; ++which) {
    const Tensor flat = g[which].reshape(-1);
    for (int64_t i = 0; i < inputs[which].numel(); ++i) {
      Tensor p[3] = {inputs[0].clone(), inputs[1].clone(), inputs[2].clone()};
      Tensor m[3] = {inputs[0].clone(), inputs[1].clone(), inputs[2].clone()};
      p[which].view(-1)[i] += h;
      m[which].view(-1)[i] -= h;
      torch::NoGradGuard no_grad;
      const double numeric = (objective(p[0], p[1], p[2]).item<double>() -
                              objective(m[0], m[1], m[2]).item<double>()) /
                             (2 * h);
      EXPECT_NEAR(flat[i].item<double>(), numeric, 1e-6 * (1 + std::abs(numeric)))
          << "input " << which << " element " << i;
    }
  }
}

TEST(SyncBatchNorm, ModuleSynchronisesOnlyWhenAsked) {
  vicreg::BatchNorm bn(4);
  EXPECT_EQ(bn->named_parameters().size(), 2u);
  for (const char* name : {"running_mean", "running_var", "num_batches_tracked"}) {
    EXPECT_NE(bn->named_buffers().find(name), nullptr) << name;
  }
  torch::nn::Sequential seq(torch::nn::Linear(3, 4), vicreg::BatchNorm(4));
  EXPECT_EQ(vicreg::convert_sync_batchnorm(*seq, std::make_shared<vicreg::SimulatedGroup>(0, 2)),
            1);
  // Two ranks with the same rows: the statistics are those of the one batch.
  const Tensor x = torch::randn({6, 3});
  vicreg::BatchNorm plain(4);
  {
    torch::NoGradGuard g;
    plain->weight.copy_(seq[1]->as<vicreg::BatchNorm>()->weight);
  }
  const Tensor h = seq[0]->as<torch::nn::Linear>()->forward(x);
  EXPECT_TRUE(torch::allclose(seq->forward(x), plain->forward(h), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(seq[1]->as<vicreg::BatchNorm>()->running_mean, plain->running_mean,
                              1e-6, 1e-6));
  EXPECT_EQ(seq[1]->as<vicreg::BatchNorm>()->num_batches_tracked.item<int64_t>(), 1);
  // One row per rank is fine when synchronised (2 over all ranks), not alone.
  EXPECT_NO_THROW(seq->forward(torch::randn({1, 3})));
  EXPECT_THROW(plain->forward(torch::randn({1, 4})), c10::Error);
}

// ---------------------------------------------------------------------------------------------
// Gradient buckets

TEST(AllReduceGradients, BucketsByBytesAndDtypeAndAverages) {
  std::vector<Tensor> params = {torch::zeros({1000}), torch::zeros({10, 100}), torch::zeros({3000}),
                                torch::zeros({50}, torch::kDouble), torch::zeros({7})};
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    params[i].mutable_grad() = torch::randn(params[i].sizes(), params[i].options());
  }
  // params[4] has no gradient: skipped.
  std::vector<Tensor> before;
  for (size_t i = 0; i + 1 < params.size(); ++i) before.push_back(params[i].grad().clone());
  vicreg::SimulatedGroup group(0, 3);  // sums are 3x; the average brings them back
  // Backward order: 50 doubles (own dtype), 3000 floats (12 KB, alone), then 1000 + 1000 floats
  // (8 KB) share a bucket.
  EXPECT_EQ(vicreg::all_reduce_gradients(params, group, 8000), 3);
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    EXPECT_LT(rel_diff(params[i].grad(), before[i]), 1e-6) << i;
  }
  EXPECT_FALSE(params[4].grad().defined());
  EXPECT_EQ(vicreg::all_reduce_gradients(params, group, 1 << 30), 2);  // one per dtype
}

// ---------------------------------------------------------------------------------------------
// A real Gloo group: two ranks in two threads on loopback.

vicreg::DistributedEnv loopback(int rank, int world, int port) {
  vicreg::DistributedEnv env;
  env.rank = rank;
  env.world_size = world;
  env.master_addr = "127.0.0.1";
  env.master_port = port;
  return env;
}

TEST(GlooGroup, CollectivesOnLoopbackAndALostRank) {
  const int port = vicreg::testing::free_port();
  vicreg::DistributedOptions o;
  o.timeout = std::chrono::seconds(20);
  std::promise<void> rank1_gone;
  auto rank1 = std::async(std::launch::async, [&] {
    auto g = vicreg::init_process_group(loopback(1, 2, port), o);
    std::vector<Tensor> t = {torch::full({3}, 2.0), torch::arange(4.0)};
    g->all_reduce_sum(t);
    const Tensor gathered = g->all_gather(torch::full({1, 2}, 1.0));
    std::vector<Tensor> b = {torch::zeros({2})};
    g->broadcast(b, 0);
    g.reset();  // rank 1 leaves: its connections close
    rank1_gone.set_value();
    return std::make_tuple(t, gathered, b[0]);
  });
  auto g = vicreg::init_process_group(loopback(0, 2, port), o);
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->backend(), "gloo");
  EXPECT_EQ(g->world_size(), 2);
  std::vector<Tensor> t = {torch::full({3}, 1.0), torch::arange(4.0)};
  g->all_reduce_sum(t);
  const Tensor gathered = g->all_gather(torch::zeros({1, 2}));
  std::vector<Tensor> b = {torch::full({2}, 7.0)};
  g->broadcast(b, 0);
  const auto [t1, gathered1, b1] = rank1.get();
  for (const auto& r : {t, t1}) {
    EXPECT_TRUE(torch::equal(r[0], torch::full({3}, 3.0)));
    EXPECT_TRUE(torch::equal(r[1], torch::arange(4.0) * 2));
  }
  for (const auto& r : {gathered, gathered1}) {
    EXPECT_TRUE(torch::equal(r, torch::tensor({{0.0, 0.0}, {1.0, 1.0}}).to(torch::kFloat)));
  }
  EXPECT_TRUE(torch::equal(b1, torch::full({2}, 7.0)));
  rank1_gone.get_future().wait();
  // The survivor's next collective fails fast and names the lost rank.
  const auto t0 = std::chrono::steady_clock::now();
  try {
    std::vector<Tensor> x = {torch::ones({4})};
    g->all_reduce_sum(x);
    ADD_FAILURE() << "no error after rank 1 left";
  } catch (const vicreg::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 of 2: all-reduce failed: lost rank 1"),
              std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15.0);
}

TEST(GlooGroup, UnreachableStoreIsNamed) {
  vicreg::DistributedOptions o;
  o.timeout = std::chrono::seconds(2);
  const int port = vicreg::testing::free_port();  // nobody listens there
  try {
    vicreg::init_process_group(loopback(1, 2, port), o);
    ADD_FAILURE() << "no error";
  } catch (const vicreg::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach the rendezvous store at 127.0.0.1:" +
                                         std::to_string(port) + " within 2 s"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(vicreg::init_process_group(vicreg::DistributedEnv{}, o), nullptr);  // one process
  EXPECT_THROW(vicreg::parse_name<vicreg::DistBackend>("mpi"), vicreg::UsageError);
#ifndef USE_C10D_NCCL
  o.backend = vicreg::DistBackend::Nccl;  // not in this LibTorch
  EXPECT_THROW(vicreg::init_process_group(loopback(0, 2, port), o), vicreg::UsageError);
#endif
}

}  // namespace
