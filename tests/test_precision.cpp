// Mixed precision and channels_last (precision.h): choosing the precision, the autocast guard,
// BatchNorm statistics and the loss in fp32 under autocast, channels_last giving the same outputs
// and batches, and GradScaler's semantics.
#include "vicreg/kernels/conv.h"
#include "vicreg/precision.h"

#include "vicreg/error.h"
#include "vicreg/loader.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"
#include "vicreg/run/progress.h"
#include "vicreg/runtime.h"

#include <ATen/autocast_mode.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <utility>

namespace {

using vicreg::Precision;

TEST(Precision, NamesAndChoices) {
  EXPECT_EQ(vicreg::parse_name<Precision>("bf16"), Precision::Bf16);
  EXPECT_EQ(vicreg::to_string(Precision::Fp16), "fp16");
  EXPECT_THROW(vicreg::parse_name<Precision>("fp8"), vicreg::UsageError);
  EXPECT_EQ(vicreg::parse_name<vicreg::Toggle>("off"), vicreg::Toggle::Off);

  const torch::Device cpu(torch::kCPU);
  const auto a = vicreg::resolve_precision(Precision::Auto, cpu);
  EXPECT_EQ(a.precision, vicreg::cpu_has_native_bf16() ? Precision::Bf16 : Precision::Fp32);
  EXPECT_NE(a.reason.find("auto"), std::string::npos);
  EXPECT_EQ(vicreg::resolve_precision(Precision::Fp32, cpu).precision, Precision::Fp32);
  const auto b = vicreg::resolve_precision(Precision::Bf16, cpu);
  EXPECT_EQ(b.precision, Precision::Bf16);
  EXPECT_EQ(b.warning.empty(), vicreg::cpu_has_native_bf16());
  // fp16 on a CPU is an error that names the alternative.
  try {
    vicreg::resolve_precision(Precision::Fp16, cpu);
    FAIL() << "expected UsageError";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
  // auto continues a run in the precision it was trained in; fp16 runs continue on a CPU as auto.
  EXPECT_EQ(vicreg::resolve_precision(Precision::Auto, cpu, Precision::Fp32).precision,
            Precision::Fp32);
  EXPECT_EQ(vicreg::resolve_precision(Precision::Auto, cpu, Precision::Bf16).precision,
            Precision::Bf16);
  EXPECT_EQ(vicreg::resolve_precision(Precision::Auto, cpu, Precision::Fp16).precision,
            a.precision);
  EXPECT_EQ(vicreg::resolve_precision(Precision::Fp32, cpu, Precision::Bf16).precision,
            Precision::Fp32);
}

TEST(Precision, AutocastGuardCoversItsScopeOnly) {
  torch::nn::Linear linear(8, 4);
  const auto x = torch::randn({3, 8});
  const torch::Device cpu(torch::kCPU);
  {
    const vicreg::AutocastGuard guard(cpu, Precision::Bf16);
    EXPECT_TRUE(vicreg::autocast_enabled(torch::kCPU));
    EXPECT_EQ(linear(x).scalar_type(), torch::kBFloat16);
    {
      const vicreg::AutocastGuard fp32(cpu, Precision::Fp32);  // does nothing
      EXPECT_EQ(linear(x).scalar_type(), torch::kBFloat16);
    }
  }
  EXPECT_FALSE(vicreg::autocast_enabled(torch::kCPU));
  EXPECT_EQ(linear(x).scalar_type(), torch::kFloat);
  EXPECT_EQ(linear->weight.scalar_type(), torch::kFloat);  // master weights untouched
}

TEST(Precision, BatchNormStatisticsStayFp32UnderAutocast) {
  torch::manual_seed(0);
  vicreg::BatchNorm bn(16);
  bn->train();
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 16, 3).bias(false));
  // Large means make bf16 accumulation visibly wrong (8 bits of mantissa: ~0.4 % per add).
  const auto x = torch::randn({32, 3, 10, 10}) + 30.0;
  torch::Tensor y, out;
  {
    const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
    y = conv(x);
    out = bn(y);
  }
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bn->running_mean.scalar_type(), torch::kFloat);
  EXPECT_EQ(bn->running_var.scalar_type(), torch::kFloat);
  EXPECT_EQ(bn->weight.scalar_type(), torch::kFloat);
  // running_mean = 0.9 * 0 + 0.1 * batch mean of the bf16 activations, computed exactly.
  const auto mean = y.to(torch::kDouble).mean({0, 2, 3});
  const auto var = y.to(torch::kDouble).var({0, 2, 3}, /*unbiased=*/true);
  EXPECT_TRUE(torch::allclose(bn->running_mean.to(torch::kDouble), 0.1 * mean, 1e-5, 1e-6))
      << (bn->running_mean.to(torch::kDouble) - 0.1 * mean).abs().max();
  EXPECT_TRUE(torch::allclose(bn->running_var.to(torch::kDouble), 0.9 + 0.1 * var, 1e-4, 1e-5));
  // The normalised output has mean 0 and std 1 per channel to bf16's precision.
  const auto o = out.to(torch::kDouble);
  EXPECT_LT(o.mean({0, 2, 3}).abs().max().item<double>(), 0.02);
  EXPECT_LT((o.std({0, 2, 3}) - 1).abs().max().item<double>(), 0.02);
}

