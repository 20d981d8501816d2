#include "vicreg/models.h"

#include "vicreg/distributed.h"
#include "vicreg/error.h"
#include "vicreg/precision.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>
#include <torch/version.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <ostream>
#include <sstream>
#include <stdexcept>

namespace vicreg {

namespace F = torch::nn::functional;

std::vector<int64_t> parse_layer_spec(const std::string& spec) {
  std::vector<int64_t> sizes;
  const auto fail = [&spec]() {
    throw UsageError("invalid layer spec '" + spec +
                     "': expected positive integers joined by '-', e.g. 8192-8192-8192");
  };
  if (spec.empty()) fail();
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t end = std::min(spec.find('-', start), spec.size());
    const std::string part = spec.substr(start, end - start);
    if (part.empty() || part.size() > 9 ||
        !std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail();
    }
    const int64_t size = std::stoll(part);
    if (size <= 0) fail();
    sizes.push_back(size);
    start = end + 1;
  }
  return sizes;
}

namespace {

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

/// How ConvBf16 computes its backward pass.
enum class ConvBf16Backward : int64_t {
  /// In fp32 on the same bf16-rounded input and weight: for layers with few output pixels and
  /// many channels, oneDNN's bf16 backward kernels are slower than its fp32 ones on AMX CPUs
  /// (BM_ConvBackward on a 2-core AMX Xeon, batch 256: 256->256 channels at 4x4 90 ms in bf16 vs
  /// 64 in fp32; 128->256 at stride 2 from 7x7 75 vs 36), while the forward pass is faster in bf16
  /// at every shape. The gradients are the exact fp32 gradients of the bf16 forward pass's inputs.
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

/// torchvision's ResNet initialisation: Kaiming normal (fan_out, relu) for convs, BN (1, 0).
void init_conv_bn(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* b = m->as<BatchNorm>()) {
      torch::nn::init::ones_(b->weight);
      torch::nn::init::zeros_(b->bias);
    }
  }
}

/// A Sequential's forward pass, with its convolutions through conv2d_forward.
torch::Tensor forward_layers(torch::nn::Sequential& layers, torch::Tensor x) {
  for (auto& m : *layers) {
    if (auto* c = m.ptr()->as<torch::nn::Conv2dImpl>()) {
      x = conv2d_forward(*c, x);
    } else {
      x = m.forward(x);
    }
  }
  return x;
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

// ---------------------------------------------------------------------------------------------
// BatchNorm

BatchNormImpl::BatchNormImpl(const BatchNormOptions& options_) : options(options_) { reset(); }

void BatchNormImpl::reset() {
  TORCH_CHECK(options.num_features() >= 1, "BatchNorm: num_features must be >= 1, got ",
              options.num_features());
  const int64_t c = options.num_features();
  weight = register_parameter("weight", torch::ones({c}));
  bias = register_parameter("bias", torch::zeros({c}));
  running_mean = register_buffer("running_mean", torch::zeros({c}));
  running_var = register_buffer("running_var", torch::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
}

void BatchNormImpl::pretty_print(std::ostream& stream) const {
  stream << "vicreg::BatchNorm(" << options.num_features() << ", eps=" << options.eps()
         << ", momentum=" << options.momentum() << (sync_group ? ", synchronised" : "") << ")";
}

torch::Tensor BatchNormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2 && x.size(1) == options.num_features(), "BatchNorm(",
              options.num_features(), ") expects [N, ", options.num_features(),
              ", ...] inputs, got ", x.sizes());
  if (is_training()) {
    torch::NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
  if (is_training() && sync_group && sync_group->world_size() > 1) {
    return sync_batch_norm(x, weight, bias, running_mean, running_var, options.momentum(),
                           options.eps(), sync_group);
  }
  TORCH_CHECK(!is_training() || x.numel() / x.size(1) > 1,
              "BatchNorm: expected more than 1 value per channel when training, got input of "
              "size ",
              x.sizes(), " (use a batch of at least 2)");
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(),
                           options.momentum(), options.eps(),
                           at::globalContext().userEnabledCuDNN());
}

