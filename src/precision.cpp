#include "vicreg/precision.h"

#include "vicreg/error.h"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#ifdef VICREG_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cmath>
#include <cstring>

namespace vicreg {

template <>
const NameTable<Precision>& name_table<Precision>() {
  static const NameTable<Precision> t{"--precision",
                                      {{Precision::Auto, "auto"},
                                       {Precision::Fp32, "fp32"},
                                       {Precision::Bf16, "bf16"},
                                       {Precision::Fp16, "fp16"}}};
  return t;
}

template <>
const NameTable<Toggle>& name_table<Toggle>() {
  static const NameTable<Toggle> t{
      "value", {{Toggle::Auto, "auto"}, {Toggle::On, "on"}, {Toggle::Off, "off"}}};
  return t;
}

bool cpu_has_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  // Leaf 7, sub-leaf 1, EAX bit 5: AVX512_BF16; AMX-BF16 below.
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512_bf16 = (a >> 5) & 1u;
  return avx512_bf16 || cpu_has_amx_bf16();
#else
  return false;  // other architectures: not detected; --precision bf16 still works
#endif
}

bool cpu_has_amx_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  return (d >> 22) & 1u;  // leaf 7, sub-leaf 0, EDX bit 22: AMX-BF16
#else
  return false;
#endif
}

namespace {
/// Whether CPUID's vendor string (EBX, EDX, ECX of leaf 0) is `vendor`.
bool cpu_vendor_is(const char (&vendor)[13]) {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, regs[3] = {0, 0, 0};
  if (__get_cpuid(0, &a, &regs[0], &regs[2], &regs[1]) == 0) return false;
  return std::memcmp(regs, vendor, 12) == 0;
#else
  (void)vendor;
  return false;
#endif
}
}  // namespace

bool cpu_is_intel() { return cpu_vendor_is("GenuineIntel"); }

int cpu_amd_family() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!cpu_vendor_is("AuthenticAMD") || __get_cpuid(1, &a, &b, &c, &d) == 0) return 0;
  const int base = static_cast<int>((a >> 8) & 0xFu),
            extended = static_cast<int>((a >> 20) & 0xFFu);
  return base == 0xF ? base + extended : base;
#else
  return 0;
#endif
}

template <>
const NameTable<CpuBf16Conv>& name_table<CpuBf16Conv>() {
  static const NameTable<CpuBf16Conv> t{"--bf16-conv",
                                        {{CpuBf16Conv::Auto, "auto"},
                                         {CpuBf16Conv::Bf16, "bf16"},
                                         {CpuBf16Conv::Fp32Backward, "fp32-backward"},
                                         {CpuBf16Conv::Fp32, "fp32"}}};
  return t;
}

CpuBf16Conv default_cpu_bf16_conv(bool native_bf16, bool amx_bf16, bool intel) {
  if (!native_bf16) return CpuBf16Conv::Fp32;
  if (amx_bf16) return CpuBf16Conv::Fp32Backward;
  return intel ? CpuBf16Conv::Fp32 : CpuBf16Conv::Bf16;
}

CpuBf16Conv default_cpu_bf16_conv() {
  return default_cpu_bf16_conv(cpu_has_native_bf16(), cpu_has_amx_bf16(), cpu_is_intel());
}

namespace {
std::atomic<CpuBf16Conv>& cpu_bf16_conv_state() {
  static std::atomic<CpuBf16Conv> mode{default_cpu_bf16_conv()};
  return mode;
}
}  // namespace

CpuBf16Conv cpu_bf16_conv() { return cpu_bf16_conv_state().load(); }
void set_cpu_bf16_conv(CpuBf16Conv mode) {
  if (mode == CpuBf16Conv::Auto) mode = default_cpu_bf16_conv();
  cpu_bf16_conv_state().store(mode);
}

CpuBf16Conv apply_cpu_bf16_conv(CpuBf16Conv setting, CpuBf16Conv trained) {
  if (setting == CpuBf16Conv::Auto) setting = trained;
  if (setting != CpuBf16Conv::Auto) set_cpu_bf16_conv(setting);
  return cpu_bf16_conv();
}

bool device_has_native_bf16(const torch::Device& device) {
  if (device.is_cpu()) return cpu_has_native_bf16();
#ifdef VICREG_WITH_CUDA
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : at::cuda::current_device();
    return at::cuda::getDeviceProperties(index)->major >= 8;
  }
