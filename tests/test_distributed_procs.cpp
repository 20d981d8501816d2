// Real processes on loopback: W ranks of this executable (started by the test with torchrun's
// variables, Gloo) against one process on the same global batch, for the loss alone and for
// whole training steps: a ConvNet with synchronised BatchNorm, a ViT and a ConvNeXt (LayerNorm
// only, the expander's BatchNorm synchronised; in double). The loss terms and every parameter's
// gradient must agree to 1e-5 relative (1e-9 in double).
//
// The executable is its own worker: with VICREG_TEST_WORKER set it computes one rank's part
// and writes it to VICREG_TEST_OUT instead of running the tests.
#include "vicreg/distributed.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"

#include "support/free_port.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>

namespace {

namespace fs = std::filesystem;
using torch::Tensor;
using Named = std::map<std::string, Tensor>;

constexpr int64_t kSteps = 2;  // training steps in the "step:ARCH" modes

/// Global batches of embeddings for the loss: (N, d) in the Gram form and the covariance form.
const std::pair<int64_t, int64_t> kLossShapes[] = {{16, 48}, {32, 8}};

/// The loss terms and the gradient of this process's rows (divided by W: the global gradient).
Named loss_outcome(const std::shared_ptr<vicreg::ProcessGroup>& group) {
  const int rank = group ? group->rank() : 0, world = group ? group->world_size() : 1;
  Named out;
  for (const auto& [n, d] : kLossShapes) {
    torch::manual_seed(100 + n);
    const Tensor za_all = torch::randn({n, d}) * 0.8 + 0.1;
    const Tensor zb_all = za_all + 0.6 * torch::randn({n, d});
    const int64_t rows = n / world;
    const Tensor za = za_all.narrow(0, rank * rows, rows).clone().requires_grad_(true);
    const Tensor zb = zb_all.narrow(0, rank * rows, rows).clone().requires_grad_(true);
    const auto t =
        group ? vicreg::vicreg_loss_sharded(za, zb, *group) : vicreg::vicreg_loss(za, zb);
    t.total.backward();
    const std::string k = std::to_string(n) + "x" + std::to_string(d) + "/";
    out[k + "total"] = t.total.detach();
    out[k + "invariance"] = t.invariance.detach();
    out[k + "variance"] = t.variance.detach();
    out[k + "covariance"] = t.covariance.detach();
    out[k + "grad_a"] = za.grad() / world;
    out[k + "grad_b"] = zb.grad() / world;
  }
  return out;
}

/// kSteps SGD steps of a small VICReg model (a backbone of `arch`: the ConvNet with BatchNorm, a
/// two-block ViT-Tiny on 4 px patches, or ConvNeXt-Tiny's small-image stem; the expander with
/// BatchNorm1d) on a fixed global batch: the loss terms of each step, every gradient of the last
/// step, every parameter and buffer after it.
Named step_outcome(const std::string& arch, const std::shared_ptr<vicreg::ProcessGroup>& group) {
  const int rank = group ? group->rank() : 0, world = group ? group->world_size() : 1;
  vicreg::VICRegModelConfig mc;
  mc.encoder.arch = arch;
  mc.encoder.in_channels = 1;
  mc.encoder.image_size = 12;
  mc.encoder.width = 4;
  mc.encoder.stages = 2;
  // Without the final 1x1 conv: one more BatchNorm on 8 x 6 x 6 values per channel takes the
  // fp32 rounding of the two summation orders past the 1e-5 checked below.
  mc.encoder.final_conv = 0;
  mc.encoder.patch_size = 4;  // vit: 3 x 3 patches and the class token
  mc.encoder.depth = 2;
  mc.mlp = "24-24-40";
  torch::manual_seed(3);
  vicreg::VICReg model(mc);
  // The LayerNorm families in double: their small gradients (position embeddings, the patch
  // projection's bias under 2 blocks of attention at init) differ by a few 1e-5 between the
  // summation orders in fp32; in double what is left of the check is the sharding itself.
  const bool layer_norm = arch != "convnet";
  const torch::ScalarType dtype = layer_norm ? torch::kDouble : torch::kFloat;
  model->to(dtype);
  if (group) {
    vicreg::convert_sync_batchnorm(*model, group);
    vicreg::broadcast_module(*model, *group);
  }
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  Named out;
  for (int64_t step = 0; step < kSteps; ++step) {
    torch::manual_seed(40 + step);
    const int64_t n = 8;
    const Tensor xa_all = torch::randn({n, 1, 12, 12}).to(dtype);
    const Tensor xb_all = xa_all + 0.3 * torch::randn({n, 1, 12, 12}).to(dtype);
    const int64_t rows = n / world;
    const auto o =
        model->forward(xa_all.narrow(0, rank * rows, rows), xb_all.narrow(0, rank * rows, rows));
    const auto t = group ? vicreg::vicreg_loss_sharded(o.views[0].z, o.views[1].z, *group)
                         : vicreg::vicreg_loss(o.views[0].z, o.views[1].z);
    sgd.zero_grad();
    t.total.backward();
    if (group) vicreg::all_reduce_gradients(model->parameters(), *group);
    const std::string k = "step" + std::to_string(step) + "/";
    out[k + "total"] = t.total.detach();
    out[k + "invariance"] = t.invariance.detach();
    out[k + "variance"] = t.variance.detach();
    out[k + "covariance"] = t.covariance.detach();
    if (step + 1 == kSteps) {
      for (const auto& p : model->named_parameters())
        out["grad/" + p.key()] = p.value().grad().clone();
    }
    sgd.step();
  }
  for (const auto& p : model->named_parameters())
    out["param/" + p.key()] = p.value().detach().clone();
  for (const auto& b : model->named_buffers()) out["buffer/" + b.key()] = b.value().clone();
  return out;
}

/// Modes: "loss", or "step:ARCH".
Named outcome(const std::string& mode, const std::shared_ptr<vicreg::ProcessGroup>& group) {
  return mode == "loss" ? loss_outcome(group) : step_outcome(mode.substr(5), group);
}

void save(const Named& named, const std::string& path) {
  torch::serialize::OutputArchive a;
  for (const auto& [k, v] : named) a.write(k, v);
  a.save_to(path);
}

Named load(const std::string& path, const Named& like) {
  torch::serialize::InputArchive a;
  a.load_from(path);
  Named out;
  for (const auto& [k, v] : like) {
    Tensor t;
    a.read(k, t);
    out[k] = t;
  }
  return out;
}

class Processes : public vicreg::testing::TempDirTest {
 protected:
  /// Runs `world` workers of `mode`; returns each rank's outcome file.
  std::vector<std::string> run_workers(const std::string& mode, int world) {
    const int port = vicreg::testing::free_port();
    std::vector<pid_t> pids;
    std::vector<std::string> files;
    for (int r = 0; r < world; ++r) {
      files.push_back(
          (dir_ / (mode.substr(mode.find(':') + 1) + std::to_string(r) + ".pt")).string());
      const pid_t pid = fork();
      if (pid == 0) {
        setenv("RANK", std::to_string(r).c_str(), 1);
        setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
        setenv("MASTER_ADDR", "127.0.0.1", 1);
        setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
        setenv("VICREG_TEST_WORKER", mode.c_str(), 1);
        setenv("VICREG_TEST_OUT", files.back().c_str(), 1);
        execl("/proc/self/exe", "worker", static_cast<char*>(nullptr));
        _exit(127);
      }
      pids.push_back(pid);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (pid_t pid : pids) {
      int status = 0;
      while (waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          for (pid_t p : pids) kill(p, SIGKILL);
          ADD_FAILURE() << "workers did not finish within 120 s";
          return {};
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a worker failed";
    }
    return files;
  }

  void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
    ASSERT_EQ(got.sizes(), want.sizes()) << what;
    const double scale = want.to(torch::kDouble).norm().item<double>();
    const double diff = (got.to(torch::kDouble) - want.to(torch::kDouble)).norm().item<double>();
    const double tolerance = want.scalar_type() == torch::kDouble ? 1e-9 : 1e-5;
    EXPECT_LE(diff, tolerance * scale + 1e-12) << what << ": relative difference " << diff / scale;
  }

  /// kSteps training steps of `arch` on 2 ranks against one process: every loss term, gradient,
  /// parameter and buffer alike; returns how many gradients were compared.
  size_t expect_steps_match(const std::string& arch) {
    const Named single = outcome("step:" + arch, nullptr);
    const auto files = run_workers("step:" + arch, 2);
    EXPECT_EQ(files.size(), 2u);
    if (files.size() != 2u) return 0;
    // A bias followed by BatchNorm has a gradient of exactly 0 in exact arithmetic: what is left
    // is rounding, compared against the scale of the whole gradient instead.
    double largest = 0;
    for (const auto& [k, want] : single) {
      if (k.rfind("grad/", 0) == 0) largest = std::max(largest, want.norm().item<double>());
    }
    size_t grads = 0;
    for (int r = 0; r < 2; ++r) {
      const Named got = load(files[r], single);
      for (const auto& [k, want] : single) {
        const std::string what = arch + " rank " + std::to_string(r) + " " + k;
        if (k.rfind("buffer/", 0) == 0 && k.find("num_batches_tracked") != std::string::npos) {
          EXPECT_TRUE(torch::equal(got.at(k), want)) << what;
          continue;
        }
        if (k.rfind("grad/", 0) == 0 && want.norm().item<double>() < 1e-4 * largest) {
          EXPECT_LT(got.at(k).norm().item<double>(), 1e-4 * largest) << what << " should be ~0";
          continue;
        }
        expect_close(got.at(k), want, what);
        grads += k.rfind("grad/", 0) == 0;
      }
    }
    return grads;
  }
};

TEST_F(Processes, LossOnTheGlobalBatchMatchesOneProcess) {
  const Named single = outcome("loss", nullptr);
  for (int world : {2, 4}) {
    const auto files = run_workers("loss", world);
    ASSERT_EQ(files.size(), static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      const Named got = load(files[r], single);
      for (const auto& [k, want] : single) {
        if (k.find("grad") == std::string::npos) {
          expect_close(got.at(k), want, "W=" + std::to_string(world) + " " + k);
        } else {
          const int64_t rows = want.size(0) / world;
          expect_close(got.at(k), want.narrow(0, r * rows, rows),
                       "W=" + std::to_string(world) + " rank " + std::to_string(r) + " " + k);
        }
      }
    }
  }
}

TEST_F(Processes, TrainingStepsWithSyncBatchNormMatchOneProcess) {
  EXPECT_GE(expect_steps_match("convnet"), 2u * 10);  // convs, BatchNorms, linears
}

// The LayerNorm families: the class token and position embeddings, attention and LayerNorms
// (ViT), depthwise convs and folded layer scale (ConvNeXt) get their gradients averaged alike.
TEST_F(Processes, ViTAndConvNeXtTrainingStepsMatchOneProcess) {
  EXPECT_GE(expect_steps_match("vit_tiny"), 2u * 20);
  EXPECT_GE(expect_steps_match("convnext_tiny"), 2u * 40);
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* mode = std::getenv("VICREG_TEST_WORKER")) {
    try {
      torch::set_num_threads(1);
      auto group = vicreg::init_process_group(
          vicreg::read_distributed_env(),
          {vicreg::DistBackend::Gloo, std::chrono::seconds(60), torch::kCPU});
      save(outcome(mode, group), std::getenv("VICREG_TEST_OUT"));
      group->barrier();
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "worker: %s\n", e.what());
      return 1;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