int64_t convert_sync_batchnorm(torch::nn::Module& module, std::shared_ptr<ProcessGroup> group) {
  int64_t n = 0;
  for (auto& m : module.modules(/*include_self=*/true)) {
    if (auto* bn = m->as<BatchNorm>()) {
      bn->sync_group = group;
      ++n;
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// ResNet

ResidualBlockImpl::ResidualBlockImpl(int64_t in_planes, int64_t planes, int64_t stride,
                                     bool bottleneck)
    : bottleneck_(bottleneck) {
  const int64_t expansion = bottleneck ? 4 : 1;
  if (bottleneck) {
    conv1 = register_module("conv1", conv(in_planes, planes, 1, 1));
    bn1 = register_module("bn1", BatchNorm(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, stride));
    bn2 = register_module("bn2", BatchNorm(planes));
    conv3 = register_module("conv3", conv(planes, planes * expansion, 1, 1));
    bn3 = register_module("bn3", BatchNorm(planes * expansion));
  } else {
    conv1 = register_module("conv1", conv(in_planes, planes, 3, stride));
    bn1 = register_module("bn1", BatchNorm(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, 1));
    bn2 = register_module("bn2", BatchNorm(planes));
  }
  if (stride != 1 || in_planes != planes * expansion) {
    downsample = register_module(
        "downsample", torch::nn::Sequential(conv(in_planes, planes * expansion, 1, stride),
                                            BatchNorm(planes * expansion)));
  }
}

torch::Tensor ResidualBlockImpl::forward(torch::Tensor x) {
  torch::Tensor out = torch::relu(bn1(conv2d_forward(*conv1, x)));
  if (bottleneck_) {
    out = torch::relu(bn2(conv2d_forward(*conv2, out)));
    out = bn3(conv2d_forward(*conv3, out));
  } else {
    out = bn2(conv2d_forward(*conv2, out));
  }
  const torch::Tensor identity = downsample ? forward_layers(downsample, x) : x;
  return torch::relu(out + identity);
}

namespace {

/// Blocks per stage of each ResNet depth (BasicBlock below 50, Bottleneck from 50).
const std::map<int64_t, std::vector<int64_t>>& resnet_blocks() {
  static const std::map<int64_t, std::vector<int64_t>> t = {
      {18, {2, 2, 2, 2}},   {34, {3, 4, 6, 3}},   {50, {3, 4, 6, 3}},
      {101, {3, 4, 23, 3}}, {152, {3, 8, 36, 3}}, {200, {3, 24, 36, 3}}};
  return t;
}

}  // namespace

std::optional<int64_t> resnet_depth(bool bottleneck, const std::vector<int64_t>& blocks) {
  for (const auto& [depth, b] : resnet_blocks()) {
    if ((depth >= 50) == bottleneck && b == blocks) return depth;
  }
  return std::nullopt;
}

ResNetImpl::ResNetImpl(const ResNetOptions& options_) : options(options_) {
  const int64_t depth = options.depth(), widen = options.widen();
  const auto found = resnet_blocks().find(depth);
  if (found == resnet_blocks().end()) {
    throw UsageError("ResNet depth " + std::to_string(depth) +
                     " is not supported: use 18, 34, 50, 101, 152 or 200");
  }
  TORCH_CHECK(widen >= 1 && widen <= 16, "ResNet: widen must be in [1, 16], got ", widen);
  TORCH_CHECK(options.in_channels() >= 1, "ResNet: in_channels must be >= 1, got ",
              options.in_channels());
  const bool bottleneck = depth >= 50;
  const std::vector<int64_t>& blocks = found->second;
  const int64_t expansion = bottleneck ? 4 : 1, stem = 64 * widen;

  conv1 = register_module("conv1", options.small_stem() ? conv(options.in_channels(), stem, 3, 1)
                                                        : conv(options.in_channels(), stem, 7, 2));
  bn1 = register_module("bn1", BatchNorm(stem));
  int64_t in_planes = stem;
  torch::nn::Sequential* layers[] = {&layer1, &layer2, &layer3, &layer4};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t planes = stem << stage;
    torch::nn::Sequential layer;
    for (int64_t b = 0; b < blocks[static_cast<size_t>(stage)]; ++b) {
      const int64_t stride = (b == 0 && stage > 0) ? 2 : 1;
      layer->push_back(ResidualBlock(in_planes, planes, stride, bottleneck));
      in_planes = planes * expansion;
    }
    *layers[stage] = register_module("layer" + std::to_string(stage + 1), layer);
  }
  output_dim_ = in_planes;
  init_conv_bn(*this);
  if (options.zero_init_residual()) {
    torch::NoGradGuard no_grad;
    for (auto& m : modules(false)) {
      if (auto* block = m->as<ResidualBlockImpl>()) block->last_bn()->weight.zero_();
    }
  }
}

torch::Tensor ResNetImpl::forward(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels(), "ResNet expects [N, ",
              options.in_channels(), ", H, W] images, got ", x.sizes());
  x = torch::relu(bn1(conv2d_forward(*conv1, x)));
  if (!options.small_stem()) x = F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(2).padding(1));
  x = layer4->forward(layer3->forward(layer2->forward(layer1->forward(x))));
  return global_avg_pool(x);
}

