// ConvNeXts (models/convnext.h) and their backbone family.
#include "vicreg/models/convnext.h"

#include "vicreg/error.h"
#include "vicreg/models/layers.h"
#include "vicreg/models/registry.h"

#include <cmath>

namespace vicreg {

namespace {

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
                       int64_t groups = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                               .stride(stride)
                               .padding(padding)
                               .groups(groups)
                               .bias(true));
}

/// A holder module, for torchvision's numbered containers ("features.1.0.block.3").
std::shared_ptr<torch::nn::Module> holder(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

}  // namespace

LayerNorm2dImpl::LayerNorm2dImpl(int64_t channels) {
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
}

torch::Tensor LayerNorm2dImpl::forward(const torch::Tensor& x) {
  // [N, C, H, W] -> NHWC (free for channels_last) -> normalised over C -> back
  return layer_norm(x.permute({0, 2, 3, 1}), weight, bias, 1e-6).permute({0, 3, 1, 2});
}

ConvNeXtBlockImpl::ConvNeXtBlockImpl(int64_t dim, double drop_path_, double layer_scale_init)
    : drop_path(drop_path_) {
  layer_scale = register_parameter("layer_scale", torch::full({dim, 1, 1}, layer_scale_init));
  auto block = holder(*this, "block");
  dwconv = block->register_module("0", conv(dim, dim, 7, 1, 3, dim));
  norm = block->register_module("2",
                                torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-6)));
  pwconv1 = block->register_module("3", torch::nn::Linear(dim, 4 * dim));
  pwconv2 = block->register_module("5", torch::nn::Linear(4 * dim, dim));
}

torch::Tensor ConvNeXtBlockImpl::forward(const torch::Tensor& x) {
  // The MLP runs on NHWC (channels last in memory: no copy for a channels_last x).
  torch::Tensor y = conv2d_forward(*dwconv, x).permute({0, 2, 3, 1});
  y = torch::gelu(pwconv1(layer_norm(y, norm->weight, norm->bias, 1e-6)));
  // The layer scale folded into pwconv2 (diag(s) (W h + b) = (s W) h + s b): a product of the
  // weights instead of one over every cell's channels, in the compute dtype.
  const torch::Tensor s = layer_scale.view({-1});
  y = torch::linear(y, pwconv2->weight * s.unsqueeze(1), pwconv2->bias * s);
  // Under autocast the first stage's stream is fp32 (the stem's LayerNorm), the branch bf16: cast
  // it before the sum, as the ViT does (ATen's mixed-dtype add is the slower path).
  return x +
         vicreg::drop_path(y.permute({0, 3, 1, 2}), drop_path, is_training()).to(x.scalar_type());
}

ConvNeXtImpl::ConvNeXtImpl(const ConvNeXtOptions& options_) : options(options_) {
  const ConvNeXtOptions& o = options;
  TORCH_CHECK(o.depths().size() == 4 && o.dims().size() == 4 && o.in_channels() >= 1,
              "ConvNeXt: four stages' depths and dims, and in_channels >= 1");
  auto features = holder(*this, "features");
  auto stem_module = holder(*features, "0");
  stem = stem_module->register_module("0", o.small_stem()
                                               ? conv(o.in_channels(), o.dims()[0], 3, 1, 1)
                                               : conv(o.in_channels(), o.dims()[0], 4, 4, 0));
  stem_norm = stem_module->register_module("1", LayerNorm2d(o.dims()[0]));
  int64_t total = 0, k = 0;
  for (const int64_t d : o.depths()) total += d;
  for (size_t s = 0; s < 4; ++s) {
    if (s > 0) {
      auto down = holder(*features, std::to_string(2 * s));
      down_norms.push_back(down->register_module("0", LayerNorm2d(o.dims()[s - 1])));
      down_convs.push_back(down->register_module("1", conv(o.dims()[s - 1], o.dims()[s], 2, 2, 0)));
    }
    auto stage = holder(*features, std::to_string(2 * s + 1));
    stages.emplace_back();
    for (int64_t m = 0; m < o.depths()[s]; ++m) {
      stages.back().push_back(stage->register_module(
          std::to_string(m),
          ConvNeXtBlock(o.dims()[s], drop_path_rate(o.drop_path(), k++, total), o.layer_scale())));
    }
  }
  auto classifier = holder(*this, "classifier");
  final_norm = classifier->register_module("0", LayerNorm2d(o.dims()[3]));

  // torchvision's initialisation: truncated normal 0.02 for convolutions and linear layers,
  // zero biases.
  torch::NoGradGuard no_grad;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      trunc_normal_(c->weight, 0.02);
      c->bias.zero_();
    } else if (auto* l = m->as<torch::nn::Linear>()) {
      trunc_normal_(l->weight, 0.02);
      l->bias.zero_();
    }
  }
}

torch::Tensor ConvNeXtImpl::forward_features(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels(), "ConvNeXt expects [N, ",
              options.in_channels(), ", H, W] images, got ", x.sizes());
  x = stem_norm(conv2d_forward(*stem, x));
  for (size_t s = 0; s < 4; ++s) {
    if (s > 0) x = conv2d_forward(*down_convs[s - 1], down_norms[s - 1](x));
    for (auto& b : stages[s]) x = b(x);
  }
  return x;
}

