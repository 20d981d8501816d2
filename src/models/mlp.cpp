// The mlp encoder (models/mlp.h) and its backbone family, for vector data.
#include "vicreg/models/mlp.h"

#include "vicreg/error.h"
#include "vicreg/models/registry.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

namespace vicreg {

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

torch::Tensor MLPImpl::forward_features(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.in_features(), "MLP encoder expects [N, ",
              options.in_features(), "] vectors, got ", x.sizes());
  return layers->forward(x);
}

// ---------------------------------------------------------------------------------------------
// The family

namespace {

double count_mlp(const EncoderConfig& config) {
  double n = 0, in = static_cast<double>(config.in_features);
  for (const int64_t size : parse_layer_spec(config.encoder_mlp)) {
    n += in * size + size + 2.0 * size;  // Linear with bias, BatchNorm
    in = static_cast<double>(size);
  }
  return n;
}

/// in_features and the hidden sizes from the Linear layers, layers.0, layers.3, ... (each
/// followed by a BatchNorm and a ReLU).
std::optional<EncoderConfig> recognise_mlp(const NamedTensors& weights, const std::string& source) {
  const std::optional<EncoderWeights> layers = encoder_weights(weights, "layers.0.weight", source);
  if (!layers) return std::nullopt;
  EncoderConfig ec;
  ec.arch = "mlp";
  std::string spec;
  for (int i = 0;; i += 3) {
    const std::string name = "layers." + std::to_string(i) + ".weight";
    const torch::Tensor* w = layers->find(name);
    if (w == nullptr) break;
    if (w->dim() != 2 || w->size(0) < 1 || w->size(1) < 1) {
      throw FormatError(source + ": " + layers->prefix() + name +
                        " is not the weight of a linear layer");
    }
    if (i == 0) ec.in_features = w->size(1);
    spec += (spec.empty() ? "" : "-") + std::to_string(w->size(0));
  }
  ec.encoder_mlp = spec;
  return ec;
}

}  // namespace

BackboneFamily mlp_family() {
  BackboneFamily f;
  f.name = "mlp";
  f.archs = {"mlp"};
  f.help = "mlp (vectors; encoder_mlp)";
  f.traits.images = false;
  f.traits.convolutional = false;
  f.traits.features = FeatureLayout::Vector;
  f.traits.optimizer_hint = "adamw";
  f.check_settings = [](const EncoderConfig& config) { parse_layer_spec(config.encoder_mlp); };
  f.build = [](const EncoderConfig& config) -> Encoder {
    return std::make_shared<MLPImpl>(MLPOptions(config.in_features, config.encoder_mlp));
  };
  f.parameter_count = count_mlp;
  f.recognise = recognise_mlp;
  return f;
}

}  // namespace vicreg