// ---------------------------------------------------------------------------------------------
// ConvNet

ConvNetImpl::ConvNetImpl(const ConvNetOptions& options_) : options(options_) {
  TORCH_CHECK(options.in_channels() >= 1 && options.width() >= 1 && options.stages() >= 1 &&
                  options.convs_per_stage() >= 1,
              "ConvNet: in_channels, width, stages and convs_per_stage must be >= 1");
  int64_t in = options.in_channels();
  for (int64_t s = 0; s < options.stages(); ++s) {
    const int64_t out = options.width() << s;
    torch::nn::Sequential stage;
    for (int64_t c = 0; c < options.convs_per_stage(); ++c) {
      stage->push_back(conv(c == 0 ? in : out, out, 3, (c == 0 && s > 0) ? 2 : 1));
      stage->push_back(BatchNorm(out));
      stage->push_back(torch::nn::ReLU(torch::nn::ReLUOptions(/*inplace=*/true)));
    }
    stages.push_back(register_module("stage" + std::to_string(s + 1), stage));
    in = out;
  }
  TORCH_CHECK(options.final_conv() >= 0, "ConvNet: final_conv must be >= 0");
  if (options.final_conv() > 0) {
    final = register_module(
        "final",
        torch::nn::Sequential(conv(in, options.final_conv(), 1, 1), BatchNorm(options.final_conv()),
                              torch::nn::ReLU(torch::nn::ReLUOptions(/*inplace=*/true))));
    in = options.final_conv();
  }
  output_dim_ = in;
  init_conv_bn(*this);
}

torch::Tensor ConvNetImpl::forward(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels(), "ConvNet expects [N, ",
              options.in_channels(), ", H, W] images, got ", x.sizes());
  for (auto& stage : stages) x = forward_layers(stage, x);
  if (final) x = forward_layers(final, x);
  return global_avg_pool(x);
}

// ---------------------------------------------------------------------------------------------
// MLP

MLPImpl::MLPImpl(const MLPOptions& options_) : options(options_) {
  TORCH_CHECK(options.in_features() >= 1, "MLP encoder: in_features must be >= 1, got ",
              options.in_features());
  layers = torch::nn::Sequential();
  int64_t in = options.in_features();
  for (const int64_t size : parse_layer_spec(options.hidden())) {
    layers->push_back(torch::nn::Linear(in, size));
    layers->push_back(BatchNorm(size));
    layers->push_back(torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    in = size;
  }
  register_module("layers", layers);
  output_dim_ = in;
}

torch::Tensor MLPImpl::forward(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.in_features(), "MLP encoder expects [N, ",
              options.in_features(), "] vectors, got ", x.sizes());
  return layers->forward(x);
}

// ---------------------------------------------------------------------------------------------
// Expander

