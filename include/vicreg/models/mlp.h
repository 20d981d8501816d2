// The mlp encoder, for vector data.
#pragma once

#include "vicreg/models.h"

#include <cstdint>
#include <string>
#include <vector>

namespace vicreg {

struct MLPOptions {
  MLPOptions(int64_t in_features, std::string hidden)
      : in_features_(in_features), hidden_(std::move(hidden)) {}
  TORCH_ARG(int64_t, in_features);
  /// Sizes of the layers, e.g. "512-512": Linear -> BatchNorm1d -> ReLU each.
  TORCH_ARG(std::string, hidden);
};

class MLPImpl : public EncoderImpl {
 public:
  explicit MLPImpl(const MLPOptions& options);
  /// x: [N, in_features] -> [N, output_dim] (the last hidden size)
  torch::Tensor forward_features(torch::Tensor x) override;
  /// The identity: a vector has nothing to pool.
  torch::Tensor pool(const torch::Tensor& features) override { return features; }
  FeatureLayout feature_layout() const override { return FeatureLayout::Vector; }
  int64_t output_dim() const override { return output_dim_; }

  MLPOptions options;
  torch::nn::Sequential layers{nullptr};

 private:
  int64_t output_dim_ = 0;
};

}  // namespace vicreg