TEST(Precision, TheLossReturnsFp32FromBf16Embeddings) {
  torch::manual_seed(1);
  const auto za = torch::randn({32, 64}), zb = za + 0.1 * torch::randn({32, 64});
  const auto exact = vicreg::vicreg_loss(za.to(torch::kDouble), zb.to(torch::kDouble));
  const auto a = za.to(torch::kBFloat16).requires_grad_(), b = zb.to(torch::kBFloat16);
  const auto terms = vicreg::vicreg_loss(a, b);
  EXPECT_EQ(terms.total.scalar_type(), torch::kFloat);
  EXPECT_EQ(terms.std_a.scalar_type(), torch::kFloat);
  // Only the inputs' rounding to bf16 separates it from the fp64 loss (no bf16 accumulation:
  // that would cost percents over 32 x 64 elements).
  const auto same_inputs = vicreg::vicreg_loss(a.detach().to(torch::kDouble), b.to(torch::kDouble));
  EXPECT_NEAR(terms.total.item<double>(), same_inputs.total.item<double>(),
              1e-5 * std::abs(same_inputs.total.item<double>()));
  EXPECT_NEAR(terms.total.item<double>(), exact.total.item<double>(),
              1e-2 * std::abs(exact.total.item<double>()));
  terms.total.backward();
  EXPECT_EQ(a.grad().scalar_type(), torch::kBFloat16);  // gradients in the inputs' dtype
}

/// Sets the process-wide CpuBf16Conv mode for a scope, restoring the previous one after.
class Bf16ConvMode {
 public:
  explicit Bf16ConvMode(vicreg::CpuBf16Conv mode) : before_(vicreg::cpu_bf16_conv()) {
    vicreg::set_cpu_bf16_conv(mode);
  }
  ~Bf16ConvMode() { vicreg::set_cpu_bf16_conv(before_); }
  Bf16ConvMode(const Bf16ConvMode&) = delete;
  Bf16ConvMode& operator=(const Bf16ConvMode&) = delete;

 private:
  vicreg::CpuBf16Conv before_;
};

/// The exact (fp64) gradients of a bias-free convolution of x and weight rounded to bf16, for
/// grad_out: {input gradient, weight gradient}.
std::pair<torch::Tensor, torch::Tensor> exact_bf16_conv_grads(const torch::Tensor& x,
                                                              const torch::Tensor& weight,
                                                              const torch::Tensor& grad_out,
                                                              int64_t stride, int64_t padding) {
  const auto xd = x.detach().to(torch::kBFloat16).to(torch::kDouble).requires_grad_();
  const auto wd = weight.detach().to(torch::kBFloat16).to(torch::kDouble).requires_grad_();
  torch::nn::functional::conv2d(
      xd, wd, torch::nn::functional::Conv2dFuncOptions().stride(stride).padding(padding))
      .backward(grad_out.to(torch::kDouble));
  return {xd.grad(), wd.grad()};
}

/// The largest error of got against want, relative to want's largest magnitude.
double max_rel_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kDouble) - want).abs().max() / want.abs().max()).item<double>();
}

TEST(Precision, TheBf16ConvolutionModeFollowsTheCpu) {
  using vicreg::CpuBf16Conv;
  EXPECT_EQ(vicreg::default_cpu_bf16_conv(/*native_bf16=*/true, /*amx_bf16=*/true, /*intel=*/true),
            CpuBf16Conv::Fp32Backward);
  EXPECT_EQ(vicreg::default_cpu_bf16_conv(true, false, true), CpuBf16Conv::Fp32);
  EXPECT_EQ(vicreg::default_cpu_bf16_conv(true, false, false), CpuBf16Conv::Bf16);
  // Without bf16 instructions (emulated bf16), fp32 convolutions whatever the vendor.
  EXPECT_EQ(vicreg::default_cpu_bf16_conv(false, false, false), CpuBf16Conv::Fp32);
  EXPECT_EQ(vicreg::default_cpu_bf16_conv(false, false, true), CpuBf16Conv::Fp32);
  // This process starts in this CPU's mode.
  EXPECT_EQ(vicreg::cpu_bf16_conv(), vicreg::default_cpu_bf16_conv());
  EXPECT_EQ(vicreg::to_string(CpuBf16Conv::Fp32Backward), "fp32-backward");
  // channels_last auto follows the mode for CPU bf16 (fp32: off; explicit settings win).
  using vicreg::Toggle;
  const torch::Device cpu(torch::kCPU);
  for (const auto mode : {CpuBf16Conv::Bf16, CpuBf16Conv::Fp32Backward, CpuBf16Conv::Fp32}) {
    const Bf16ConvMode scope(mode);
    EXPECT_EQ(vicreg::use_channels_last(Toggle::Auto, true, cpu, Precision::Bf16),
              mode != CpuBf16Conv::Bf16);
    EXPECT_FALSE(vicreg::use_channels_last(Toggle::Auto, true, cpu, Precision::Fp32));
    EXPECT_FALSE(vicreg::use_channels_last(Toggle::Off, true, cpu, Precision::Bf16));
  }
}

TEST(Precision, TheBf16ConvolutionSettingPrefersTheAskedThenTheRecordedMode) {
  using vicreg::CpuBf16Conv;
  const CpuBf16Conv own = vicreg::cpu_bf16_conv();
  const CpuBf16Conv other = own == CpuBf16Conv::Fp32 ? CpuBf16Conv::Bf16 : CpuBf16Conv::Fp32;
  const Bf16ConvMode scope(own);  // whatever happens below is undone
  // auto with nothing recorded: the process-wide mode, unchanged.
  EXPECT_EQ(vicreg::apply_cpu_bf16_conv(CpuBf16Conv::Auto), own);
  // auto with a recorded mode: the recorded one, now process-wide.
  EXPECT_EQ(vicreg::apply_cpu_bf16_conv(CpuBf16Conv::Auto, other), other);
  EXPECT_EQ(vicreg::cpu_bf16_conv(), other);
  // asked for: wins over the recorded one.
  EXPECT_EQ(vicreg::apply_cpu_bf16_conv(CpuBf16Conv::Fp32Backward, other),
            CpuBf16Conv::Fp32Backward);
  // Auto as a mode goes back to the CPU's own, and is never what is in use.
  vicreg::set_cpu_bf16_conv(CpuBf16Conv::Auto);
  EXPECT_EQ(vicreg::cpu_bf16_conv(), vicreg::default_cpu_bf16_conv());
  EXPECT_EQ(vicreg::parse_name<CpuBf16Conv>("fp32-backward"), CpuBf16Conv::Fp32Backward);
  EXPECT_THROW(vicreg::parse_name<CpuBf16Conv>("fp16"), vicreg::UsageError);
}

