// The CPU bf16 convolution kernels and global average pooling (kernels/conv.h).
#include "vicreg/kernels/conv.h"

#include "vicreg/precision.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/version.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

namespace vicreg {

namespace {

/// How ConvBf16 computes its backward pass.
enum class ConvBf16Backward : int64_t {
  /// In fp32 on the same bf16-rounded input and weight (faster for layers with few output pixels
  /// and many channels on AMX CPUs, docs/decisions.md): the exact fp32 gradients of the bf16
  /// forward pass's inputs.
  Fp32,
  /// oneDNN's bf16 input gradient, conv2d_patches_weight_grad's bf16 weight gradient.
  PatchesWeightGrad,
};

/// A convolution (no bias, dilation 1, one group) whose forward pass is autocast's bf16 one and
/// whose backward pass is one of ConvBf16Backward's; gradients in the input's and weight's dtypes.
class ConvBf16 : public torch::autograd::Function<ConvBf16> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, int64_t stride, int64_t padding,
                               ConvBf16Backward backward) {
    const torch::Tensor xb = x.to(torch::kBFloat16), wb = weight.to(torch::kBFloat16);
    ctx->save_for_backward({xb, wb});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["backward"] = static_cast<int64_t>(backward);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return at::convolution(xb, wb, c10::nullopt, {stride, stride}, {padding, padding}, {1, 1},
                           false, {0, 0}, 1);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t stride = ctx->saved_data["stride"].toInt();
    const int64_t padding = ctx->saved_data["padding"].toInt();
    const auto x_dtype = static_cast<torch::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<torch::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const bool fp32 = static_cast<ConvBf16Backward>(ctx->saved_data["backward"].toInt()) ==
                      ConvBf16Backward::Fp32;
    const bool gw_by_patches = !fp32 && ctx->needs_input_grad(1);
    torch::Tensor x = saved[0], w = saved[1], g = grads[0];
    if (fp32) {
      x = x.to(torch::kFloat), w = w.to(torch::kFloat), g = g.to(torch::kFloat);
    } else {
      g = g.to(torch::kBFloat16).contiguous(at::MemoryFormat::ChannelsLast);
    }
    auto [gx, gw, gb] = at::convolution_backward(
        g, x, w, c10::nullopt, {stride, stride}, {padding, padding}, {1, 1}, false, {0, 0}, 1,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1) && !gw_by_patches, false});
    if (gw_by_patches) gw = conv2d_patches_weight_grad(g, x, w.size(2), stride, padding);
    if (gx.defined()) gx = gx.to(x_dtype);
    if (gw.defined()) gw = gw.to(w_dtype);
    return {gx, gw, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

/// global_avg_pool's autograd function: the gradient is written in the input's memory format.
class GlobalAvgPool : public torch::autograd::Function<GlobalAvgPool> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x) {
    ctx->saved_data["sizes"] = x.sizes();
    ctx->saved_data["channels_last"] =
        x.suggest_memory_format() == torch::MemoryFormat::ChannelsLast;
    return x.mean({2, 3});
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const std::vector<int64_t> sizes = ctx->saved_data["sizes"].toIntVector();
    const auto format = ctx->saved_data["channels_last"].toBool()
                            ? torch::MemoryFormat::ChannelsLast
                            : torch::MemoryFormat::Contiguous;
    const torch::Tensor& g = grads[0];
    torch::Tensor gx = torch::empty(sizes, g.options().memory_format(format));
    gx.copy_((g / static_cast<double>(sizes[2] * sizes[3]))
                 .view({sizes[0], sizes[1], 1, 1})
                 .expand(sizes));
    return {gx};
  }
};

/// A conv's padding when it is numbers (not kValid or kSame), or nullptr. The options hold it in a
/// std::variant in LibTorch 2.x, in c10's own variant in 1.13.
const torch::ExpandingArray<2>* explicit_padding(const torch::nn::detail::ConvNdOptions<2>& o) {
#if TORCH_VERSION_MAJOR >= 2
  return std::get_if<torch::ExpandingArray<2>>(&o.padding());
#else
  return c10::get_if<torch::ExpandingArray<2>>(&o.padding());
#endif
}

bool under_cpu_bf16_autocast(const torch::Tensor& x) {
  return x.device().type() == torch::kCPU && autocast_enabled(torch::kCPU) &&
         autocast_dtype(torch::kCPU) == torch::kBFloat16;
}

}  // namespace

