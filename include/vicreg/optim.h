// Optimisation for pretraining: LARS (docs/training.md), AdamW and SGD with the reference's
// parameter grouping, and the reference's learning-rate schedule (linear warm-up per step, then
// cosine decay to a fraction of the peak).
#pragma once

#include "vicreg/names.h"

#include <torch/arg.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace vicreg {

/// The key type of torch::optim::Optimizer::state(): the parameter's TensorImpl address as text in
/// LibTorch 1.x, the address itself in 2.x.
using OptimizerStateKey =
    typename std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

/// The key of parameter `p`'s state in torch::optim::Optimizer::state(), in any LibTorch: the same
/// key LibTorch's own optimizers and their serialisation use.
template <typename Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream s;  // c10::guts::to_string's format, which LibTorch 2.x no longer has
    s << p.unsafeGetTensorImpl();
    return s.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

/// Whether this LibTorch reads correctly an optimizer state saved under `keys` (the entries of
/// the optimizer archive's "state"): LibTorch 1.x saves them as hexadecimal text ("0x55d0c3a0"),
/// 2.x as decimal text and reads each key as a decimal number, so it would read 1.x's keys all as
/// 0 and mix up the parameters' state. LibTorch 1.x reads both.
template <typename Key = OptimizerStateKey>
bool optimizer_state_keys_readable(const std::vector<std::string>& keys) {
  if constexpr (std::is_same_v<Key, std::string>) {
    return true;
  } else {
    return std::all_of(keys.begin(), keys.end(), [](const std::string& k) {
      return !k.empty() &&
             std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
    });
  }
}

/// LARS as in facebookresearch/vicreg (main_vicreg.py), for each parameter p with gradient g:
///   u = g + weight_decay * p                       (not for 1-D p when exclude_1d)
///   q = eta ||p|| / ||u||, 1 if either norm is 0   (not for 1-D p when exclude_1d)
///   q = min(q / lr, 1)                             (only when clip_lr: solo-learn's variant)
///   mu = momentum * mu + q u;   p -= lr * mu
struct LARSOptions : public torch::optim::OptimizerCloneableOptions<LARSOptions> {
  LARSOptions(double lr = 0.0);  // NOLINT(google-explicit-constructor): like torch's SGDOptions
  TORCH_ARG(double, lr);
  TORCH_ARG(double, momentum) = 0.9;
  TORCH_ARG(double, weight_decay) = 1e-6;
  /// Trust coefficient: 1e-3 in the reference, 0.02 in solo-learn (with clip_lr).
  TORCH_ARG(double, eta) = 1e-3;
  /// Parameters with one dimension (biases, norm layers) get neither weight decay nor the trust
  /// ratio, as in the reference.
  TORCH_ARG(bool, exclude_1d) = true;
  /// solo-learn's clipping of the adapted rate: q = min(q / lr, 1).
  TORCH_ARG(bool, clip_lr) = false;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
};

struct LARSParamState : public torch::optim::OptimizerCloneableParamState<LARSParamState> {
  TORCH_ARG(torch::Tensor, momentum_buffer);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class LARS : public torch::optim::Optimizer {
 public:
  /// `excluded`: parameters of two or more dimensions treated as exclude_1d treats 1-D ones (a
  /// ViT's position embeddings and class token).
  LARS(std::vector<torch::optim::OptimizerParamGroup> param_groups, LARSOptions defaults,
       const std::vector<torch::Tensor>& excluded = {});
  LARS(std::vector<torch::Tensor> params, LARSOptions defaults,
       const std::vector<torch::Tensor>& excluded = {});

  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Restores the momentum buffers and, unlike LibTorch 1.13's optimizers, each group's options.
  void load(torch::serialize::InputArchive& archive) override;

 private:
  std::set<const c10::TensorImpl*> excluded_;
};

/// LibTorch's AdamW (its options, state and checkpoint format: it is a torch::optim::AdamW, and
/// the two read each other's saved state), with the update of a dense fp32 parameter on a CPU
/// with AVX2 and FMA fused into one pass: p, its gradient and the two moments are read once, and
/// all but the gradient written once, where LibTorch's nine ATen operations make as many passes
/// and allocate two temporaries. The arithmetic is ATen's, operation for operation (the two
/// moments' multiply-adds fused, as Debian's GCC-built ATen computes them), so on such a CPU the
/// parameters and moments come out bit-identical to torch::optim::AdamW's (tests/test_optim.cpp).
/// Anything else (CUDA, other dtypes, overlapping or differently strided tensors, amsgrad, a CPU
/// without FMA) takes LibTorch's own operations.
class AdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

/// Whether AdamW::step fuses the update of `p` (with gradient `grad`) on this machine.
bool adamw_fuses(const torch::Tensor& p, const torch::Tensor& grad);

/// lr = base_lr * batch_size / 256 (the reference's scaling rule).
double scaled_lr(double base_lr, int64_t batch_size);

/// The reference schedule, per optimizer step: linear warm-up from 0 to peak_lr over
/// warmup_steps, then cosine decay to end_ratio * peak_lr at total_steps (and after).
struct WarmupCosineSchedule {
  double peak_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  double end_ratio = 0.001;

  /// Throws unless 0 <= warmup_steps <= total_steps, total_steps > 0, peak_lr >= 0 and
  /// 0 <= end_ratio <= 1.
  void validate() const;
  double lr_at(int64_t step) const;
};

/// Sets the learning rate of every parameter group.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

/// The optimizers make_optimizer() builds: lars, adamw, sgd.
enum class OptimizerKind { Lars, AdamW, Sgd };
template <>
const NameTable<OptimizerKind>& name_table<OptimizerKind>();

/// What make_optimizer() builds.
struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::Lars;
  double lr = 0.0;  ///< initial rate (the schedule sets it every step)
  double weight_decay = 1e-6;
  double momentum = 0.9;              ///< LARS and SGD
  double eta = 1e-3;                  ///< LARS
  bool clip_lr = false;               ///< LARS
  double beta1 = 0.9, beta2 = 0.999;  ///< AdamW
};

/// The optimizer named in `config` over `params`. As in the reference (and solo-learn's
/// exclude_bias_n_norm), parameters with one dimension get no weight decay: LARS does this
/// itself; for AdamW and SGD they go into a second group with weight_decay 0. So do those of
/// `no_decay` (EncoderImpl::no_weight_decay: position embeddings, class tokens), which LARS also
/// leaves unadapted. Throws for an unknown name or a negative setting.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<torch::Tensor>& params, const OptimizerConfig& config,
    const std::vector<torch::Tensor>& no_decay = {});

}  // namespace vicreg
