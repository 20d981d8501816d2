// ResNets: torchvision's v1.5 (stride in the 3x3 conv of the bottleneck) with torchvision's
// parameter names, and the official VICReg zoo's widened ones.
#pragma once

#include "vicreg/models.h"
#include "vicreg/models/layers.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

struct ResNetOptions {
  /// 18, 34 (BasicBlock), 50, 101, 152 or 200 (Bottleneck).
  TORCH_ARG(int64_t, depth) = 50;
  /// facebookresearch/vicreg's widening (its resnet50x2, x4, x5, resnet200x2): every width, the
  /// stem's and each block's output included, times this. Not torchvision's wide_resnet50_2,
  /// which widens only the inner 3x3 convolutions of the blocks.
  TORCH_ARG(int64_t, widen) = 1;
  TORCH_ARG(int64_t, in_channels) = 3;
  /// 3x3 stride-1 first conv and no max-pool (solo-learn's CIFAR stem), for inputs up to 64 px.
  TORCH_ARG(bool, small_stem) = false;
  /// Zero the last BatchNorm weight of each residual block (the reference does this for ResNet-50).
  TORCH_ARG(bool, zero_init_residual) = true;
};

/// A ResNet's depth and widening (resnet50x2: {50, 2}).
struct ResNetShape {
  int64_t depth = 0, widen = 1;
};
/// The shape of a ResNet name (resnet50x2: {50, 2}); nullopt for other names.
std::optional<ResNetShape> resnet_shape(const std::string& arch);
/// The depth of a ResNet with these blocks per stage (torchvision's layer1..layer4); nullopt when
/// no depth has them.
std::optional<int64_t> resnet_depth(bool bottleneck, const std::vector<int64_t>& blocks);
/// The name of the ResNet of a depth and widening; nullopt when there is none.
std::optional<std::string> resnet_arch(int64_t depth, int64_t widen);

/// A residual block: BasicBlock (conv1, bn1, conv2, bn2) or Bottleneck (conv1 1x1, bn1, conv2 3x3
/// with the stride, bn2, conv3 1x1, bn3), plus `downsample` (0: 1x1 conv, 1: BatchNorm) when the
/// shape changes. Names as in torchvision.
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(int64_t in_planes, int64_t planes, int64_t stride, bool bottleneck);
  /// x: [N, in_planes, H, W] -> [N, planes * expansion, H / stride, W / stride]
  torch::Tensor forward(torch::Tensor x);
  /// The BatchNorm whose weight zero_init_residual zeroes.
  BatchNorm last_bn() const { return bottleneck_ ? bn3 : bn2; }

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  BatchNorm bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};

 private:
  bool bottleneck_;
};
TORCH_MODULE(ResidualBlock);

class ResNetImpl : public EncoderImpl {
 public:
  explicit ResNetImpl(const ResNetOptions& options);
  /// x: [N, in_channels, H, W] -> layer4's map [N, output_dim, H / 32, W / 32] (H / 8 with the
  /// small stem)
  torch::Tensor forward_features(torch::Tensor x) override;
  /// Global average pooling (no fc).
  torch::Tensor pool(const torch::Tensor& features) override;
  FeatureLayout feature_layout() const override { return FeatureLayout::Map; }
  /// 512 for ResNet-18/34, 2048 for ResNet-50/101/152/200, times the widening (resnet50x2: 4096).
  int64_t output_dim() const override { return output_dim_; }

  ResNetOptions options;
  torch::nn::Conv2d conv1{nullptr};
  BatchNorm bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};

 private:
  int64_t output_dim_ = 0;
};

}  // namespace vicreg