bool conv2d_backward_in_fp32(const torch::nn::Conv2dImpl& c, const torch::Tensor& x) {
  if (cpu_bf16_conv() != CpuBf16Conv::Fp32Backward || !torch::GradMode::is_enabled() ||
      !c.weight.requires_grad() || x.dim() != 4 || !under_cpu_bf16_autocast(x)) {
    return false;
  }
  const auto& o = c.options;
  const auto* pad = explicit_padding(o);
  if (o.groups() != 1 || o.bias() || pad == nullptr || (**pad)[0] != (**pad)[1] ||
      (*o.dilation())[0] != 1 || (*o.dilation())[1] != 1 || (*o.stride())[0] != (*o.stride())[1]) {
    return false;
  }
  const int64_t s = (*o.stride())[0], p = (**pad)[0];
  const int64_t out_h = (x.size(2) + 2 * p - (*o.kernel_size())[0]) / s + 1;
  const int64_t out_w = (x.size(3) + 2 * p - (*o.kernel_size())[1]) / s + 1;
  return out_h * out_w <= kFp32BackwardMaxPixels && o.in_channels() >= kFp32BackwardMinChannels;
}

torch::Tensor conv2d_patches_weight_grad(const torch::Tensor& grad_out, const torch::Tensor& x,
                                         int64_t kernel, int64_t stride, int64_t padding) {
  TORCH_CHECK(x.dim() == 4 && grad_out.dim() == 4 && grad_out.size(0) == x.size(0),
              "conv2d_patches_weight_grad expects x [N, C, H, W] and grad_out [N, C_out, Ho, Wo], "
              "got ",
              x.sizes(), " and ", grad_out.sizes());
  TORCH_CHECK(kernel >= 1 && stride >= 1 && padding >= 0,
              "conv2d_patches_weight_grad: kernel and stride must be >= 1 and padding >= 0, got ",
              kernel, ", ", stride, ", ", padding);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t c_out = grad_out.size(1), ho = grad_out.size(2), wo = grad_out.size(3);
  TORCH_CHECK(h + 2 * padding >= kernel && w + 2 * padding >= kernel &&
                  ho == (h + 2 * padding - kernel) / stride + 1 &&
                  wo == (w + 2 * padding - kernel) / stride + 1,
              "conv2d_patches_weight_grad: grad_out ", grad_out.sizes(), " is not the output of a ",
              kernel, "x", kernel, " convolution with stride ", stride, " and padding ", padding,
              " of x ", x.sizes());
  constexpr auto kCl = at::MemoryFormat::ChannelsLast;
  // Row (b, oh, ow) of the patches holds x[b, :, s oh - p + i, s ow - p + j] for i, j < k (zero
  // outside x), in the channels_last weight's order (i, j, channel): for each i, the k C values
  // are one run of x's channels_last memory, copied whole. (Padding x and copying a strided view
  // of it, in ATen, took twice as long.)
  const torch::Tensor xc = x.contiguous(kCl);
  torch::Tensor patches = torch::empty({n * ho * wo, kernel * kernel * c}, x.options());
  const auto es = static_cast<int64_t>(x.element_size());
  const char* src = static_cast<const char*>(xc.data_ptr());
  char* dst = static_cast<char*>(patches.data_ptr());
  const int64_t run = kernel * c * es;  // bytes of one (i, all j, all channels) run
  at::parallel_for(0, n * ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / ho, oh = r % ho;
      for (int64_t ow = 0; ow < wo; ++ow) {
        char* out = dst + (r * wo + ow) * kernel * run;
        const int64_t iw0 = ow * stride - padding;
        const int64_t j0 = std::min(kernel, std::max<int64_t>(0, -iw0));
        const int64_t j1 = std::max(j0, std::min(kernel, w - iw0));
        for (int64_t i = 0; i < kernel; ++i, out += run) {
          const int64_t ih = oh * stride - padding + i;
          if (ih < 0 || ih >= h || j1 == j0) {
            std::memset(out, 0, static_cast<size_t>(run));
            continue;
          }
          if (j0 > 0) std::memset(out, 0, static_cast<size_t>(j0 * c * es));
          std::memcpy(out + j0 * c * es, src + ((b * h + ih) * w + iw0 + j0) * c * es,
                      static_cast<size_t>((j1 - j0) * c * es));
          if (j1 < kernel) {
            std::memset(out + j1 * c * es, 0, static_cast<size_t>((kernel - j1) * c * es));
          }
        }
      }
    }
  });
  const torch::Tensor g = grad_out.to(x.scalar_type())
                              .contiguous(kCl)
                              .permute({0, 2, 3, 1})
                              .reshape({n * ho * wo, c_out});
  // Accumulated in fp32: oneDNN's bf16 product does, ATen's own bf16 product does not (errors of
  // several per cent), so where ATen would not hand it to oneDNN the product runs in fp32: on a
  // CPU without bf16 instructions, and for products of at most 16^3 multiply-adds (LibTorch
  // 1.13's threshold for oneDNN; small layers of small batches).
  const bool small = c_out * n * ho * wo * kernel * kernel * c <= 16 * 16 * 16;
  const bool widen = x.scalar_type() == torch::kBFloat16 && (!cpu_has_native_bf16() || small);
  const torch::Tensor gw =
      widen ? g.to(torch::kFloat).t().mm(patches.to(torch::kFloat)).to(torch::kBFloat16)
            : g.t().mm(patches);
  return gw.view({c_out, kernel, kernel, c}).permute({0, 3, 1, 2});
}

