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

/// A Sequential's forward pass, with its convolutions through conv2d_forward (kernels/conv.h).
torch::Tensor forward_layers(torch::nn::Sequential& layers, torch::Tensor x);

}  // namespace vicreg
