// Building blocks shared by the convolutional encoder families (models/*.h).
#pragma once

#include "vicreg/kernels/conv.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <cstdint>

namespace vicreg {

/// A k x k convolution without bias, padding k / 2.
torch::nn::Conv2d conv_no_bias(int64_t in, int64_t out, int64_t kernel, int64_t stride);

/// torchvision's ResNet initialisation of every Conv2d and BatchNorm inside `module`: Kaiming
/// normal (fan_out, relu) for the convolutions, BatchNorm weight 1 and bias 0.
void init_conv_bn(torch::nn::Module& module);

/// Fills `t` in place from a normal distribution of mean 0 and standard deviation `std`
/// truncated to [-2 std, 2 std] (timm's and torchvision's trunc_normal_ for transformers).
void trunc_normal_(torch::Tensor t, double std);

/// Stochastic depth (Huang et al.; torchvision's StochasticDepth mode "row"): in training mode
/// with p > 0, each sample's `branch` [N, ...] is zeroed with probability p and the others scaled
/// by 1 / (1 - p); otherwise `branch` itself.
torch::Tensor drop_path(const torch::Tensor& branch, double p, bool training);

/// Throws SettingError naming drop_path unless 0 <= rate < 1.
void check_drop_path(double rate);

/// The rate of block k of n under a linear stochastic depth rule ending at `rate`: rate k / (n-1).
double drop_path_rate(double rate, int64_t k, int64_t n);

/// LayerNorm over x's last dimension (weight and bias of that size), computed in fp32 for a
/// reduced-precision x as autocast's fp32 island: LibTorch 1.13's CPU kernel takes no bf16 input
/// with fp32 weights. Returns fp32 then, x's dtype otherwise.
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias, double eps);

/// A Sequential's forward pass, with its convolutions through conv2d_forward (kernels/conv.h).
torch::Tensor forward_layers(torch::nn::Sequential& layers, torch::Tensor x);

}  // namespace vicreg
