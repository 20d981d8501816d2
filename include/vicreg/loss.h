// The VICReg loss (Bardes, Ponce & LeCun, arXiv 2105.04906), fused, with a closed-form backward.
//
// For two batches of n embeddings of dimension d, Z = z_a and Z' = z_b:
//   s(Z, Z') = (1/n) sum_i ||Z_i - Z'_i||^2                         invariance
//   v(Z)     = (1/d) sum_j max(0, gamma - sqrt(Var(Z[:, j]) + eps))  variance, Var unbiased (n-1)
//   C(Z)     = (1/(n-1)) Zc^T Zc,  Zc = Z - mean(Z)                 covariance matrix [d, d]
//   c(Z)     = (1/d) sum_{i != j} C(Z)_ij^2                         covariance
//
// Two presets, which differ only in how the terms are weighted into the total:
//
//   LossPreset::Official (default) - facebookresearch/vicreg main_vicreg.py, also lightly:
//     invariance = mean over all n*d elements of (Z - Z')^2  = s / d   (F.mse_loss)
//     total      = sim_coeff * invariance + std_coeff * variance / 2 + cov_coeff * covariance
//   LossPreset::Paper - the paper's equations (also solo-learn's weighting of the variance):
//     invariance = s
//     total      = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
//
// In both, variance = v(Z) + v(Z') and covariance = c(Z) + c(Z') (unweighted, one term per view).
// The default coefficients (25, 25, 1) were tuned for the Official preset.
//
// Implementation (derivations in docs/loss.md): the covariance term is computed through the n x n
// Gram matrix G = Zc Zc^T when n < d (no d x d matrix is ever built) and through Zc^T Zc otherwise;
// no mask is built in either case. The backward pass is closed form. Reductions accumulate in fp32
// at least (fp64 for double inputs and for the final scalar sums), whatever the input dtype;
// gradients come back in the input dtype. Works on any device LibTorch supports.
#pragma once

#include "vicreg/names.h"

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <iosfwd>
#include <string>

namespace vicreg {

class ProcessGroup;  // distributed.h

/// Which published weighting of the three terms to use (see the top of this file).
enum class LossPreset { Official, Paper };

/// "official" / "paper" (to_string, parse_name<LossPreset>).
template <>
const NameTable<LossPreset>& name_table<LossPreset>();

struct VICRegLossOptions {
  /// lambda: weight of the invariance term.
  TORCH_ARG(double, sim_coeff) = 25.0;
  /// mu: weight of the variance term.
  TORCH_ARG(double, std_coeff) = 25.0;
  /// nu: weight of the covariance term.
  TORCH_ARG(double, cov_coeff) = 1.0;
  /// Target standard deviation of every embedding dimension.
  TORCH_ARG(double, gamma) = 1.0;
  /// Added to the variance under the square root, for numerical stability.
  TORCH_ARG(double, eps) = 1e-4;
  /// How the terms are weighted (see the top of this file).
  TORCH_ARG(LossPreset, preset) = LossPreset::Official;
  /// Reject NaN or Inf in the embeddings with a clear error. Costs one pass over both inputs and,
  /// on CUDA, one host synchronisation per call; switch it off once a pipeline is trusted.
  TORCH_ARG(bool, check_finite) = true;
};

/// The loss and its three unweighted terms, each a 0-dim tensor.
/// total = sim_coeff * invariance + w * std_coeff * variance + cov_coeff * covariance,
/// w = 1/2 for LossPreset::Official and 1 for LossPreset::Paper. All four are differentiable.
struct VICRegLossTerms {
  torch::Tensor total;
  torch::Tensor invariance;  ///< Official: mean of (z_a - z_b)^2; Paper: s(Z, Z')
  torch::Tensor variance;    ///< v(Z) + v(Z')
  torch::Tensor covariance;  ///< c(Z) + c(Z')
  /// [d] standard deviation of each dimension of z_a over the (global) batch, unbiased, detached
  /// (a by-product for monitoring; set by vicreg_loss and vicreg_loss_sharded, not the reference).
  torch::Tensor std_a;
};

/// The fused VICReg loss.
/// z_a: [n, d], z_b: [n, d]; same dtype (float, double, half or bfloat16) and device; n >= 2.
/// Returns 0-dim tensors in fp32 (fp64 for double inputs) on the inputs' device.
/// Throws c10::Error naming the violated precondition (shapes, dtype, device, NaN/Inf, options).
VICRegLossTerms vicreg_loss(const torch::Tensor& z_a, const torch::Tensor& z_b,
                            const VICRegLossOptions& options = {});

/// The loss of a global batch spread over the W ranks of `group` (docs/loss.md): each rank
/// passes its own n rows of both views (the same n on every rank), gets the loss of the global
/// batch of N = W n rows (exactly vicreg_loss() of the rows concatenated in rank order), and its
/// backward gives W times the gradient of its own rows (distributed.h: averaging the parameter
/// gradients over ranks then gives the global gradient). Work per rank:
///   N < d (Gram form): one all-gather of both views' rows; this rank's block rows G_r = Zc_r Zc^T
///     [n, N] forward and G_r Zc backward: O(n N d) instead of the O(N d^2) the reference spends
///     on every rank; column means and sigma^2 come from the gathered rows (O(N d)); one
///     all-reduce of three scalars (invariance, ||G_r||_F^2 of each view).
///   N >= d (covariance form): all-reduces of the column sums [2 d] and of Zc_r^T Zc_r [2, d, d]
///     with the invariance; O(n d^2) per rank, no gather.
/// The invariance stays local until its scalar is summed; the backward pass communicates nothing.
/// z_a: [n, d], z_b: [n, d] -> 0-dim terms on every rank.
VICRegLossTerms vicreg_loss_sharded(const torch::Tensor& z_a, const torch::Tensor& z_b,
                                    ProcessGroup& group, const VICRegLossOptions& options = {});

/// The same loss written the way the reference implementations write it (solo-learn, lightly):
/// plain LibTorch ops differentiated by autograd, the d x d covariance matrix, its off-diagonal
/// taken with a d x d boolean mask. Computes in the input dtype. For tests and benchmarks: it
/// shares no code with vicreg_loss() beyond the checks of its arguments.
/// z_a: [n, d], z_b: [n, d].
VICRegLossTerms vicreg_loss_reference(const torch::Tensor& z_a, const torch::Tensor& z_b,
                                      const VICRegLossOptions& options = {});

/// Throws c10::Error unless z_a and z_b are valid inputs for the loss under `options`
/// (called by both implementations above).
void check_loss_inputs(const torch::Tensor& z_a, const torch::Tensor& z_b,
                       const VICRegLossOptions& options);

/// Floating-point operations of one forward + backward of the matrix products in vicreg_loss()
/// for both views: 8 n d min(n, d) (one product forward and one backward per view). Element-wise
/// work, O(n d), is not counted.
double vicreg_loss_flops(int64_t n, int64_t d);
/// The same for vicreg_loss_reference(): per view, Zc^T Zc forward (2 n d^2) and the two
/// products of its backward (4 n d^2): 12 n d^2.
double vicreg_loss_reference_flops(int64_t n, int64_t d);

/// Module wrapper, in the style of torch::nn::MSELoss.
class VICRegLossImpl : public torch::nn::Cloneable<VICRegLossImpl> {
 public:
  explicit VICRegLossImpl(VICRegLossOptions options = {});

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// z_a: [n, d], z_b: [n, d]
  VICRegLossTerms forward(const torch::Tensor& z_a, const torch::Tensor& z_b);

  VICRegLossOptions options;
};
TORCH_MODULE(VICRegLoss);

}  // namespace vicreg
