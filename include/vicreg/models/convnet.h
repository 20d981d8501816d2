// ConvNet: a compact encoder for small images that trains in minutes on two cores.
#pragma once

#include "vicreg/models.h"
#include "vicreg/models/layers.h"

#include <cstdint>
#include <string>
#include <vector>

namespace vicreg {

/// The largest final_conv accepted.
constexpr int64_t kMaxFinalConv = 65536;

struct ConvNetOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  /// Channels of the first stage; stage k has width * 2^k.
  TORCH_ARG(int64_t, width) = 32;
  /// Number of stages. The first keeps the resolution, each later one halves it.
  TORCH_ARG(int64_t, stages) = 4;
  /// 3x3 conv + BatchNorm + ReLU layers per stage (the first of a stage carries the stride).
  TORCH_ARG(int64_t, convs_per_stage) = 2;
  /// Channels of a last 1x1 conv + BatchNorm + ReLU after the stages (MobileNet's feature conv),
  /// which then set the representation's size; 0: none.
  TORCH_ARG(int64_t, final_conv) = 1024;
};

/// stage1 .. stageK, each a Sequential of (Conv2d 3x3 without bias, BatchNorm2d, ReLU) x
/// convs_per_stage, with final_conv > 0 a Sequential `final` of (Conv2d 1x1 without bias,
/// BatchNorm2d, ReLU), then global average pooling. Representation: final_conv channels, or
/// width * 2^(stages-1) without it.
class ConvNetImpl : public EncoderImpl {
 public:
  explicit ConvNetImpl(const ConvNetOptions& options);
  /// x: [N, in_channels, H, W] -> the last stage's (or final conv's) map [N, output_dim, h, w]
  torch::Tensor forward_features(torch::Tensor x) override;
  /// Global average pooling.
  torch::Tensor pool(const torch::Tensor& features) override;
  FeatureLayout feature_layout() const override { return FeatureLayout::Map; }
  int64_t output_dim() const override { return output_dim_; }

  ConvNetOptions options;
  std::vector<torch::nn::Sequential> stages;
  torch::nn::Sequential final{nullptr};

 private:
  int64_t output_dim_ = 0;
};

}  // namespace vicreg
