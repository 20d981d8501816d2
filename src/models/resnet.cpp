// ResNets (models/resnet.h) and their backbone family: torchvision's resnet18 to resnet152, the
// reference's resnet200 and the official VICReg zoo's wide resnet50x2/x4/x5 and resnet200x2.
#include "vicreg/models/resnet.h"

#include "vicreg/error.h"
#include "vicreg/models/registry.h"

#include <torch/nn/functional/pooling.h>

#include <map>

namespace vicreg {

namespace F = torch::nn::functional;

ResidualBlockImpl::ResidualBlockImpl(int64_t in_planes, int64_t planes, int64_t stride,
                                     bool bottleneck)
    : bottleneck_(bottleneck) {
  const int64_t expansion = bottleneck ? 4 : 1;
  if (bottleneck) {
    conv1 = register_module("conv1", conv_no_bias(in_planes, planes, 1, 1));
    bn1 = register_module("bn1", BatchNorm(planes));
    conv2 = register_module("conv2", conv_no_bias(planes, planes, 3, stride));
    bn2 = register_module("bn2", BatchNorm(planes));
    conv3 = register_module("conv3", conv_no_bias(planes, planes * expansion, 1, 1));
    bn3 = register_module("bn3", BatchNorm(planes * expansion));
  } else {
    conv1 = register_module("conv1", conv_no_bias(in_planes, planes, 3, stride));
    bn1 = register_module("bn1", BatchNorm(planes));
    conv2 = register_module("conv2", conv_no_bias(planes, planes, 3, 1));
    bn2 = register_module("bn2", BatchNorm(planes));
  }
  if (stride != 1 || in_planes != planes * expansion) {
    downsample = register_module(
        "downsample", torch::nn::Sequential(conv_no_bias(in_planes, planes * expansion, 1, stride),
                                            BatchNorm(planes * expansion)));
  }
}

torch::Tensor ResidualBlockImpl::forward(torch::Tensor x) {
  torch::Tensor out = torch::relu(bn1(conv2d_forward(*conv1, x)));
  if (bottleneck_) {
    out = torch::relu(bn2(conv2d_forward(*conv2, out)));
    out = bn3(conv2d_forward(*conv3, out));
  } else {
    out = bn2(conv2d_forward(*conv2, out));
  }
  const torch::Tensor identity = downsample ? forward_layers(downsample, x) : x;
  return torch::relu(out + identity);
}

namespace {

/// Blocks per stage of each ResNet depth (BasicBlock below 50, Bottleneck from 50).
const std::map<int64_t, std::vector<int64_t>>& resnet_blocks() {
  static const std::map<int64_t, std::vector<int64_t>> t = {
      {18, {2, 2, 2, 2}},   {34, {3, 4, 6, 3}},   {50, {3, 4, 6, 3}},
      {101, {3, 4, 23, 3}}, {152, {3, 8, 36, 3}}, {200, {3, 24, 36, 3}}};
  return t;
}

}  // namespace

std::optional<int64_t> resnet_depth(bool bottleneck, const std::vector<int64_t>& blocks) {
  for (const auto& [depth, b] : resnet_blocks()) {
    if ((depth >= 50) == bottleneck && b == blocks) return depth;
  }
  return std::nullopt;
}

ResNetImpl::ResNetImpl(const ResNetOptions& options_) : options(options_) {
  const int64_t depth = options.depth(), widen = options.widen();
  const auto found = resnet_blocks().find(depth);
  if (found == resnet_blocks().end()) {
    throw UsageError("ResNet depth " + std::to_string(depth) +
                     " is not supported: use 18, 34, 50, 101, 152 or 200");
  }
  TORCH_CHECK(widen >= 1 && widen <= 16, "ResNet: widen must be in [1, 16], got ", widen);
  TORCH_CHECK(options.in_channels() >= 1, "ResNet: in_channels must be >= 1, got ",
              options.in_channels());
  const bool bottleneck = depth >= 50;
  const std::vector<int64_t>& blocks = found->second;
  const int64_t expansion = bottleneck ? 4 : 1, stem = 64 * widen;

  conv1 = register_module("conv1", options.small_stem()
                                       ? conv_no_bias(options.in_channels(), stem, 3, 1)
                                       : conv_no_bias(options.in_channels(), stem, 7, 2));
  bn1 = register_module("bn1", BatchNorm(stem));
  int64_t in_planes = stem;
  torch::nn::Sequential* layers[] = {&layer1, &layer2, &layer3, &layer4};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t planes = stem << stage;
    torch::nn::Sequential layer;
    for (int64_t b = 0; b < blocks[static_cast<size_t>(stage)]; ++b) {
      const int64_t stride = (b == 0 && stage > 0) ? 2 : 1;
      layer->push_back(ResidualBlock(in_planes, planes, stride, bottleneck));
      in_planes = planes * expansion;
    }
    *layers[stage] = register_module("layer" + std::to_string(stage + 1), layer);
  }
  output_dim_ = in_planes;
  init_conv_bn(*this);
  if (options.zero_init_residual()) {
    torch::NoGradGuard no_grad;
    for (auto& m : modules(false)) {
      if (auto* block = m->as<ResidualBlockImpl>()) block->last_bn()->weight.zero_();
    }
  }
}