TEST(Precision, NumericsAreResolvedInOnePlaceInTheirOrder) {
  using vicreg::CpuBf16Conv;
  using vicreg::Toggle;
  const torch::Device cpu(torch::kCPU);
  const CpuBf16Conv own = vicreg::cpu_bf16_conv();
  const Bf16ConvMode scope(own);  // whatever happens below is undone
  vicreg::NumericsRequest r;
  r.precision = Precision::Bf16;
  r.bf16_conv = CpuBf16Conv::Fp32;
  r.convolutional = true;
  // bf16 on a CPU with convolutions: the mode is set first, and channels_last follows it.
  vicreg::Numerics n = vicreg::resolve_numerics(r, cpu);
  EXPECT_EQ(n.precision.precision, Precision::Bf16);
  EXPECT_EQ(n.bf16_conv, CpuBf16Conv::Fp32);
  EXPECT_EQ(vicreg::cpu_bf16_conv(), CpuBf16Conv::Fp32);
  EXPECT_TRUE(n.channels_last);
  r.bf16_conv = CpuBf16Conv::Bf16;
  EXPECT_FALSE(vicreg::resolve_numerics(r, cpu).channels_last);
  // A recorded memory format is kept; nothing convolutional: no mode, no channels_last.
  r.trained_channels_last = Toggle::On;
  EXPECT_TRUE(vicreg::resolve_numerics(r, cpu).channels_last);
  r.convolutional = false;
  n = vicreg::resolve_numerics(r, cpu);
  EXPECT_EQ(n.bf16_conv, CpuBf16Conv::Auto);
  EXPECT_FALSE(n.channels_last);
  // fp32: the mode is left alone; a recorded precision is what auto resolves to.
  r.convolutional = true;
  r.precision = Precision::Auto;
  r.trained_precision = Precision::Fp32;
  n = vicreg::resolve_numerics(r, cpu);
  EXPECT_EQ(n.precision.precision, Precision::Fp32);
  EXPECT_EQ(n.bf16_conv, CpuBf16Conv::Auto);
  r.precision = Precision::Fp16;  // no fp16 autocast on CPUs
  EXPECT_THROW(vicreg::resolve_numerics(r, cpu), vicreg::UsageError);
}

TEST(Precision, Fp32ConvolutionModeRunsConvolutionsInFp32UnderBf16) {
  const Bf16ConvMode scope(vicreg::CpuBf16Conv::Fp32);
  torch::manual_seed(4);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(16, 32, 3).stride(2).padding(1).bias(false));
  torch::nn::Linear linear(32, 8);
  const auto x = torch::randn({4, 16, 9, 9}, torch::requires_grad());
  torch::Tensor y, z;
  {
    const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
    ASSERT_TRUE(vicreg::conv2d_in_fp32(*conv, x));
    EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*conv, x));
    y = vicreg::conv2d_forward(*conv, x);
    z = linear->forward(y.mean({2, 3}));  // autocast still applies to everything else
    // A bf16 input is cast up: the convolution still computes in fp32.
    EXPECT_EQ(vicreg::conv2d_forward(*conv, x.detach().to(torch::kBFloat16)).scalar_type(),
              torch::kFloat);
  }
  EXPECT_EQ(y.scalar_type(), torch::kFloat);
  EXPECT_EQ(z.scalar_type(), torch::kBFloat16);
  // The convolution is fp32's, bit for bit, and so are its gradients.
  const auto reference = conv->forward(x);
  EXPECT_TRUE(torch::equal(y, reference));
  const auto g = torch::randn_like(y);
  const auto got = torch::autograd::grad({y}, {x, conv->weight}, {g});
  const auto want = torch::autograd::grad({reference}, {x, conv->weight}, {g});
  EXPECT_TRUE(torch::equal(got[0], want[0]));
  EXPECT_TRUE(torch::equal(got[1], want[1]));
  // Outside bf16 autocast the mode changes nothing.
  EXPECT_FALSE(vicreg::conv2d_in_fp32(*conv, x));
  // A whole ConvNet under bf16 autocast then gives the fp32 representation exactly (the
  // BatchNorms compute in fp32 and the convolutions now do too).
  vicreg::EncoderConfig c;
  c.arch = "convnet";
  c.in_channels = 1;
  c.image_size = 16;
  c.width = 8;
  c.stages = 3;
  auto net = vicreg::make_encoder(c);
  const auto images = torch::randn({6, 1, 16, 16});
  const auto fp32 = net->forward(images);
  torch::Tensor bf16;
  {
    const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
    bf16 = net->forward(images);
  }
  EXPECT_EQ(bf16.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(bf16, fp32));
}