ExpanderImpl::ExpanderImpl(int64_t in_features, const std::string& spec) {
  TORCH_CHECK(in_features >= 1, "Expander: in_features must be >= 1, got ", in_features);
  const std::vector<int64_t> sizes = parse_layer_spec(spec);
  int64_t in = in_features;
  const auto add = [this](auto module) {
    register_module(std::to_string(layers_.size()), module.ptr());
    layers_.emplace_back(module);
  };
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    add(torch::nn::Linear(in, sizes[i]));
    add(BatchNorm(sizes[i]));
    add(torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    in = sizes[i];
  }
  add(torch::nn::Linear(torch::nn::LinearOptions(in, sizes.back()).bias(false)));
  output_dim_ = sizes.back();
}

torch::Tensor ExpanderImpl::forward(torch::Tensor y) {
  for (auto& layer : layers_) y = layer.forward(y);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Factory and the two-branch model

template <>
const NameTable<Arch>& name_table<Arch>() {
  static const NameTable<Arch> t{"--arch",
                                 {{Arch::ResNet18, "resnet18"},
                                  {Arch::ResNet34, "resnet34"},
                                  {Arch::ResNet50, "resnet50"},
                                  {Arch::ResNet101, "resnet101"},
                                  {Arch::ResNet152, "resnet152"},
                                  {Arch::ResNet200, "resnet200"},
                                  {Arch::ResNet50x2, "resnet50x2"},
                                  {Arch::ResNet50x4, "resnet50x4"},
                                  {Arch::ResNet50x5, "resnet50x5"},
                                  {Arch::ResNet200x2, "resnet200x2"},
                                  {Arch::ConvNet, "convnet"},
                                  {Arch::Mlp, "mlp"}}};
  return t;
}

namespace {

struct ResNetEntry {
  Arch arch;
  ResNetShape shape;
};
const std::vector<ResNetEntry>& resnet_table() {
  static const std::vector<ResNetEntry> t = {
      {Arch::ResNet18, {18, 1}},    {Arch::ResNet34, {34, 1}},   {Arch::ResNet50, {50, 1}},
      {Arch::ResNet101, {101, 1}},  {Arch::ResNet152, {152, 1}}, {Arch::ResNet200, {200, 1}},
      {Arch::ResNet50x2, {50, 2}},  {Arch::ResNet50x4, {50, 4}}, {Arch::ResNet50x5, {50, 5}},
      {Arch::ResNet200x2, {200, 2}}};
  return t;
}

}  // namespace

std::optional<ResNetShape> resnet_shape(Arch arch) {
  for (const auto& e : resnet_table()) {
    if (e.arch == arch) return e.shape;
  }
  return std::nullopt;
}

std::optional<Arch> resnet_arch(int64_t depth, int64_t widen) {
  for (const auto& e : resnet_table()) {
    if (e.shape.depth == depth && e.shape.widen == widen) return e.arch;
  }
  return std::nullopt;
}

Encoder make_encoder(const EncoderConfig& config) {
  if (config.arch == Arch::Mlp) {
    if (config.in_features < 1) {
      throw UsageError("--arch mlp needs vector data (--dataset npy): no input size");
    }
    return std::make_shared<MLPImpl>(MLPOptions(config.in_features, config.encoder_mlp));
  }
  if (config.in_features > 0 && config.image_size <= 0) {
    throw UsageError("--arch " + to_string(config.arch) +
                     " needs images; for vector data (.npy) use --arch mlp");
  }
  if (config.in_channels < 1 || config.in_channels > 4096) {
    throw UsageError("--arch " + to_string(config.arch) + ": images of " +
                     std::to_string(config.in_channels) + " channels (1 to 4,096 are possible)");
  }
  if (config.arch == Arch::ConvNet) {
    if (config.stages < 1 || config.stages > 8) {
      throw UsageError("--arch convnet: --stages must be in [1, 8], got " +
                       std::to_string(config.stages));
    }
    const int64_t min_side = int64_t{1} << (config.stages - 1);
    if (config.image_size < min_side) {
      throw UsageError("--arch convnet: " + std::to_string(config.stages) +
                       " stages need images of at least " + std::to_string(min_side) + " px, got " +
                       std::to_string(config.image_size));
    }
    if (config.width < 1 || config.width > 4096) {
      throw UsageError("--arch convnet: --width must be in [1, 4096], got " +
                       std::to_string(config.width));
    }
    if (config.final_conv < 0 || config.final_conv > kMaxFinalConv) {
      throw UsageError("--arch convnet: --final-conv must be in [0, " +
                       std::to_string(kMaxFinalConv) + "], got " +
                       std::to_string(config.final_conv));
    }
    return std::make_shared<ConvNetImpl>(ConvNetOptions()
                                             .in_channels(config.in_channels)
                                             .width(config.width)
                                             .stages(config.stages)
                                             .final_conv(config.final_conv));
  }
  const ResNetShape shape = resnet_shape(config.arch).value();
  return std::make_shared<ResNetImpl>(ResNetOptions()
                                          .depth(shape.depth)
                                          .widen(shape.widen)
                                          .in_channels(config.in_channels)
                                          .small_stem(config.image_size <= 64)
                                          .zero_init_residual(config.zero_init_residual));
}

double encoder_parameter_count(const EncoderConfig& config) {
  // What make_encoder builds, counted without building it (doubles: no overflow on any input).
  const auto conv_bn = [](double in, double out, double kernel) {
    return in * out * kernel * kernel + 2 * out;
  };
  double n = 0;
  if (config.arch == Arch::Mlp) {
    double in = static_cast<double>(config.in_features);
    for (const int64_t size : parse_layer_spec(config.encoder_mlp)) {
      n += in * size + size + 2.0 * size;  // Linear with bias, BatchNorm
      in = static_cast<double>(size);
    }
    return n;
  }
  if (config.arch == Arch::ConvNet) {
    const int64_t per_stage = ConvNetOptions().convs_per_stage();
    double in = static_cast<double>(config.in_channels);
    for (int64_t s = 0; s < std::min<int64_t>(config.stages, 62); ++s) {
      const double out = std::ldexp(static_cast<double>(config.width), static_cast<int>(s));
      for (int64_t c = 0; c < per_stage; ++c) n += conv_bn(c == 0 ? in : out, out, 3);
      in = out;
    }
    if (config.final_conv > 0) n += conv_bn(in, static_cast<double>(config.final_conv), 1);
    return n;
  }
  const ResNetShape shape = resnet_shape(config.arch).value();
  const bool bottleneck = shape.depth >= 50;
  const double expansion = bottleneck ? 4 : 1, stem = 64.0 * shape.widen;
  n += conv_bn(static_cast<double>(config.in_channels), stem, config.image_size <= 64 ? 3 : 7);
  double in = stem;
  const std::vector<int64_t>& blocks = resnet_blocks().at(shape.depth);
  for (int stage = 0; stage < 4; ++stage) {
    const double planes = stem * (1 << stage);
    for (int64_t b = 0; b < blocks[static_cast<size_t>(stage)]; ++b) {
      n += bottleneck ? conv_bn(in, planes, 1) + conv_bn(planes, planes, 3) +
                            conv_bn(planes, planes * expansion, 1)
                      : conv_bn(in, planes, 3) + conv_bn(planes, planes, 3);
      if ((b == 0 && stage > 0) || in != planes * expansion) {
        n += conv_bn(in, planes * expansion, 1);
      }
      in = planes * expansion;
    }
  }
  return n;
}

VICRegImpl::VICRegImpl(const VICRegModelConfig& config_) : config(config_) {
  backbone = register_module("backbone", make_encoder(config.encoder));
  projector = register_module("projector", Expander(backbone->output_dim(), config.mlp));
  if (!config.shared_weights) {
    backbone_b = register_module("backbone_b", make_encoder(config.encoder_b));
    projector_b = register_module("projector_b", Expander(backbone_b->output_dim(), config.mlp));
  }
}

VICRegOutput VICRegImpl::forward(torch::Tensor x_a, torch::Tensor x_b) {
  VICRegOutput out;
  // The views go through the network separately, as in the reference: BatchNorm statistics are
  // those of each view's batch.
  out.y_a = backbone->forward(x_a);
  out.z_a = projector->forward(out.y_a);
  if (config.shared_weights) {
    out.y_b = backbone->forward(x_b);
    out.z_b = projector->forward(out.y_b);
  } else {
    out.y_b = backbone_b->forward(x_b);
    out.z_b = projector_b->forward(out.y_b);
  }
  return out;
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace vicreg
