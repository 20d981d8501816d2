// ConvNeXts (Liu et al., 2022) with torchvision's module names, so that their weights load into
// torchvision.models.convnext_*; the official layout (facebookresearch/ConvNeXt, VICRegL) is read
// by renaming (convnext_weights_from_official).
#pragma once

#include "vicreg/io/named_tensors.h"
#include "vicreg/models.h"

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

struct ConvNeXtOptions {
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(std::vector<int64_t>, depths) = std::vector<int64_t>{3, 3, 9, 3};
  TORCH_ARG(std::vector<int64_t>, dims) = std::vector<int64_t>{96, 192, 384, 768};
  /// Stochastic depth: block k of all K drops its branch with probability drop_path k / (K - 1).
  TORCH_ARG(double, drop_path) = 0;
  /// The small-image stem (28-64 px): a 3x3 stride-1 convolution instead of torchvision's 4x4
  /// stride-4 patchify, as the ResNets' small stem keeps the resolution.
  TORCH_ARG(bool, small_stem) = false;
  TORCH_ARG(double, layer_scale) = 1e-6;  ///< the layer scale's initial value
};

/// LayerNorm over the channels of [N, C, H, W] (torchvision's LayerNorm2d; eps 1e-6): weight and
/// bias [C].
class LayerNorm2dImpl : public torch::nn::Module {
 public:
  explicit LayerNorm2dImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm2d);

/// torchvision's CNBlock: x + drop_path(layer_scale * pwconv2(GELU(pwconv1(LN(dwconv(x)))))),
/// the layer scale applied to pwconv2's weights and bias (the same product, reassociated),
/// named block.0 (7x7 depthwise), block.2 (LayerNorm), block.3, block.5 (Linear, 4x), and
/// layer_scale [C, 1, 1].
class ConvNeXtBlockImpl : public torch::nn::Module {
 public:
  ConvNeXtBlockImpl(int64_t dim, double drop_path, double layer_scale);
  /// x: [N, dim, H, W] -> the same
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor layer_scale;
  torch::nn::Conv2d dwconv{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear pwconv1{nullptr}, pwconv2{nullptr};
  double drop_path;
};
TORCH_MODULE(ConvNeXtBlock);

/// features.0 (stem: conv, LayerNorm2d), features.1/3/5/7 (stages of blocks), features.2/4/6
/// (LayerNorm2d, 2x2 stride-2 conv), classifier.0 (LayerNorm2d of the pooled vector): the names
/// of torchvision's ConvNeXt, whose classifier.2 (Linear) vicreg leaves out.
class ConvNeXtImpl : public EncoderImpl {
 public:
  explicit ConvNeXtImpl(const ConvNeXtOptions& options);
  /// x: [N, in_channels, H, W] -> the last stage's map [N, dims[3], H / 32, W / 32] (H / 8 with
  /// the small stem)
  torch::Tensor forward_features(torch::Tensor x) override;
  /// Global average pooling, then the final LayerNorm.
  torch::Tensor pool(const torch::Tensor& features) override;
  FeatureLayout feature_layout() const override { return FeatureLayout::Map; }
  int64_t output_dim() const override { return options.dims().back(); }

  ConvNeXtOptions options;
  torch::nn::Conv2d stem{nullptr};
  LayerNorm2d stem_norm{nullptr}, final_norm{nullptr};
  std::vector<std::vector<ConvNeXtBlock>> stages;
  std::vector<LayerNorm2d> down_norms;
  std::vector<torch::nn::Conv2d> down_convs;
};

/// The ConvNeXt sizes by name: convnext_tiny [3,3,9,3] x 96, small [3,3,27,3] x 96, base x 128,
/// large x 192, xlarge x 256 (the dims double per stage); nullopt for other names.
std::optional<ConvNeXtOptions> convnext_shape(const std::string& arch);

/// `weights` with the official ConvNeXt names (downsample_layers.K, stages.S.M.{dwconv, norm,
/// pwconv1, pwconv2, gamma}, norm, head) renamed to torchvision's, under the same prefix; nullopt
/// when it holds none (no downsample_layers.0.0.weight).
std::optional<NamedTensors> convnext_weights_from_official(const NamedTensors& weights,
                                                           const std::string& source);

}  // namespace vicreg