TEST(Precision, SmallSpatialConvolutionsGetAnFp32BackwardUnderBf16) {
  // The default on AMX CPUs only (where it was measured); the rule itself holds on any CPU.
  const Bf16ConvMode scope(vicreg::CpuBf16Conv::Fp32Backward);
  torch::manual_seed(3);
  // The default ConvNet's last stage on 28 px images: 128 -> 256 channels, stride 2, 7x7 -> 4x4.
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(128, 256, 3).stride(2).padding(1).bias(false));
  for (const bool channels_last : {false, true}) {
    auto x = torch::randn({8, 128, 7, 7});
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    x.requires_grad_();
    conv->weight.mutable_grad() = torch::Tensor();
    const auto grad_out = torch::randn({8, 256, 4, 4}).to(torch::kBFloat16);
    torch::Tensor y, reference;
    {
      const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
      ASSERT_TRUE(vicreg::conv2d_backward_in_fp32(*conv, x));
      y = vicreg::conv2d_forward(*conv, x);
      reference = conv->forward(x);  // autocast's own bf16 convolution
    }
    // The forward pass is autocast's, bit for bit.
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(y, reference));
    y.backward(grad_out);
    ASSERT_EQ(x.grad().scalar_type(), torch::kFloat);
    ASSERT_EQ(conv->weight.grad().scalar_type(), torch::kFloat);
    // The gradients are the exact ones of the bf16-rounded input and weight, computed in fp64.
    const auto [gx, gw] = exact_bf16_conv_grads(x, conv->weight, grad_out, 2, 1);
    // fp32 accumulation: ~1e-7 relative; bf16 outputs would be ~4e-3.
    EXPECT_LT(max_rel_error(x.grad(), gx), 1e-5) << "channels_last " << channels_last;
    EXPECT_LT(max_rel_error(conv->weight.grad(), gw), 1e-5) << "channels_last " << channels_last;
    x.mutable_grad() = torch::Tensor();
  }
  // Where the rule does not hold, conv.forward runs.
  const auto big = torch::randn({2, 128, 8, 8});     // 4x4 output
  const auto wide = torch::randn({2, 128, 10, 10});  // 5x5 output: 25 pixels
  torch::nn::Conv2d narrow(torch::nn::Conv2dOptions(64, 128, 3).stride(2).padding(1).bias(false));
  {
    const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
    EXPECT_TRUE(vicreg::conv2d_backward_in_fp32(*conv, big));
    EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*conv, wide));
    EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*narrow, torch::randn({2, 64, 8, 8})));
    vicreg::set_cpu_bf16_conv(vicreg::CpuBf16Conv::Bf16);
    EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*conv, big));
    EXPECT_FALSE(vicreg::conv2d_in_fp32(*conv, big));
    vicreg::set_cpu_bf16_conv(vicreg::CpuBf16Conv::Fp32Backward);
    const torch::NoGradGuard no_grad;  // evaluation: no backward to speed up
    EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*conv, big));
  }
  EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*conv, big));  // fp32: no autocast
  EXPECT_TRUE(torch::equal(vicreg::conv2d_forward(*conv, big), conv->forward(big)));
}

TEST(Precision, PatchesWeightGradientIsTheConvolutionsWeightGradient) {
  torch::manual_seed(4);
  const auto dbl = torch::TensorOptions().dtype(torch::kDouble);
  struct Case {
    int64_t c_in, c_out, h, w, kernel, stride, padding;
  };
  // Square and not, odd sizes, padding wider than a stride step, 1x1 and 5x5 kernels.
  for (const Case& k :
       {Case{3, 5, 7, 7, 3, 2, 1}, Case{4, 6, 9, 6, 3, 1, 1}, Case{2, 3, 8, 11, 5, 3, 2},
        Case{6, 4, 5, 5, 1, 2, 0}, Case{5, 7, 6, 4, 3, 2, 0}, Case{1, 2, 4, 4, 3, 1, 2},
        Case{6, 9, 4, 4, 1, 1, 0}}) {
    const int64_t ho = (k.h + 2 * k.padding - k.kernel) / k.stride + 1;
    const int64_t wo = (k.w + 2 * k.padding - k.kernel) / k.stride + 1;
    const auto x = torch::randn({3, k.c_in, k.h, k.w}, dbl);
    const auto weight = torch::randn({k.c_out, k.c_in, k.kernel, k.kernel}, dbl);
    const auto g = torch::randn({3, k.c_out, ho, wo}, dbl);
    const auto want = std::get<1>(at::convolution_backward(
        g, x, weight, c10::nullopt, {k.stride, k.stride}, {k.padding, k.padding}, {1, 1}, false,
        {0, 0}, 1, {false, true, false}));
    for (const bool channels_last : {false, true}) {
      const auto format =
          channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      const auto got = vicreg::conv2d_patches_weight_grad(
          g.contiguous(format), x.contiguous(format), k.kernel, k.stride, k.padding);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_TRUE(got.is_contiguous(at::MemoryFormat::ChannelsLast));
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-12 * want.abs().max().item<double>())
          << k.c_in << "->" << k.c_out << " " << k.h << "x" << k.w << " k" << k.kernel << " s"
          << k.stride << " p" << k.padding;
    }
    // bf16 in, bf16 out, accumulated in fp32: within bf16's rounding of the exact result.
    const auto xb = x.to(torch::kBFloat16), gb = g.to(torch::kBFloat16);
    const auto exact = std::get<1>(at::convolution_backward(
        gb.to(torch::kDouble), xb.to(torch::kDouble), weight, c10::nullopt, {k.stride, k.stride},
        {k.padding, k.padding}, {1, 1}, false, {0, 0}, 1, {false, true, false}));
    const auto bf16 = vicreg::conv2d_patches_weight_grad(gb, xb, k.kernel, k.stride, k.padding);
    EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
    EXPECT_LT(max_rel_error(bf16, exact), 8e-3);
  }
  // A gradient that is not this convolution's output, and impossible arguments, are named.
  const auto x = torch::randn({2, 3, 8, 8});
  EXPECT_THROW(vicreg::conv2d_patches_weight_grad(torch::randn({2, 4, 5, 5}), x, 3, 2, 1),
               c10::Error);
  EXPECT_THROW(vicreg::conv2d_patches_weight_grad(torch::randn({3, 4, 4, 4}), x, 3, 2, 1),
               c10::Error);
  EXPECT_THROW(vicreg::conv2d_patches_weight_grad(torch::randn({2, 4, 4, 4}), x, 3, 0, 1),
               c10::Error);
  EXPECT_THROW(vicreg::conv2d_patches_weight_grad(torch::randn({2, 4, 4}), x, 3, 2, 1), c10::Error);
}

