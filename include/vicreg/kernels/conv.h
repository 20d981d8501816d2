// CPU kernels behind the encoders' convolutions under bf16 autocast, and global average pooling.
//
// Every encoder runs its 2-D convolutions through conv2d_forward(), which picks, per layer, how
// the convolution and its gradients are computed under CPU bf16 autocast, following the
// process-wide mode cpu_bf16_conv() (precision.h). Elsewhere (fp32, CUDA, no grad where it
// matters) it is the convolution's own forward pass. The shape limits below were measured per
// layer shape with bench/train_bench's BM_ConvBackward and BM_ConvWeightGrad; the numbers are in
// docs/decisions.md.
#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <cstdint>

namespace vicreg {

/// The layers whose backward pass conv2d_forward computes in fp32 (mode Fp32Backward): at most
/// this many output pixels (4x4) and at least this many input channels, where oneDNN's bf16
/// backward kernels were measured slower than its fp32 ones on AMX CPUs.
constexpr int64_t kFp32BackwardMaxPixels = 16;
constexpr int64_t kFp32BackwardMinChannels = 128;

/// Whether conv2d_forward(conv, x) computes the backward pass in fp32: with cpu_bf16_conv()
/// Fp32Backward, in grad mode under CPU bf16 autocast, for a 2-D convolution without bias, groups
/// or dilation, with square stride and padding, whose output has at most kFp32BackwardMaxPixels
/// pixels and whose input has at least kFp32BackwardMinChannels channels.
bool conv2d_backward_in_fp32(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// Whether conv2d_forward(conv, x) runs in fp32 altogether: with cpu_bf16_conv() Fp32, under CPU
/// bf16 autocast, for a CPU input and an fp32 weight, in grad mode or not.
bool conv2d_in_fp32(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// The weight gradient of a convolution (no bias, dilation 1, one group, square kernel, stride and
/// padding) as one matrix product: the output gradient, [N Ho Wo, C_out], transposed, times the
/// input's patches, [N Ho Wo, k k C_in] (im2col, zero outside x). Returned as [C_out, C_in, k, k]
/// in channels_last memory format, in x's dtype (bf16: accumulated in fp32, as oneDNN's).
torch::Tensor conv2d_patches_weight_grad(const torch::Tensor& grad_out, const torch::Tensor& x,
                                         int64_t kernel, int64_t stride, int64_t padding);

/// The strided layers (stride >= 2, kernel >= 2) whose weight gradient conv2d_forward computes
/// with conv2d_patches_weight_grad in mode Bf16: at most this many output pixels (8x8). Beyond it
/// gathering the patches costs more than it saves.
constexpr int64_t kPatchesWeightGradMaxPixels = 64;

/// Stride-1 convolutions (any kernel, 1x1 included) whose output has at most this many pixels
/// (4x4) get conv2d_patches_weight_grad too where patches_weight_grad_at_stride1() holds.
constexpr int64_t kPatchesWeightGradStride1MaxPixels = 16;

/// Whether conv2d_patches_weight_grad_applies takes the stride-1 convolutions of
/// kPatchesWeightGradStride1MaxPixels: default_patches_weight_grad_at_stride1(cpu_amd_family())
/// until set_patches_weight_grad_at_stride1 changes it (process-wide, like set_cpu_bf16_conv).
bool patches_weight_grad_at_stride1();
void set_patches_weight_grad_at_stride1(bool on);
/// The default for a CPU of this AMD family (precision.h's cpu_amd_family(); 0: not AMD): true
/// from family 26 (Zen 5), where it was measured faster.
bool default_patches_weight_grad_at_stride1(int amd_family);

/// Whether conv2d_forward(conv, x) computes its weight gradient with conv2d_patches_weight_grad:
/// with cpu_bf16_conv() Bf16, in grad mode under CPU bf16 autocast, for a channels_last input and
/// a 2-D convolution without bias, groups or dilation, with square kernel and padding, whose
/// kernel, stride and output size kPatchesWeightGradMaxPixels admits (stride >= 2, kernel >= 2),
/// or kPatchesWeightGradStride1MaxPixels (stride 1) where patches_weight_grad_at_stride1() holds.
bool conv2d_patches_weight_grad_applies(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// `conv`'s forward pass as every encoder runs it. Where conv2d_in_fp32 holds, it is the fp32
/// convolution of x (cast to fp32) outside autocast: an fp32 output, fp32 gradients. Where
/// conv2d_backward_in_fp32 holds, the forward pass is autocast's (the bf16 convolution of the
/// bf16-rounded input and weight) and the backward pass is the fp32 convolution backward of those
/// same bf16-rounded tensors, its gradients cast back to the input's and weight's dtypes. Where
/// conv2d_patches_weight_grad_applies holds, the forward pass and the input gradient are
/// autocast's and the weight gradient is conv2d_patches_weight_grad's. Elsewhere it is
/// conv.forward(x).
torch::Tensor conv2d_forward(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// Global average pooling, [N, C, H, W] -> [N, C], as x.mean({2, 3}) computes it, with a backward
/// pass whose gradient has x's memory format (ATen's mean backward may return it contiguous for a
/// channels_last x, and the ReLU backward before it then reads its inputs in two orders: much
/// slower, docs/decisions.md).
torch::Tensor global_avg_pool(const torch::Tensor& x);

}  // namespace vicreg
