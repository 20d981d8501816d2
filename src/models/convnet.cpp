// The ConvNet (models/convnet.h) and its backbone family.
#include "vicreg/models/convnet.h"

#include "vicreg/error.h"
#include "vicreg/models/registry.h"

#include <torch/nn/modules/activation.h>

#include <cmath>

namespace vicreg {

ConvNetImpl::ConvNetImpl(const ConvNetOptions& options_) : options(options_) {
  TORCH_CHECK(options.in_channels() >= 1 && options.width() >= 1 && options.stages() >= 1 &&
                  options.convs_per_stage() >= 1,
              "ConvNet: in_channels, width, stages and convs_per_stage must be >= 1");
  int64_t in = options.in_channels();
  for (int64_t s = 0; s < options.stages(); ++s) {
    const int64_t out = options.width() << s;
    torch::nn::Sequential stage;
    for (int64_t c = 0; c < options.convs_per_stage(); ++c) {
      stage->push_back(conv_no_bias(c == 0 ? in : out, out, 3, (c == 0 && s > 0) ? 2 : 1));
      stage->push_back(BatchNorm(out));
      stage->push_back(torch::nn::ReLU(torch::nn::ReLUOptions(/*inplace=*/true)));
    }
    stages.push_back(register_module("stage" + std::to_string(s + 1), stage));
    in = out;
  }
  TORCH_CHECK(options.final_conv() >= 0, "ConvNet: final_conv must be >= 0");
  if (options.final_conv() > 0) {
    final = register_module(
        "final", torch::nn::Sequential(conv_no_bias(in, options.final_conv(), 1, 1),
                                       BatchNorm(options.final_conv()),
                                       torch::nn::ReLU(torch::nn::ReLUOptions(/*inplace=*/true))));
    in = options.final_conv();
  }
  output_dim_ = in;
  init_conv_bn(*this);
}

torch::Tensor ConvNetImpl::forward_features(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels(), "ConvNet expects [N, ",
              options.in_channels(), ", H, W] images, got ", x.sizes());
  for (auto& stage : stages) x = forward_layers(stage, x);
  if (final) x = forward_layers(final, x);
  return x;
}

torch::Tensor ConvNetImpl::pool(const torch::Tensor& features) { return global_avg_pool(features); }

// ---------------------------------------------------------------------------------------------
// The family

namespace {

void check_convnet(const EncoderConfig& config) {
  if (config.stages < 1 || config.stages > 8) {
    throw SettingError({"stages"},
                       "convnet: stages must be in [1, 8], got " + std::to_string(config.stages));
  }
  if (config.width < 1 || config.width > 4096) {
    throw SettingError({"width"},
                       "convnet: width must be in [1, 4096], got " + std::to_string(config.width));
  }
  if (config.final_conv < 0 || config.final_conv > kMaxFinalConv) {
    throw SettingError({"final_conv"}, "convnet: final_conv must be in [0, " +
                                           std::to_string(kMaxFinalConv) + "], got " +
                                           std::to_string(config.final_conv));
  }
}

Encoder build_convnet(const EncoderConfig& config) {
  const int64_t min_side = int64_t{1} << (config.stages - 1);
  if (config.image_size < min_side) {
    throw UsageError("convnet: " + std::to_string(config.stages) +
                     " stages need images of at least " + std::to_string(min_side) + " px, got " +
                     std::to_string(config.image_size));
  }
  return std::make_shared<ConvNetImpl>(ConvNetOptions()
                                           .in_channels(config.in_channels)
                                           .width(config.width)
                                           .stages(config.stages)
                                           .final_conv(config.final_conv));
}

double count_convnet(const EncoderConfig& config) {
  // What build_convnet builds, counted without building it (doubles: no overflow on any input).
  const auto conv_bn = [](double in, double out, double kernel) {
    return in * out * kernel * kernel + 2 * out;
  };
  double n = 0;
  const int64_t per_stage = ConvNetOptions().convs_per_stage();
  double in = static_cast<double>(config.in_channels);
  for (int64_t s = 0; s < std::min<int64_t>(config.stages, 62); ++s) {
    const double out = std::ldexp(static_cast<double>(config.width), static_cast<int>(s));
    for (int64_t c = 0; c < per_stage; ++c) n += conv_bn(c == 0 ? in : out, out, 3);
    in = out;
  }
  if (config.final_conv > 0) n += conv_bn(in, static_cast<double>(config.final_conv), 1);
  return n;
}

/// width and in_channels from stage1's first convolution, stages from the stage modules,
/// final_conv from final.0 (0 without it). The image size is not in the weights: the smallest
/// the stages take.
std::optional<EncoderConfig> recognise_convnet(const NamedTensors& weights,
                                               const std::string& source) {
  const std::optional<EncoderWeights> w = encoder_weights(weights, "stage1.0.weight", source);
  if (!w) return std::nullopt;
  const torch::Tensor& first = *w->find("stage1.0.weight");
  if (first.dim() != 4 || first.size(2) != 3 || first.size(3) != 3) {
    throw FormatError(source + ": " + w->prefix() + "stage1.0.weight is not a 3x3 convolution");
  }
  EncoderConfig ec;
  ec.arch = "convnet";
  ec.width = first.size(0);
  ec.in_channels = first.size(1);
  ec.stages = 0;
  while (w->has("stage" + std::to_string(ec.stages + 1) + ".0.weight")) ++ec.stages;
  const torch::Tensor* final = w->find("final.0.weight");
  if (final != nullptr && final->dim() != 4) {
    throw FormatError(source + ": " + w->prefix() + "final.0.weight is not a convolution");
  }
  ec.final_conv = final == nullptr ? 0 : final->size(0);
  try {
    check_convnet(ec);
  } catch (const UsageError& e) {
    throw FormatError(source + ": a ConvNet vicreg does not build (" + e.what() + ")");
  }
  ec.image_size = int64_t{1} << (ec.stages - 1);
  return ec;
}

}  // namespace

BackboneFamily convnet_family() {
  BackboneFamily f;
  f.name = "convnet";
  f.archs = {"convnet"};
  f.help = "convnet (small images; width, stages, final_conv)";
  f.traits.images = true;
  f.traits.convolutional = true;
  f.traits.features = FeatureLayout::Map;
  f.traits.optimizer_hint = "adamw";
  f.check_settings = check_convnet;
  f.build = build_convnet;
  f.parameter_count = count_convnet;
  f.recognise = recognise_convnet;
  return f;
}

}  // namespace vicreg