/// Trains `conv` (channels_last weights) one step under CPU bf16 autocast on x0 through
/// conv2d_forward, where conv2d_patches_weight_grad_applies must hold, and through conv.forward:
/// both forward passes are autocast's, bit for bit, and both paths' gradients are within bf16
/// rounding of the exact gradients of the bf16-rounded tensors.
void expect_patches_path_matches_autocast(torch::nn::Conv2d& conv, const torch::Tensor& x0,
                                          int64_t stride, int64_t padding) {
  constexpr auto kCl = at::MemoryFormat::ChannelsLast;
  vicreg::to_channels_last(*conv);
  torch::Tensor grads[2][2];  // [patches, autocast's] x [input, weight]
  torch::Tensor grad_out;
  for (const bool patches : {true, false}) {
    const auto x = x0.clone().requires_grad_();
    conv->weight.mutable_grad() = torch::Tensor();
    torch::Tensor y, reference;
    {
      const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
      ASSERT_TRUE(vicreg::conv2d_patches_weight_grad_applies(*conv, x));
      EXPECT_FALSE(vicreg::conv2d_backward_in_fp32(*conv, x));
      y = patches ? vicreg::conv2d_forward(*conv, x) : conv->forward(x);
      reference = conv->forward(x.detach());
    }
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(y.is_contiguous(kCl));
    EXPECT_TRUE(torch::equal(y, reference));
    if (!grad_out.defined()) grad_out = torch::randn_like(y).contiguous(kCl);
    y.backward(grad_out);
    ASSERT_EQ(x.grad().scalar_type(), torch::kFloat);
    ASSERT_EQ(conv->weight.grad().scalar_type(), torch::kFloat);
    EXPECT_TRUE(conv->weight.grad().is_contiguous(kCl));
    grads[patches ? 0 : 1][0] = x.grad();
    grads[patches ? 0 : 1][1] = conv->weight.grad();
  }
  // Where bf16 is emulated (no AVX512-BF16 or AMX), LibTorch's own bf16 convolution backward
  // accumulates in bf16 (errors of 2-6 %: the input gradient of both paths, the weight
  // gradient of autocast's); the patches' product accumulates in fp32 on every CPU.
  const double libtorch_tol = vicreg::cpu_has_native_bf16() ? 8e-3 : 0.1;
  const auto [gx, gw] = exact_bf16_conv_grads(x0, conv->weight, grad_out, stride, padding);
  for (int path = 0; path < 2; ++path) {
    EXPECT_LT(max_rel_error(grads[path][0], gx), libtorch_tol) << "path " << path;
    EXPECT_LT(max_rel_error(grads[path][1], gw), path == 0 ? 8e-3 : libtorch_tol)
        << "path " << path;
  }
}

/// Sets patches_weight_grad_at_stride1 for a scope, restoring it after.
class PatchesAtStride1 {
 public:
  explicit PatchesAtStride1(bool on) : before_(vicreg::patches_weight_grad_at_stride1()) {
    vicreg::set_patches_weight_grad_at_stride1(on);
  }
  ~PatchesAtStride1() { vicreg::set_patches_weight_grad_at_stride1(before_); }
  PatchesAtStride1(const PatchesAtStride1&) = delete;
  PatchesAtStride1& operator=(const PatchesAtStride1&) = delete;

 private:
  bool before_;
};

TEST(Precision, SmallStridedConvolutionsGetThePatchesWeightGradientUnderBf16) {
  // The default on CPUs with AVX512-BF16 but neither AMX nor Intel's (where it was measured).
  const Bf16ConvMode scope(vicreg::CpuBf16Conv::Bf16);
  const PatchesAtStride1 stride1(false);
  torch::manual_seed(5);
  constexpr auto kCl = at::MemoryFormat::ChannelsLast;
  // The default ConvNet's third stage on 28 px images: 64 -> 128 channels, stride 2, 14 -> 7.
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(64, 128, 3).stride(2).padding(1).bias(false));
  expect_patches_path_matches_autocast(conv, torch::randn({16, 64, 14, 14}).contiguous(kCl), 2, 1);
  // Where the rule does not hold, conv.forward (or the fp32-backward rule) runs.
  torch::nn::Conv2d one(torch::nn::Conv2dOptions(64, 128, 3).stride(1).padding(1).bias(false));
  torch::nn::Conv2d pointwise(torch::nn::Conv2dOptions(64, 128, 1).stride(2).bias(false));
  const auto at8 = torch::randn({2, 64, 16, 16}).contiguous(kCl);  // 8x8 output: 64 pixels
  const auto at9 = torch::randn({2, 64, 18, 18}).contiguous(kCl);  // 9x9 output: 81 pixels
  {
    const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
    EXPECT_TRUE(vicreg::conv2d_patches_weight_grad_applies(*conv, at8));
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*conv, at9));
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*conv, at8.contiguous()));
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*one, at8));
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*pointwise, at8));
    vicreg::set_cpu_bf16_conv(vicreg::CpuBf16Conv::Fp32Backward);
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*conv, at8));
    vicreg::set_cpu_bf16_conv(vicreg::CpuBf16Conv::Bf16);
    const torch::NoGradGuard no_grad;  // evaluation: no backward to speed up
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*conv, at8));
  }
  EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*conv, at8));  // fp32: no autocast
}