torch::Tensor ConvNeXtImpl::pool(const torch::Tensor& features) {
  const torch::Tensor pooled = global_avg_pool(features);
  return layer_norm(pooled, final_norm->weight, final_norm->bias, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Names and the official layout

namespace {

struct ConvNeXtName {
  const char* name;
  std::vector<int64_t> depths;
  int64_t dim;
};

const std::vector<ConvNeXtName>& convnext_names() {
  static const std::vector<ConvNeXtName> names = {
      {"convnext_tiny", {3, 3, 9, 3}, 96},     {"convnext_small", {3, 3, 27, 3}, 96},
      {"convnext_base", {3, 3, 27, 3}, 128},   {"convnext_large", {3, 3, 27, 3}, 192},
      {"convnext_xlarge", {3, 3, 27, 3}, 256},
  };
  return names;
}

bool starts_with(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}

/// "stages.S.M.part" -> {S, M, part}; S or M -1 when the name is not of that form.
struct Indexed {
  int64_t first = -1, second = -1;
  std::string rest;
};
Indexed split_indices(const std::string& key, size_t from) {
  Indexed out;
  const size_t a = key.find('.', from);
  if (a == std::string::npos) return out;
  const size_t b = key.find('.', a + 1);
  try {
    out.first = std::stoll(key.substr(from, a - from));
    if (b != std::string::npos) out.second = std::stoll(key.substr(a + 1, b - a - 1));
  } catch (const std::exception&) {
    out.first = -1;
  }
  out.rest = b == std::string::npos ? key.substr(a + 1) : key.substr(b + 1);
  return out;
}

}  // namespace

std::optional<ConvNeXtOptions> convnext_shape(const std::string& arch) {
  for (const auto& e : convnext_names()) {
    if (arch == e.name) {
      return ConvNeXtOptions().depths(e.depths).dims({e.dim, 2 * e.dim, 4 * e.dim, 8 * e.dim});
    }
  }
  return std::nullopt;
}

std::optional<NamedTensors> convnext_weights_from_official(const NamedTensors& weights,
                                                           const std::string& source) {
  const std::optional<EncoderWeights> w =
      encoder_weights(weights, "downsample_layers.0.0.weight", source);
  if (!w) return std::nullopt;
  const std::string& prefix = w->prefix();
  NamedTensors out;
  for (const auto& [name, t] : weights) {
    if (!starts_with(name, prefix)) {
      out.emplace_back(name, t);
      continue;
    }
    const std::string key = name.substr(prefix.size());
    std::string renamed;
    torch::Tensor value = t;
    if (starts_with(key, "downsample_layers.")) {
      // K = 0: the stem (conv, norm); K > 0: (norm, conv) before stage K: features.2K
      const Indexed i = split_indices(key, 18);
      if (i.first >= 0 && i.first < 4 && (i.second == 0 || i.second == 1)) {
        renamed = "features." + std::to_string(2 * i.first) + "." + std::to_string(i.second) + "." +
                  i.rest;
      }
    } else if (starts_with(key, "stages.")) {
      const Indexed i = split_indices(key, 7);
      static const std::vector<std::pair<std::string, std::string>> parts = {
          {"dwconv.", "block.0."},
          {"norm.", "block.2."},
          {"pwconv1.", "block.3."},
          {"pwconv2.", "block.5."}};
      for (const auto& [from, to] : parts) {
        if (starts_with(i.rest, from)) renamed = to + i.rest.substr(from.size());
      }
      if (i.rest == "gamma") {
        renamed = "layer_scale";
        value = t.reshape({-1, 1, 1});
      }
      if (i.first < 0 || i.second < 0) renamed.clear();
      if (!renamed.empty()) {
        renamed = "features." + std::to_string(2 * i.first + 1) + "." + std::to_string(i.second) +
                  "." + renamed;
      }
    } else if (key == "norm.weight" || key == "norm.bias") {
      renamed = "classifier.0." + key.substr(5);
    } else if (key == "head.weight" || key == "head.bias") {
      renamed = "classifier.2." + key.substr(5);  // the classifier, skipped by the loader
    }
    if (renamed.empty()) {
      throw FormatError(source + ": " + name +
                        " is not part of an official ConvNeXt (downsample_layers, stages, norm, "
                        "head); a ConvNeXt without layer scale (gamma) or with another head is "
                        "not one vicreg builds");
    }
    out.emplace_back(prefix + renamed, value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The family

namespace {

void check_convnext(const EncoderConfig& config) { check_drop_path(config.drop_path); }

Encoder build_convnext(const EncoderConfig& config) {
  // Up to 64 px the small stem keeps the resolution; three halvings leave the last stage at
  // least one cell from 8 px (above 64 px torchvision's stride-4 stem always leaves one).
  const bool small = config.image_size <= 64;
  if (config.image_size < 8) {
    throw SettingError({"image_size"}, config.arch +
                                           " takes images of at least 8 px "
                                           "(image_size), got " +
                                           std::to_string(config.image_size));
  }
  return std::make_shared<ConvNeXtImpl>(convnext_shape(config.arch)
                                            .value()
                                            .in_channels(config.in_channels)
                                            .drop_path(config.drop_path)
                                            .small_stem(small));
}

double count_convnext(const EncoderConfig& config) {
  const ConvNeXtOptions o = convnext_shape(config.arch).value();
  const double c0 = static_cast<double>(o.dims()[0]);
  const double kernel = config.image_size <= 64 ? 3 : 4;
  double n = static_cast<double>(config.in_channels) * c0 * kernel * kernel + c0 + 2 * c0;
  for (size_t s = 0; s < 4; ++s) {
    const double d = static_cast<double>(o.dims()[s]);
    if (s > 0) {
      const double prev = static_cast<double>(o.dims()[s - 1]);
      n += 2 * prev + prev * d * 4 + d;
    }
    // layer scale, depthwise 7x7 + bias, LayerNorm, two Linear layers of 4x
    const double block = d + 49 * d + d + 2 * d + d * 4 * d + 4 * d + 4 * d * d + d;
    n += static_cast<double>(o.depths()[s]) * block;
  }
  return n + 2 * static_cast<double>(o.dims()[3]);
}

/// Depths and dims from torchvision's names, the stem (4x4: torchvision's, 3x3: the small-image
/// one) and channels from features.0.0.weight.
std::optional<EncoderConfig> recognise_convnext(const NamedTensors& weights,
                                                const std::string& source) {
  const std::optional<EncoderWeights> w =
      encoder_weights(weights, "features.1.0.block.0.weight", source);
  if (!w) return std::nullopt;
  const torch::Tensor* stem = w->find("features.0.0.weight");
  if (stem == nullptr || stem->dim() != 4 || stem->size(2) != stem->size(3) ||
      (stem->size(2) != 3 && stem->size(2) != 4)) {
    throw FormatError(source + ": " + w->prefix() +
                      "features.0.0.weight is not a ConvNeXt stem (4x4, torchvision's, or 3x3, "
                      "the small-image one)");
  }
  std::vector<int64_t> depths;
  for (int s = 0; s < 4; ++s) {
    int64_t n = 0;
    while (w->has("features." + std::to_string(2 * s + 1) + "." + std::to_string(n) +
                  ".block.0.weight")) {
      ++n;
    }
    depths.push_back(n);
  }
  const int64_t dim = stem->size(0);
  for (const auto& e : convnext_names()) {
    if (e.depths == depths && e.dim == dim) {
      EncoderConfig ec;
      ec.arch = e.name;
      ec.in_channels = stem->size(1);
      ec.image_size = stem->size(2) == 3 ? 32 : 224;  // what selects the stem in build_convnext
      return ec;
    }
  }
  throw FormatError(source + ": a ConvNeXt with blocks [" + std::to_string(depths[0]) + "," +
                    std::to_string(depths[1]) + "," + std::to_string(depths[2]) + "," +
                    std::to_string(depths[3]) + "] and a " + std::to_string(dim) +
                    "-channel stem, which is none of convnext_tiny, small, base, large, xlarge");
}

std::string torchvision_convnext(const EncoderImpl& encoder) {
  const auto* c = dynamic_cast<const ConvNeXtImpl*>(&encoder);
  if (!c) return "";
  std::string name;
  for (const auto& e : convnext_names()) {
    if (e.depths == c->options.depths() && e.dim == c->options.dims()[0]) name = e.name;
  }
  if (name.empty() || name == "convnext_xlarge") return "";  // torchvision has no xlarge
  std::string how = "m = torchvision.models." + name + "()";
  const std::string in = std::to_string(c->options.in_channels()),
                    d = std::to_string(c->options.dims()[0]);
  if (c->options.small_stem()) {
    how += "; m.features[0][0] = nn.Conv2d(" + in + ", " + d + ", 3, 1, 1)";
  } else if (c->options.in_channels() != 3) {
    how += "; m.features[0][0] = nn.Conv2d(" + in + ", " + d + ", 4, 4)";
  }
  return how +
         "; m.load_state_dict(tensors, strict=False) (missing: classifier.2.weight, "
         "classifier.2.bias); m.classifier[2] = nn.Identity() for the representation";
}

}  // namespace

BackboneFamily convnext_family() {
  BackboneFamily f;
  f.name = "convnext";
  for (const auto& e : convnext_names()) f.archs.push_back(e.name);
  f.help = "convnext_tiny/small/base/large/xlarge (a 3x3 stride-1 stem up to 64 px)";
  f.traits.images = true;
  f.traits.convolutional = true;
  f.traits.features = FeatureLayout::Map;
  f.traits.optimizer_hint = "adamw";
  f.check_settings = check_convnext;
  f.build = build_convnext;
  f.parameter_count = count_convnext;
  f.recognise = recognise_convnext;
  f.own_names = convnext_weights_from_official;
  f.torchvision_recipe = torchvision_convnext;
  return f;
}

}  // namespace vicreg