torch::Tensor ResNetImpl::forward_features(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.in_channels(), "ResNet expects [N, ",
              options.in_channels(), ", H, W] images, got ", x.sizes());
  x = torch::relu(bn1(conv2d_forward(*conv1, x)));
  if (!options.small_stem()) x = F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(2).padding(1));
  return layer4->forward(layer3->forward(layer2->forward(layer1->forward(x))));
}

torch::Tensor ResNetImpl::pool(const torch::Tensor& features) { return global_avg_pool(features); }

// ---------------------------------------------------------------------------------------------
// The family

namespace {

struct ResNetName {
  const char* name;
  ResNetShape shape;
};
const std::vector<ResNetName>& resnet_names() {
  static const std::vector<ResNetName> t = {{"resnet18", {18, 1}},   {"resnet34", {34, 1}},
                                            {"resnet50", {50, 1}},   {"resnet101", {101, 1}},
                                            {"resnet152", {152, 1}}, {"resnet200", {200, 1}},
                                            {"resnet50x2", {50, 2}}, {"resnet50x4", {50, 4}},
                                            {"resnet50x5", {50, 5}}, {"resnet200x2", {200, 2}}};
  return t;
}

Encoder build_resnet(const EncoderConfig& config) {
  const ResNetShape shape = resnet_shape(config.arch).value();
  return std::make_shared<ResNetImpl>(ResNetOptions()
                                          .depth(shape.depth)
                                          .widen(shape.widen)
                                          .in_channels(config.in_channels)
                                          .small_stem(config.image_size <= 64)
                                          .zero_init_residual(config.zero_init_residual));
}

double count_resnet(const EncoderConfig& config) {
  // What build_resnet builds, counted without building it (doubles: no overflow on any input).
  const auto conv_bn = [](double in, double out, double kernel) {
    return in * out * kernel * kernel + 2 * out;
  };
  const ResNetShape shape = resnet_shape(config.arch).value();
  const bool bottleneck = shape.depth >= 50;
  const double expansion = bottleneck ? 4 : 1, stem = 64.0 * shape.widen;
  double n =
      conv_bn(static_cast<double>(config.in_channels), stem, config.image_size <= 64 ? 3 : 7);
  double in = stem;
  const std::vector<int64_t>& blocks = resnet_blocks().at(shape.depth);
  for (int stage = 0; stage < 4; ++stage) {
    const double planes = stem * (1 << stage);
    for (int64_t b = 0; b < blocks[static_cast<size_t>(stage)]; ++b) {
      n += bottleneck ? conv_bn(in, planes, 1) + conv_bn(planes, planes, 3) +
                            conv_bn(planes, planes * expansion, 1)
                      : conv_bn(in, planes, 3) + conv_bn(planes, planes, 3);
      if ((b == 0 && stage > 0) || in != planes * expansion) {
        n += conv_bn(in, planes * expansion, 1);
      }
      in = planes * expansion;
    }
  }
  return n;
}

/// Depth from the blocks per stage (18, 34: BasicBlock [2,2,2,2], [3,4,6,3]; 50, 101, 152, 200:
/// Bottleneck [3,4,6,3], [3,4,23,3], [3,8,36,3], [3,24,36,3]), the widening from conv1's output
/// channels / 64, in_channels and the stem (7x7: torchvision's, 3x3: the small-image one) from
/// conv1.weight.
std::optional<EncoderConfig> recognise_resnet(const NamedTensors& weights,
                                              const std::string& source) {
  const std::optional<EncoderWeights> w = encoder_weights(weights, "layer1.0.conv1.weight", source);
  if (!w) return std::nullopt;
  const torch::Tensor* conv1 = w->find("conv1.weight");
  if (conv1 == nullptr || conv1->dim() != 4) {
    throw FormatError(source + ": no 4-d " + w->prefix() + "conv1.weight");
  }
  const bool bottleneck = w->has("layer1.0.conv3.weight");
  std::vector<int64_t> blocks;
  for (int layer = 1; layer <= 4; ++layer) {
    int64_t n = 0;
    while (w->has("layer" + std::to_string(layer) + "." + std::to_string(n) + ".conv1.weight")) {
      ++n;
    }
    blocks.push_back(n);
  }
  // The reference's wide ResNets multiply every width, the stem's too.
  const std::optional<int64_t> depth = resnet_depth(bottleneck, blocks);
  const int64_t stem = conv1->size(0);
  const std::string described = std::string("a ResNet with ") +
                                (bottleneck ? "Bottleneck" : "BasicBlock") + " blocks [" +
                                std::to_string(blocks[0]) + "," + std::to_string(blocks[1]) + "," +
                                std::to_string(blocks[2]) + "," + std::to_string(blocks[3]) +
                                "] and a " + std::to_string(stem) + "-channel stem";
  const torch::Tensor& inner = *w->find("layer1.0.conv1.weight");
  if (inner.dim() != 4 || inner.size(0) != stem) {
    throw FormatError(source + ": " + described + " whose first block is " +
                      std::to_string(inner.dim() == 4 ? inner.size(0) : 0) +
                      " wide: neither a torchvision ResNet nor one of the official VICReg wide "
                      "ResNets (torchvision's wide_resnet50_2 widens only the blocks' inner "
                      "convolutions, which vicreg does not build)");
  }
  const std::optional<std::string> arch =
      depth && stem % 64 == 0 ? resnet_arch(*depth, stem / 64) : std::nullopt;
  if (!arch) {
    std::string names;
    for (const auto& e : resnet_names()) names += (names.empty() ? "" : ", ") + std::string(e.name);
    throw FormatError(source + ": " + described + ", which is none of " + names);
  }
  EncoderConfig ec;
  ec.arch = *arch;
  const int64_t kernel = conv1->size(3);
  if (kernel != 3 && kernel != 7) {
    throw FormatError(source + ": conv1 has a " + std::to_string(kernel) + "x" +
                      std::to_string(kernel) +
                      " kernel; vicreg's ResNets have 7x7 (torchvision) or 3x3 (small-image stem)");
  }
  ec.in_channels = conv1->size(1);
  ec.image_size = kernel == 3 ? 32 : 224;  // what selects the stem in build_resnet
  return ec;
}

std::string torchvision_resnet(const EncoderImpl& encoder) {
  const auto* resnet = dynamic_cast<const ResNetImpl*>(&encoder);
  // torchvision has no resnet200 and no model of the reference's widening.
  if (!resnet || resnet->options.widen() != 1 || resnet->options.depth() == 200) return "";
  const std::string c = std::to_string(resnet->options.in_channels());
  std::string how =
      "m = torchvision.models.resnet" + std::to_string(resnet->options.depth()) + "()";
  if (resnet->options.small_stem()) {
    how += "; m.conv1 = nn.Conv2d(" + c + ", 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()";
  } else if (resnet->options.in_channels() != 3) {
    how += "; m.conv1 = nn.Conv2d(" + c + ", 64, 7, 2, 3, bias=False)";
  }
  return how +
         "; m.load_state_dict(tensors, strict=False) (missing: fc.weight, fc.bias); "
         "m.fc = nn.Identity() for the representation";
}

}  // namespace

std::optional<ResNetShape> resnet_shape(const std::string& arch) {
  for (const auto& e : resnet_names()) {
    if (e.name == arch) return e.shape;
  }
  return std::nullopt;
}

std::optional<std::string> resnet_arch(int64_t depth, int64_t widen) {
  for (const auto& e : resnet_names()) {
    if (e.shape.depth == depth && e.shape.widen == widen) return std::string(e.name);
  }
  return std::nullopt;
}

BackboneFamily resnet_family() {
  BackboneFamily f;
  f.name = "resnet";
  for (const auto& e : resnet_names()) f.archs.push_back(e.name);
  f.help =
      "resnet18/34/50/101/152/200, or the official VICReg zoo's wide resnet50x2, "
      "resnet50x4, resnet50x5, resnet200x2";
  f.traits.images = true;
  f.traits.convolutional = true;
  f.traits.features = FeatureLayout::Map;
  f.traits.optimizer_hint = "lars";
  f.check_settings = [](const EncoderConfig&) {
  };  // a ResNet is its name; the stem follows the size
  f.build = build_resnet;
  f.parameter_count = count_resnet;
  f.recognise = recognise_resnet;
  f.torchvision_recipe = torchvision_resnet;
  return f;
}

}  // namespace vicreg