TEST(Precision, SmallStride1ConvolutionsGetThePatchesWhereMeasuredFaster) {
  // The default: AMD family 26 (Zen 5) and later, where it was measured faster.
  EXPECT_FALSE(vicreg::default_patches_weight_grad_at_stride1(0));  // not AMD
  EXPECT_FALSE(vicreg::default_patches_weight_grad_at_stride1(25));
  EXPECT_TRUE(vicreg::default_patches_weight_grad_at_stride1(26));
  EXPECT_TRUE(vicreg::default_patches_weight_grad_at_stride1(27));
  EXPECT_EQ(vicreg::patches_weight_grad_at_stride1(),
            vicreg::default_patches_weight_grad_at_stride1(vicreg::cpu_amd_family()));

  const Bf16ConvMode scope(vicreg::CpuBf16Conv::Bf16);
  torch::manual_seed(6);
  constexpr auto kCl = at::MemoryFormat::ChannelsLast;
  // The default ConvNet's last 3x3 conv (256 -> 256 at 4x4) and its 1x1 conv to 1,024 channels,
  // narrower here.
  torch::nn::Conv2d three(torch::nn::Conv2dOptions(32, 48, 3).stride(1).padding(1).bias(false));
  torch::nn::Conv2d one(torch::nn::Conv2dOptions(32, 64, 1).stride(1).bias(false));
  const auto at4 = torch::randn({16, 32, 4, 4}).contiguous(kCl);  // 16 output pixels
  const auto at5 = torch::randn({16, 32, 5, 5}).contiguous(kCl);  // 25
  {
    const PatchesAtStride1 on(true);
    expect_patches_path_matches_autocast(three, at4, 1, 1);
    expect_patches_path_matches_autocast(one, at4, 1, 0);
    const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*three, at5));
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*one, at5));
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*three, at4.contiguous()));
    vicreg::set_cpu_bf16_conv(vicreg::CpuBf16Conv::Fp32Backward);
    EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*three, at4));
  }
  const PatchesAtStride1 off(false);
  const vicreg::AutocastGuard guard(torch::kCPU, Precision::Bf16);
  EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*three, at4));
  EXPECT_FALSE(vicreg::conv2d_patches_weight_grad_applies(*one, at4));
}

TEST(Precision, AmdCpuFamilyIsTheKernels) {
  // /proc/cpuinfo's "cpu family" (the kernel's reading of the same CPUID fields) on AMD CPUs.
  std::ifstream in("/proc/cpuinfo");
  std::string line, vendor;
  int family = -1;
  while (std::getline(in, line) && (vendor.empty() || family < 0)) {
    const size_t colon = line.find(':');
    const std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    if (line.rfind("vendor_id", 0) == 0) vendor = value;
    if (line.rfind("cpu family", 0) == 0) family = std::stoi(value);
  }
  if (vendor.find("AuthenticAMD") == std::string::npos) {
    EXPECT_EQ(vicreg::cpu_amd_family(), 0) << vendor;
  } else {
    EXPECT_EQ(vicreg::cpu_amd_family(), family);
  }
}

vicreg::Encoder encoder(const std::string& arch, int64_t channels) {
  vicreg::EncoderConfig c;
  c.arch = arch;
  c.in_channels = channels;
  c.image_size = 16;
  c.width = 8;
  c.stages = 3;
  return vicreg::make_encoder(c);
}

TEST(Precision, ChannelsLastCopiesSayChannelsLastForOneChannelToo) {
  for (const int64_t channels : {1, 3}) {
    const auto x = torch::randn({4, channels, 5, 6});
    const auto y = vicreg::channels_last_copy(x);
    EXPECT_TRUE(torch::equal(x, y)) << channels;
    EXPECT_NE(y.data_ptr(), x.data_ptr()) << channels;
    EXPECT_EQ(y.suggest_memory_format(), at::MemoryFormat::ChannelsLast) << channels;
    EXPECT_EQ(y.stride(1), 1) << channels;
    // What it is there for: contiguous() keeps one channel's contiguous strides.
    if (channels == 1) {
      EXPECT_EQ(x.contiguous(at::MemoryFormat::ChannelsLast).suggest_memory_format(),
                at::MemoryFormat::Contiguous);
    }
  }
  EXPECT_THROW(vicreg::channels_last_copy(torch::randn({4, 5})), c10::Error);
}

TEST(Precision, ChannelsLastGivesTheSameOutputs) {
  for (const std::string arch : {"convnet", "resnet18"}) {
    torch::manual_seed(2);
    auto plain = encoder(arch, 3);
    torch::manual_seed(2);
    auto cl = encoder(arch, 3);
    const int64_t converted = vicreg::to_channels_last(*cl);
    EXPECT_GT(converted, 0);
    EXPECT_TRUE(vicreg::has_channels_last_weights(*cl));
    EXPECT_FALSE(vicreg::has_channels_last_weights(*plain));
    EXPECT_EQ(vicreg::to_channels_last(*cl), 0);  // idempotent
    const auto x = torch::randn({6, 3, 16, 16});
    for (bool train : {true, false}) {
      plain->train(train);
      cl->train(train);
      const auto y_plain = plain->forward(x);
      const auto y_cl = cl->forward(x.contiguous(at::MemoryFormat::ChannelsLast));
      EXPECT_TRUE(torch::allclose(y_plain, y_cl, 1e-4, 1e-5))
          << arch << " train " << train << ": " << (y_plain - y_cl).abs().max();
    }
    // Gradients reach the weights in their own format.
    cl->train();
    cl->forward(x).sum().backward();
    for (const auto& p : cl->parameters()) {
      if (p.dim() == 4) {
        EXPECT_TRUE(p.grad().defined());
      }
    }
  }
  const torch::Device cpu(torch::kCPU), cuda(torch::kCUDA);
  using vicreg::Toggle;
  EXPECT_FALSE(
      vicreg::use_channels_last(Toggle::On, /*convolutional=*/false, cpu, Precision::Fp32));
  EXPECT_FALSE(vicreg::use_channels_last(Toggle::Auto, true, cpu, Precision::Fp32));
  EXPECT_TRUE(vicreg::use_channels_last(Toggle::Auto, true, cpu, Precision::Fp32, Toggle::On));
  EXPECT_EQ(vicreg::use_channels_last(Toggle::Auto, true, cpu, Precision::Bf16),
            vicreg::cpu_bf16_conv() != vicreg::CpuBf16Conv::Bf16);
  EXPECT_FALSE(vicreg::use_channels_last(Toggle::Auto, true, cpu, Precision::Bf16, Toggle::Off));
  EXPECT_TRUE(vicreg::use_channels_last(Toggle::On, true, cpu, Precision::Bf16));
  EXPECT_TRUE(vicreg::use_channels_last(Toggle::Auto, true, cuda, Precision::Fp16));
  EXPECT_FALSE(vicreg::use_channels_last(Toggle::Off, true, cpu, Precision::Fp32));
}

