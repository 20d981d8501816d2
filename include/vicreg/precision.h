// Mixed precision and memory format: which floating-point format the forward passes run in, the
// autocast guard that applies it, dynamic loss scaling for fp16, and channels_last.
//
// The rules (docs/training.md, "Mixed precision"):
//   - Autocast (LibTorch's own: bf16 on CPUs, fp16 or bf16 on CUDA) covers the encoder and
//     expander forward passes only. Convolutions and linear layers run in the low precision;
//     BatchNorm computes its statistics in fp32 (running statistics stay fp32).
//   - The VICReg loss runs outside autocast and accumulates in fp32 whatever its inputs are.
//   - Master weights, gradients and optimizer state stay fp32.
//   - fp16 needs loss scaling (GradScaler, PyTorch's semantics); bf16 has fp32's exponent range
//     and does not.
#pragma once

#include "vicreg/names.h"

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vicreg {

/// auto | fp32 | bf16 | fp16 (--precision).
enum class Precision { Auto, Fp32, Bf16, Fp16 };
template <>
const NameTable<Precision>& name_table<Precision>();

/// auto | on | off, for settings whose auto depends on the machine or the model.
enum class Toggle { Auto, On, Off };
template <>
const NameTable<Toggle>& name_table<Toggle>();

/// Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16).
bool cpu_has_native_bf16();
/// Whether this CPU has AMX-BF16 (Intel Sapphire Rapids and later).
bool cpu_has_amx_bf16();
/// Whether this CPU is Intel's (CPUID vendor GenuineIntel).
bool cpu_is_intel();
/// The CPU family of an AMD CPU (CPUID vendor AuthenticAMD; leaf 1's family, the extended family
/// added: 25 Zen 3 and 4, 26 Zen 5), 0 for other vendors and architectures.
int cpu_amd_family();
/// Whether `device` computes in bf16 natively: the CPU as above; CUDA devices of compute
/// capability 8.0 or later (Ampere, Hopper).
bool device_has_native_bf16(const torch::Device& device);

struct PrecisionChoice {
  Precision precision = Precision::Fp32;  ///< never Auto
  std::string reason;                     ///< why, for the first line of a run
  std::string warning;                    ///< non-empty: print it (a slow or unusual choice)
};

/// Resolves `requested` for `device`. auto: bf16 where the device computes bf16 natively, fp16 on
/// older CUDA devices, fp32 otherwise. Throws UsageError for fp16 on a CPU (LibTorch's CPU
/// autocast has no fp16; it names bf16). bf16 on a CPU without native bf16 works, with a warning.
/// `trained`: the precision a run being resumed or evaluated was trained in (Auto: unknown, or a
/// new run); auto then keeps it, where the device can compute it (fp16 needs CUDA).
PrecisionChoice resolve_precision(Precision requested, const torch::Device& device,
                                  Precision trained = Precision::Auto);

/// The dtype of the forward pass: kBFloat16, kHalf or kFloat.
torch::ScalarType compute_dtype(Precision precision);

/// Whether LibTorch's autocast is on for `device_type` (CPU or CUDA), and the dtype it casts to,
/// whichever LibTorch (2.4 renamed the functions that tell).
bool autocast_enabled(c10::DeviceType device_type);
torch::ScalarType autocast_dtype(c10::DeviceType device_type);

/// Autocast on the device type of `device` in `precision` for the guard's lifetime (fp32: does
/// nothing), restoring the previous autocast state and clearing autocast's cast cache after.
class AutocastGuard {
 public:
  AutocastGuard(const torch::Device& device, Precision precision);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  torch::ScalarType previous_dtype_ = torch::kFloat;
};

/// How the encoders' convolutions (conv2d_forward in kernels/conv.h) run under CPU bf16 autocast.
/// Which is fastest depends on the CPU's bf16 convolution kernels (oneDNN's), not on bf16 support
/// alone: bench/train_bench's BM_ConvBackward, BM_ConvForward and BM_TrainStepBf16Conv measure all
/// three.
enum class CpuBf16Conv {
  Auto,          ///< the CPU's default_cpu_bf16_conv() (a setting; cpu_bf16_conv() never is)
  Bf16,          ///< autocast's: forward and backward in bf16
  Fp32Backward,  ///< bf16 forward; the small-spatial layers' backward in fp32 (kernels/conv.h)
  Fp32,          ///< forward and backward in fp32 (autocast skips them); linear layers stay bf16
};
template <>
const NameTable<CpuBf16Conv>& name_table<CpuBf16Conv>();

/// The mode measured fastest for a CPU (docs/decisions.md has the numbers): Fp32Backward with
/// AMX-BF16; Fp32 on Intel CPUs with AVX512-BF16 but no AMX, whose bf16 convolutions were slower
/// than fp32 ones at every layer of the default ConvNet; Bf16 elsewhere with bf16 instructions
/// (AMD); Fp32 on CPUs without them, where bf16 is emulated and autocast's convolutions were
/// several times slower.
CpuBf16Conv default_cpu_bf16_conv(bool native_bf16, bool amx_bf16, bool intel);
/// default_cpu_bf16_conv() of this CPU.
CpuBf16Conv default_cpu_bf16_conv();
/// The process-wide mode: default_cpu_bf16_conv() of this CPU unless set (`--bf16-conv`, a
/// resumed or evaluated run's recorded mode, tests, benchmarks). Never Auto.
CpuBf16Conv cpu_bf16_conv();
/// Sets the process-wide mode; Auto goes back to the CPU's default.
void set_cpu_bf16_conv(CpuBf16Conv mode);
/// The mode for a run's setting: `setting` unless Auto, else `trained` (the mode a run being
/// resumed or evaluated recorded; Auto: none) unless Auto, else the process-wide one. Sets it
/// process-wide when it is not Auto and returns what cpu_bf16_conv() then is.
CpuBf16Conv apply_cpu_bf16_conv(CpuBf16Conv setting, CpuBf16Conv trained = CpuBf16Conv::Auto);

/// Whether to use channels_last for a model, by rule (a new training run on a CPU measures it
/// instead: Trainer, run/trainer.h): never for models without convolutions; auto: on CUDA
/// devices (tensor cores take NHWC; PyTorch's own advice for mixed precision) and for bf16 on
/// CPUs whose cpu_bf16_conv() is not Bf16, off on other CPUs, where it was measured no faster
/// (docs/decisions.md).
/// `trained`: the choice a run being resumed or evaluated recorded (Auto: none, or a new run);
/// auto keeps it, since the memory format changes the last bits of every convolution.
bool use_channels_last(Toggle setting, bool convolutional, const torch::Device& device,
                       Precision precision, Toggle trained = Toggle::Auto);

/// What a model's numerics are resolved from: the settings asked for, those recorded by the run
/// being resumed or evaluated (Auto: none, or a new run), and whether its backbones are
/// convolutional on image data (models/registry.h's traits).
struct NumericsRequest {
  Precision precision = Precision::Auto, trained_precision = Precision::Auto;
  Toggle channels_last = Toggle::Auto, trained_channels_last = Toggle::Auto;
  CpuBf16Conv bf16_conv = CpuBf16Conv::Auto, trained_bf16_conv = CpuBf16Conv::Auto;
  bool convolutional = false;
};
struct Numerics {
  PrecisionChoice precision;
  bool channels_last = false;
  /// The CPU bf16 convolution mode now set process-wide (apply_cpu_bf16_conv); Auto where it was
  /// left alone (not bf16 on a CPU, or no convolutions).
  CpuBf16Conv bf16_conv = CpuBf16Conv::Auto;
};
/// The one resolution of precision, CPU bf16 convolution mode and memory format, for training,
/// evaluation and the report: resolve_precision, then apply_cpu_bf16_conv (bf16 on a CPU with
/// convolutions), then use_channels_last, whose rule depends on the mode just set.
Numerics resolve_numerics(const NumericsRequest& request, const torch::Device& device);

/// Puts every 4-D parameter and buffer of `module` (convolution weights) in channels_last memory
/// format, in place (the tensors keep their identity: optimizers built before still hold them).
/// Returns how many it converted.
int64_t to_channels_last(torch::nn::Module& module);
/// A copy of `x` ([B, C, H, W]) in channels_last memory format whose strides say so, as the
/// loader's channels_last batches have them. x.contiguous(ChannelsLast) is not that for C = 1:
/// contiguous strides already count as channels_last there and are kept, and a convolution then
/// takes the input as contiguous (a slower step, docs/decisions.md).
torch::Tensor channels_last_copy(const torch::Tensor& x);
/// Whether `module`'s first 4-D parameter with more than one input channel is in channels_last
/// memory format (false when it has none): inputs are then best given in channels_last too.
bool has_channels_last_weights(const torch::nn::Module& module);

// ---------------------------------------------------------------------------------------------
// Dynamic loss scaling

/// torch.cuda.amp.GradScaler's defaults.
struct GradScalerOptions {
  double init_scale = 65536.0;  ///< 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;  ///< good steps in a row before the scale grows
};

/// Dynamic loss scaling with PyTorch's GradScaler semantics: the loss is multiplied by the scale
/// before backward; the gradients are divided by it before the optimizer sees them (so that
/// LARS's trust ratio, weight decay and clipping see true gradients); a step whose gradients hold
/// an inf or NaN is skipped and the scale multiplied by backoff_factor; after growth_interval
/// good steps in a row the scale is multiplied by growth_factor.
class GradScaler {
 public:
  explicit GradScaler(bool enabled = false, GradScalerOptions options = {});

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }

  /// loss * scale (the loss itself when disabled).
  torch::Tensor scale(const torch::Tensor& loss) const;
  /// Divides the gradient of every parameter in `params` by the scale, in place, and returns
  /// whether any of them holds an inf or NaN. Disabled: checks nothing, returns false.
  bool unscale(const std::vector<torch::Tensor>& params) const;
  /// After a step: back off when `found_inf`, else count a good step and grow after
  /// growth_interval of them.
  void update(bool found_inf);

  /// For checkpoints: [scale, growth_tracker] as a float64 tensor.
  torch::Tensor state() const;
  /// Throws FormatError for a state that is not [2] finite numbers with scale > 0.
  void load_state(const torch::Tensor& state);

 private:
  bool enabled_;
  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
};

}  // namespace vicreg