bool conv2d_patches_weight_grad_applies(const torch::nn::Conv2dImpl& c, const torch::Tensor& x) {
  if (cpu_bf16_conv() != CpuBf16Conv::Bf16 || !torch::GradMode::is_enabled() ||
      !c.weight.requires_grad() || x.dim() != 4 || !under_cpu_bf16_autocast(x) ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return false;
  }
  const auto& o = c.options;
  const auto* pad = explicit_padding(o);
  if (o.groups() != 1 || o.bias() || pad == nullptr || (**pad)[0] != (**pad)[1] ||
      (*o.dilation())[0] != 1 || (*o.dilation())[1] != 1 ||
      (*o.kernel_size())[0] != (*o.kernel_size())[1] || (*o.stride())[0] != (*o.stride())[1]) {
    return false;
  }
  const int64_t k = (*o.kernel_size())[0], s = (*o.stride())[0], p = (**pad)[0];
  const int64_t out_h = (x.size(2) + 2 * p - k) / s + 1, out_w = (x.size(3) + 2 * p - k) / s + 1;
  if (s == 1) {
    return patches_weight_grad_at_stride1() && out_h * out_w <= kPatchesWeightGradStride1MaxPixels;
  }
  return k >= 2 && out_h * out_w <= kPatchesWeightGradMaxPixels;
}

namespace {
std::atomic<bool>& patches_at_stride1_state() {
  static std::atomic<bool> on{default_patches_weight_grad_at_stride1(cpu_amd_family())};
  return on;
}
}  // namespace

bool default_patches_weight_grad_at_stride1(int amd_family) { return amd_family >= 26; }
bool patches_weight_grad_at_stride1() { return patches_at_stride1_state().load(); }
void set_patches_weight_grad_at_stride1(bool on) { patches_at_stride1_state().store(on); }

bool conv2d_in_fp32(const torch::nn::Conv2dImpl& c, const torch::Tensor& x) {
  return cpu_bf16_conv() == CpuBf16Conv::Fp32 && c.weight.scalar_type() == torch::kFloat &&
         under_cpu_bf16_autocast(x);
}

torch::Tensor conv2d_forward(torch::nn::Conv2dImpl& c, const torch::Tensor& x) {
  if (conv2d_in_fp32(c, x)) {
    // Autocast would cast the input and weight to bf16: outside it, the convolution is fp32's.
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    return c.forward(x.to(torch::kFloat));
  }
  const bool patches = conv2d_patches_weight_grad_applies(c, x);
  if (!patches && !conv2d_backward_in_fp32(c, x)) return c.forward(x);
  return ConvBf16::apply(x, c.weight, (*c.options.stride())[0], (**explicit_padding(c.options))[0],
                         patches ? ConvBf16Backward::PatchesWeightGrad : ConvBf16Backward::Fp32);
}

torch::Tensor global_avg_pool(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "global_avg_pool expects [N, C, H, W], got ", x.sizes());
  return GlobalAvgPool::apply(x);
}

}  // namespace vicreg