TEST(Precision, ChannelsLastBatchesHoldTheSameValuesWithoutACopy) {
  auto data = std::make_shared<vicreg::Dataset>();
  data->name = "synthetic";
  data->channels = 3;
  torch::manual_seed(3);
  data->images = torch::randint(0, 256, {20, 12, 12, 3}, torch::kUInt8);
  const auto recipe = vicreg::make_recipe("cifar", 3, 10);
  const vicreg::LoaderOptions o{4, 2, 2, /*seed=*/7};
  vicreg::TwoViewLoader plain(data, std::make_shared<vicreg::ImageTwoViewTransform>(recipe), o);
  vicreg::TwoViewLoader cl(data, std::make_shared<vicreg::ImageTwoViewTransform>(recipe, true), o);
  plain.start();
  cl.start();
  for (int i = 0; i < 3; ++i) {
    const auto a = plain.next(), b = cl.next();
    EXPECT_EQ(b.view_a.sizes(), a.view_a.sizes());
    EXPECT_TRUE(b.view_a.is_contiguous(at::MemoryFormat::ChannelsLast));
    EXPECT_FALSE(b.view_a.is_contiguous());
    EXPECT_TRUE(torch::equal(a.view_a, b.view_a));
    EXPECT_TRUE(torch::equal(a.view_b, b.view_b));
  }
}

TEST(Precision, MemoryCountingServesOneDnnRawAllocations) {
  // oneDNN's bf16 and channels_last reorders allocate through Allocator::raw_allocate, which needs
  // the counting allocator's DataPtr context to be its data pointer.
  vicreg::enable_memory_tracking();
  const torch::Device cpu(torch::kCPU);
  const int64_t before = vicreg::memory_stats(cpu).current_bytes;
  c10::Allocator* allocator = c10::GetCPUAllocator();
  void* p = allocator->raw_allocate(1000);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(vicreg::memory_stats(cpu).current_bytes, before + 1000);
  allocator->raw_deallocate(p);
  EXPECT_EQ(vicreg::memory_stats(cpu).current_bytes, before);
  // A bf16 channels_last step of a convolutional encoder runs under it.
  auto e = encoder("convnet", 3);
  vicreg::to_channels_last(*e);
  const vicreg::AutocastGuard guard(cpu, Precision::Bf16);
  e->forward(torch::randn({4, 3, 16, 16}).contiguous(at::MemoryFormat::ChannelsLast))
      .sum()
      .backward();
}

TEST(Runtime, OpenBlasCoreForTheCpu) {
  // Pre-AVX2 kernels (Prescott: OpenBLAS 0.3.21's fallback for a CPU it does not know) move up to
  // what the CPU runs; kernels OpenBLAS chose for a CPU it knows stay.
  EXPECT_EQ(vicreg::blas_core_for_cpu("Prescott", /*avx512=*/true, /*avx2=*/true), "SkylakeX");
  EXPECT_EQ(vicreg::blas_core_for_cpu("PRESCOTT", false, true), "Haswell");
  EXPECT_EQ(vicreg::blas_core_for_cpu("Nehalem", false, true), "Haswell");
  EXPECT_EQ(vicreg::blas_core_for_cpu("Sandybridge", true, true), "SkylakeX");
  EXPECT_EQ(vicreg::blas_core_for_cpu("Prescott", false, false), "");
  EXPECT_EQ(vicreg::blas_core_for_cpu("Haswell", true, true), "");
  EXPECT_EQ(vicreg::blas_core_for_cpu("Zen", true, true), "");
  EXPECT_EQ(vicreg::blas_core_for_cpu("SkylakeX", true, true), "");
  EXPECT_EQ(vicreg::blas_core_for_cpu("Cooperlake", true, true), "");
  EXPECT_TRUE(vicreg::is_pre_avx2_blas_core("core2"));
  EXPECT_FALSE(vicreg::is_pre_avx2_blas_core("SapphireRapids"));
}

TEST(Runtime, SetThreadsLeavesOpenBlasOnKernelsTheCpuRunsAndTheyComputeRight) {
  vicreg::set_threads(0);
  const vicreg::BlasKernels k = vicreg::select_blas_kernels();
  if (!k.detected.empty() && !k.user_choice) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      EXPECT_FALSE(vicreg::is_pre_avx2_blas_core(k.core))
          << "OpenBLAS detected " << k.detected << " and still runs " << k.core;
    }
  }
  // Whatever kernels run, the products are right: fp32 against fp64, the shapes of the
  // expander (transposed operands too, as nn::Linear's backward multiplies them).
  torch::manual_seed(0);
  const auto a = torch::randn({128, 300});
  const auto b = torch::randn({300, 1024});
  const auto want = torch::mm(a.to(torch::kDouble), b.to(torch::kDouble));
  EXPECT_LT((torch::mm(a, b).to(torch::kDouble) - want).abs().max().item<double>(), 1e-3);
  const auto at = a.t().contiguous().t();  // column-major a
  EXPECT_LT((torch::mm(at, b).to(torch::kDouble) - want).abs().max().item<double>(), 1e-3);
  const auto want_t = torch::mm(b.t().to(torch::kDouble), a.t().to(torch::kDouble));
  EXPECT_LT((torch::mm(b.t(), a.t()).to(torch::kDouble) - want_t).abs().max().item<double>(), 1e-3);
}

// ---------------------------------------------------------------------------------------------
// GradScaler