#endif
  return false;
}

PrecisionChoice resolve_precision(Precision requested, const torch::Device& device,
                                  Precision trained) {
  if (requested == Precision::Auto && trained != Precision::Auto &&
      (trained != Precision::Fp16 || device.is_cuda())) {
    PrecisionChoice c = resolve_precision(trained, device);
    c.reason = "auto: as the run was trained";
    return c;
  }
  PrecisionChoice c;
  const bool native_bf16 = device_has_native_bf16(device);
  if (requested == Precision::Auto) {
    if (native_bf16) {
      c.precision = Precision::Bf16;
      c.reason = device.is_cpu() ? "auto: the CPU has bf16 instructions"
                                 : "auto: the GPU computes bf16 natively";
    } else if (device.is_cuda()) {
      c.precision = Precision::Fp16;
      c.reason = "auto: the GPU has no native bf16";
    } else {
      c.precision = Precision::Fp32;
      c.reason = "auto: the CPU has no bf16 instructions (AVX512-BF16 or AMX)";
    }
    return c;
  }
  c.precision = requested;
  c.reason = "as asked";
  if (requested == Precision::Fp16 && !device.is_cuda()) {
    throw UsageError(
        "precision fp16 needs a CUDA device: LibTorch computes fp16 autocast on GPUs only. On "
        "a CPU use precision bf16 (or auto)",
        {"precision"});
  }
  if (requested == Precision::Bf16 && !native_bf16) {
    c.warning =
        device.is_cpu()
            ? "--precision bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): "
              "it works, emulated, but slower than fp32 (the default step about 3x on a 2-core AMD "
              "EPYC without AVX-512)"
            : "--precision bf16 on a GPU without native bf16: likely slower than fp16";
  }
  return c;
}

torch::ScalarType compute_dtype(Precision precision) {
  switch (precision) {
    case Precision::Bf16:
      return torch::kBFloat16;
    case Precision::Fp16:
      return torch::kHalf;
    default:
      return torch::kFloat;
  }
}

// LibTorch 2.4 replaced the per-device autocast functions (is_cpu_enabled, set_autocast_gpu_dtype,
// ...) by ones that take the device type, and deprecated the old ones.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocast_enabled(c10::DeviceType t) { return at::autocast::is_autocast_enabled(t); }
torch::ScalarType autocast_dtype(c10::DeviceType t) { return at::autocast::get_autocast_dtype(t); }
namespace {
void set_autocast(c10::DeviceType t, bool enabled, torch::ScalarType dtype) {
  at::autocast::set_autocast_enabled(t, enabled);
  at::autocast::set_autocast_dtype(t, dtype);
}
}  // namespace
#else
bool autocast_enabled(c10::DeviceType t) {
  return t == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
torch::ScalarType autocast_dtype(c10::DeviceType t) {
  return t == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype()
                                    : at::autocast::get_autocast_cpu_dtype();
}
namespace {
void set_autocast(c10::DeviceType t, bool enabled, torch::ScalarType dtype) {
  if (t == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
}
}  // namespace
#endif

AutocastGuard::AutocastGuard(const torch::Device& device, Precision precision) {
  if (precision != Precision::Bf16 && precision != Precision::Fp16) return;
  active_ = true;
  cuda_ = device.is_cuda();
  const c10::DeviceType t = cuda_ ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  was_enabled_ = autocast_enabled(t);
  previous_dtype_ = autocast_dtype(t);
  set_autocast(t, true, compute_dtype(precision));
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  // The cast cache holds low-precision copies of the weights for the outermost region only.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast(cuda_ ? c10::DeviceType::CUDA : c10::DeviceType::CPU, was_enabled_, previous_dtype_);
}

bool use_channels_last(Toggle setting, bool convolutional, const torch::Device& device,
                       Precision precision, Toggle trained) {
  if (setting == Toggle::Auto && trained != Toggle::Auto) setting = trained;
  if (!convolutional || setting == Toggle::Off) return false;
  if (setting == Toggle::On || device.is_cuda()) return true;
  // CPUs: on for bf16 where convolutions do not run in autocast's bf16 (precision.h).
  return device.is_cpu() && precision == Precision::Bf16 && cpu_bf16_conv() != CpuBf16Conv::Bf16;
}

Numerics resolve_numerics(const NumericsRequest& r, const torch::Device& device) {
  Numerics n;
  n.precision = resolve_precision(r.precision, device, r.trained_precision);
  if (device.is_cpu() && n.precision.precision == Precision::Bf16 && r.convolutional) {
    n.bf16_conv = apply_cpu_bf16_conv(r.bf16_conv, r.trained_bf16_conv);
  }
  n.channels_last = use_channels_last(r.channels_last, r.convolutional, device,
                                      n.precision.precision, r.trained_channels_last);
  return n;
}

int64_t to_channels_last(torch::nn::Module& module) {
  int64_t n = 0;
  torch::NoGradGuard no_grad;
  const auto convert = [&n](torch::Tensor& t) {
    if (!t.defined() || t.dim() != 4 || t.is_contiguous(at::MemoryFormat::ChannelsLast)) return;
    t.set_data(t.contiguous(at::MemoryFormat::ChannelsLast));
    ++n;
  };
  for (auto& p : module.parameters()) convert(p);
  for (auto& b : module.buffers()) convert(b);
  return n;
}

torch::Tensor channels_last_copy(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "channels_last_copy: expected [B, C, H, W], got ", x.sizes());
  return torch::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast))
      .copy_(x);
}

