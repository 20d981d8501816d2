// The mlp encoder (models/mlp.h) and its backbone family, for vector data.
#include "vicreg/models/mlp.h"

#include "vicreg/error.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/models/registry.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include <map>

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
  const std::vector<std::string> prefixes = prefixes_of(weights, "layers.0.weight");
  if (prefixes.empty()) return std::nullopt;
  const std::string p = choose_encoder_prefix(prefixes, source);
  std::map<std::string, torch::Tensor> by_name(weights.begin(), weights.end());
  EncoderConfig ec;
  ec.arch = "mlp";
  std::string spec;
  for (int i = 0;; i += 3) {
    const auto w = by_name.find(p + "layers." + std::to_string(i) + ".weight");
    if (w == by_name.end()) break;
    if (w->second.dim() != 2 || w->second.size(0) < 1 || w->second.size(1) < 1) {
      throw FormatError(source + ": " + w->first + " is not the weight of a linear layer");
    }
    if (i == 0) ec.in_features = w->second.size(1);
    spec += (spec.empty() ? "" : "-") + std::to_string(w->second.size(0));
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