std::vector<torch::Tensor> params_with_grads(std::vector<float> grads) {
  std::vector<torch::Tensor> params;
  for (float g : grads) {
    auto p = torch::zeros({3}, torch::requires_grad());
    p.mutable_grad() = torch::full({3}, g);
    params.push_back(p);
  }
  return params;
}

TEST(GradScaler, ScalesUnscalesAndFindsNonFiniteGradients) {
  vicreg::GradScaler scaler(true);
  EXPECT_EQ(scaler.scale(), 65536.0);
  EXPECT_EQ(scaler.scale(torch::tensor(2.0f)).item<float>(), 131072.0f);
  auto good = params_with_grads({65536.0f, -131072.0f});
  EXPECT_FALSE(scaler.unscale(good));
  EXPECT_EQ(good[0].grad()[0].item<float>(), 1.0f);
  EXPECT_EQ(good[1].grad()[2].item<float>(), -2.0f);
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    auto params = params_with_grads({1.0f, bad});
    EXPECT_TRUE(scaler.unscale(params)) << bad;
  }
  // A parameter without a gradient is left alone.
  auto no_grad = torch::zeros({2}, torch::requires_grad());
  EXPECT_FALSE(scaler.unscale({no_grad}));

  vicreg::GradScaler off;  // disabled: the identity
  EXPECT_FALSE(off.enabled());
  EXPECT_EQ(off.scale(torch::tensor(2.0f)).item<float>(), 2.0f);
  auto inf = params_with_grads({std::numeric_limits<float>::infinity()});
  EXPECT_FALSE(off.unscale(inf));
}

TEST(GradScaler, BacksOffOnOverflowAndGrowsAfterTheInterval) {
  vicreg::GradScalerOptions o;
  o.growth_interval = 3;
  vicreg::GradScaler s(true, o);
  s.update(true);  // backoff x0.5, tracker reset
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_EQ(s.growth_tracker(), 0);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_EQ(s.growth_tracker(), 2);
  s.update(true);  // an overflow restarts the count
  EXPECT_EQ(s.scale(), 16384.0);
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 32768.0);  // x2 after 3 good steps in a row
  EXPECT_EQ(s.growth_tracker(), 0);
  s.update(false);

  vicreg::GradScaler restored(true, o);
  restored.load_state(s.state());
  EXPECT_EQ(restored.scale(), s.scale());
  EXPECT_EQ(restored.growth_tracker(), 1);
  EXPECT_THROW(restored.load_state(torch::tensor({-1.0, 0.0}, torch::kDouble)),
               vicreg::FormatError);
  EXPECT_THROW(restored.load_state(torch::tensor({1.0, 0.5}, torch::kDouble)), vicreg::FormatError);
  EXPECT_THROW(restored.load_state(torch::tensor({1.0f, 0.0f})), vicreg::FormatError);
  o.backoff_factor = 1.5;
  EXPECT_THROW(vicreg::GradScaler(true, o), vicreg::UsageError);
}

TEST(GradScaler, SkippedStepsAreCountedAndLeftOutOfTheIntervalMeans) {
  vicreg::IntervalStats interval;
  vicreg::StepStats good;
  good.loss = 2.0;
  good.std_z = 0.5;
  vicreg::StepStats skipped;
  skipped.loss = std::numeric_limits<double>::infinity();
  skipped.skipped = true;
  interval.add(good);
  interval.add(skipped);
  EXPECT_EQ(interval.steps, 2);
  EXPECT_EQ(interval.skipped, 1);
  const auto m = interval.mean(0.1);
  EXPECT_EQ(m.loss, 2.0);
  EXPECT_EQ(m.std_z, 0.5);
  vicreg::IntervalStats all_skipped;
  all_skipped.add(skipped);
  EXPECT_TRUE(std::isnan(all_skipped.mean(0.1).loss));  // written as null, not as a number
}

// ---------------------------------------------------------------------------------------------
// CUDA (run where a CUDA LibTorch finds a device)

TEST(PrecisionCuda, Fp16AndBf16StepsWithLossScaling) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA);
  EXPECT_NE(vicreg::resolve_precision(Precision::Auto, cuda).precision, Precision::Fp32);
  std::vector<Precision> precisions = {Precision::Fp16};
  if (vicreg::device_has_native_bf16(cuda)) precisions.push_back(Precision::Bf16);
  for (const Precision p : precisions) {
    torch::manual_seed(4);
    auto e = encoder("convnet", 3);
    e->to(cuda);
    vicreg::to_channels_last(*e);
    vicreg::Expander expander(e->output_dim(), "64-64");
    expander->to(cuda);
    const auto x = torch::randn({8, 3, 16, 16}, cuda).contiguous(at::MemoryFormat::ChannelsLast);
    torch::Tensor za, zb;
    {
      const vicreg::AutocastGuard guard(cuda, p);
      za = expander(e->forward(x));
      zb = expander(e->forward(x.flip(3)));
    }
    EXPECT_EQ(za.scalar_type(), vicreg::compute_dtype(p));
    const auto terms = vicreg::vicreg_loss(za, zb);
    EXPECT_EQ(terms.total.scalar_type(), torch::kFloat);
    vicreg::GradScaler scaler(true);
    scaler.scale(terms.total).backward();
    std::vector<torch::Tensor> params = e->parameters();
    for (const auto& q : expander->parameters()) params.push_back(q);
    EXPECT_FALSE(scaler.unscale(params)) << vicreg::to_string(p);
    for (const auto& q : params) {
      EXPECT_EQ(q.scalar_type(), torch::kFloat);
      EXPECT_TRUE(torch::isfinite(q.grad()).all().item<bool>());
    }
    // The fused unscale kernel finds an inf like the CPU path.
    params[0].mutable_grad()[0] = std::numeric_limits<float>::infinity();
    EXPECT_TRUE(scaler.unscale(params));
  }
}

}  // namespace
