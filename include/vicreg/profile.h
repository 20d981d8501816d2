// Measuring the loss: one forward + backward step of either implementation, its peak memory and
// its time. Shared by bench/loss_bench (Google Benchmark) and `vicreg bench-loss`.
#pragma once

#include "vicreg/loss.h"
#include "vicreg/names.h"

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace vicreg {

enum class LossImplementation {
  Fused,      ///< vicreg_loss()
  Reference,  ///< vicreg_loss_reference(): d x d covariance, off-diagonal by masking
};
std::string to_string(LossImplementation impl);

/// Two random views [n, d] that require gradients, and how to take the loss of them.
struct LossWorkload {
  torch::Tensor z_a, z_b;
  VICRegLossOptions options;
  LossImplementation implementation = LossImplementation::Fused;
};

/// Embeddings like an expander's output (unit-scale, mildly correlated columns), on `device`.
LossWorkload make_loss_workload(int64_t n, int64_t d, LossImplementation impl,
                                const torch::Device& device = torch::kCPU,
                                torch::Dtype dtype = torch::kFloat, uint64_t seed = 0);

/// One forward + backward; clears the inputs' gradients afterwards and waits for the device.
/// Returns the total loss of the step.
double run_loss_step(LossWorkload& w);

/// Peak bytes allocated during one step, above what was allocated before it (for CPU, this turns
/// on vicreg::enable_memory_tracking()).
int64_t loss_step_peak_bytes(LossWorkload& w);

/// Floating-point operations of one step of w (vicreg_loss_flops / vicreg_loss_reference_flops).
double loss_step_flops(const LossWorkload& w);

struct LossStepTiming {
  double median_seconds = 0.0;
  double min_seconds = 0.0;
  int iterations = 0;
};
/// Times at least `min_iterations` steps, and more until `min_total_seconds` have passed, after
/// one untimed warm-up step.
LossStepTiming time_loss_steps(LossWorkload& w, int min_iterations, double min_total_seconds);

/// The embedding dtypes the loss is measured in: float, double, half, bfloat16.
template <>
const NameTable<torch::Dtype>& name_table<torch::Dtype>();

/// "NxD" (N >= 2 rows, D >= 1 columns), e.g. 512x8192. Throws UsageError.
std::pair<int64_t, int64_t> parse_loss_shape(const std::string& text);

/// What compare_loss_implementations() measures.
struct LossComparison {
  std::vector<std::pair<int64_t, int64_t>> shapes = {
      {256, 2048}, {512, 8192}, {2048, 8192}, {2048, 512}, {4096, 256}};
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat;
  LossPreset preset = LossPreset::Official;
  double min_seconds = 1.0;  ///< per case, after 3 steps and a warm-up
  bool reference = true;     ///< also the reference formulation
};

/// Times forward + backward of the fused loss (and the reference) for every shape. Returns one
/// JSON row per shape: {"n", "d", "fused": {median_ms, min_ms, iterations, gflops, peak_bytes},
/// "reference": {...}, "speedup", "peak_ratio"}; `on_row` sees each row as soon as it is
/// measured. Throws UsageError for half/bfloat16 on a CPU with the reference (LibTorch lacks
/// those CPU kernels).
nlohmann::json compare_loss_implementations(
    const LossComparison& comparison,
    const std::function<void(const nlohmann::json& row)>& on_row = nullptr);

}  // namespace vicreg
