#include "vicreg/profile.h"

#include "vicreg/runtime.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>

namespace vicreg {

std::string to_string(LossImplementation impl) {
  return impl == LossImplementation::Fused ? "fused" : "reference";
}

LossWorkload make_loss_workload(int64_t n, int64_t d, LossImplementation impl,
                                const torch::Device& device, torch::Dtype dtype, uint64_t seed) {
  torch::manual_seed(seed);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat);
  const torch::Tensor shared = torch::randn({n, 1}, opts);
  auto view = [&] {
    return (torch::randn({n, d}, opts) + 0.3 * shared).to(device, dtype).requires_grad_(true);
  };
  LossWorkload w;
  w.z_a = view();
  w.z_b = view();
  w.implementation = impl;
  // The reference implementations do not look for NaN/Inf; the fused loss keeps its default.
  w.options.check_finite(impl == LossImplementation::Fused);
  return w;
}

double run_loss_step(LossWorkload& w) {
  const VICRegLossTerms t = w.implementation == LossImplementation::Fused
                                ? vicreg_loss(w.z_a, w.z_b, w.options)
                                : vicreg_loss_reference(w.z_a, w.z_b, w.options);
  t.total.backward();
  w.z_a.mutable_grad() = torch::Tensor();
  w.z_b.mutable_grad() = torch::Tensor();
  return t.total.item<double>();  // reading the value waits for the device's queued work
}

int64_t loss_step_peak_bytes(LossWorkload& w) {
  const torch::Device device = w.z_a.device();
  if (device.is_cpu()) enable_memory_tracking();
  synchronize(device);
  const int64_t before = memory_stats(device).current_bytes;
  reset_peak_memory(device);
  run_loss_step(w);
  return memory_stats(device).peak_bytes - before;
}

double loss_step_flops(const LossWorkload& w) {
  const int64_t n = w.z_a.size(0), d = w.z_a.size(1);
  return w.implementation == LossImplementation::Fused ? vicreg_loss_flops(n, d)
                                                       : vicreg_loss_reference_flops(n, d);
}

LossStepTiming time_loss_steps(LossWorkload& w, int min_iterations, double min_total_seconds) {
  using clock = std::chrono::steady_clock;
  run_loss_step(w);  // warm-up: allocator caches, BLAS buffers, lazy initialisation
  std::vector<double> times;
  double spent = 0.0;
  while (static_cast<int>(times.size()) < std::max(1, min_iterations) ||
         spent < min_total_seconds) {
    const auto start = clock::now();
    run_loss_step(w);
    times.push_back(std::chrono::duration<double>(clock::now() - start).count());
    spent += times.back();
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], times.front(), static_cast<int>(times.size())};
}

}  // namespace vicreg
