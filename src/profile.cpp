#include "vicreg/profile.h"

#include "vicreg/error.h"
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

template <>
const NameTable<torch::Dtype>& name_table<torch::Dtype>() {
  static const NameTable<torch::Dtype> t{"--dtype",
                                         {{torch::kFloat, "float"},
                                          {torch::kDouble, "double"},
                                          {torch::kHalf, "half"},
                                          {torch::kBFloat16, "bfloat16"}}};
  return t;
}

std::pair<int64_t, int64_t> parse_loss_shape(const std::string& text) {
  const auto x = text.find('x');
  size_t used_n = 0, used_d = 0;
  long long n = 0, d = 0;
  try {
    if (x == std::string::npos) throw std::invalid_argument("no x");
    n = std::stoll(text.substr(0, x), &used_n);
    d = std::stoll(text.substr(x + 1), &used_d);
  } catch (const std::exception&) {
    used_n = 0;
  }
  if (used_n == 0 || used_n != x || used_d != text.size() - x - 1 || n < 2 || d < 1) {
    throw UsageError("--shapes: '" + text +
                     "' is not NxD with N >= 2 rows and D >= 1 columns, e.g. 512x8192");
  }
  return {n, d};
}

nlohmann::json compare_loss_implementations(
    const LossComparison& c, const std::function<void(const nlohmann::json& row)>& on_row) {
  const bool low_precision = c.dtype == torch::kHalf || c.dtype == torch::kBFloat16;
  if (c.device.is_cpu() && low_precision && c.reference) {
    throw UsageError("--dtype " + to_string(c.dtype) +
                     " on cpu: the reference formulation computes in the input dtype, and "
                     "LibTorch lacks " +
                     to_string(c.dtype) +
                     " CPU kernels for it; add "
                     "--no-reference to time the fused loss alone (it accumulates in float)");
  }
  std::vector<LossImplementation> impls = {LossImplementation::Fused};
  if (c.reference) impls.push_back(LossImplementation::Reference);
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [n, d] : c.shapes) {
    nlohmann::json row = {{"n", n}, {"d", d}};
    for (const auto impl : impls) {
      LossWorkload w = make_loss_workload(n, d, impl, c.device, c.dtype);
      w.options.preset(c.preset);
      const double peak = static_cast<double>(loss_step_peak_bytes(w));
      const LossStepTiming timing = time_loss_steps(w, 3, c.min_seconds);
      row[to_string(impl)] = {{"median_ms", timing.median_seconds * 1e3},
                              {"min_ms", timing.min_seconds * 1e3},
                              {"iterations", timing.iterations},
                              {"gflops", loss_step_flops(w) / timing.median_seconds / 1e9},
                              {"peak_bytes", peak}};
    }
    if (c.reference) {
      const auto& f = row["fused"];
      const auto& r = row["reference"];
      row["speedup"] = r["median_ms"].get<double>() / f["median_ms"].get<double>();
      row["peak_ratio"] = f["peak_bytes"].get<double>() / r["peak_bytes"].get<double>();
    }
    if (on_row) on_row(row);
    rows.push_back(row);
  }
  return rows;
}

}  // namespace vicreg