bool has_channels_last_weights(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) {
    if (p.dim() == 4 && p.size(1) > 1) {
      return p.is_contiguous(at::MemoryFormat::ChannelsLast) && !p.is_contiguous();
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// GradScaler

GradScaler::GradScaler(bool enabled, GradScalerOptions options)
    : enabled_(enabled), options_(options), scale_(options.init_scale) {
  if (!(options_.init_scale > 0) || !(options_.growth_factor > 1) ||
      !(options_.backoff_factor > 0 && options_.backoff_factor < 1) ||
      options_.growth_interval < 1) {
    throw UsageError(
        "GradScaler: needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
        "growth_interval >= 1");
  }
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const {
  return enabled_ ? loss * scale_ : loss;
}

bool GradScaler::unscale(const std::vector<torch::Tensor>& params) const {
  if (!enabled_) return false;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return false;
  torch::NoGradGuard no_grad;
  const auto options = torch::TensorOptions(grads[0].device()).dtype(torch::kFloat);
  const torch::Tensor inv_scale = torch::full({1}, 1.0 / scale_, options);
  torch::Tensor found_inf = torch::zeros({1}, options);
  if (grads[0].is_cuda()) {
    // PyTorch's own fused kernel (CUDA only in this LibTorch): one pass per gradient.
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
  } else {
    std::vector<torch::Tensor> finite;
    finite.reserve(grads.size());
    for (const auto& g : grads) finite.push_back(torch::isfinite(g).all());
    found_inf = torch::logical_not(torch::stack(finite).all()).to(torch::kFloat);
    torch::_foreach_mul_(grads, 1.0 / scale_);
  }
  return found_inf.item<float>() > 0;
}

void GradScaler::update(bool found_inf) {
  if (!enabled_) return;
  if (found_inf) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ >= options_.growth_interval) {
    scale_ *= options_.growth_factor;
    growth_tracker_ = 0;
  }
}

torch::Tensor GradScaler::state() const {
  return torch::tensor({scale_, static_cast<double>(growth_tracker_)}, torch::kDouble);
}

void GradScaler::load_state(const torch::Tensor& state) {
  if (!state.defined() || state.dim() != 1 || state.numel() != 2 ||
      state.scalar_type() != torch::kDouble) {
    throw FormatError("loss scaler state: expected 2 float64 numbers (scale, growth tracker)");
  }
  const double scale = state[0].item<double>(), tracker = state[1].item<double>();
  if (!std::isfinite(scale) || !(scale > 0) || !std::isfinite(tracker) || tracker < 0 ||
      tracker != std::floor(tracker)) {
    throw FormatError("loss scaler state: scale " + std::to_string(scale) + ", growth tracker " +
                      std::to_string(tracker) + " (expected a positive scale and a count)");
  }
  scale_ = scale;
  growth_tracker_ = static_cast<int64_t>(tracker);
}

}  // namespace vicreg
