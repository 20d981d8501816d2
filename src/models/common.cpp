// The parts every model shares: layer specs, BatchNorm, the expander, building encoders through
// the registry, and the two-branch VICReg model (models.h).
#include "vicreg/models.h"

#include "vicreg/distributed.h"
#include "vicreg/error.h"
#include "vicreg/models/layers.h"
#include "vicreg/models/registry.h"

#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>
#include <cmath>
#include <ostream>

namespace vicreg {

std::vector<int64_t> parse_layer_spec(const std::string& spec) {
  std::vector<int64_t> sizes;
  const auto fail = [&spec]() {
    throw UsageError("invalid layer spec '" + spec +
                     "': expected positive integers joined by '-', e.g. 8192-8192-8192");
  };
  if (spec.empty()) fail();
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t end = std::min(spec.find('-', start), spec.size());
    const std::string part = spec.substr(start, end - start);
    if (part.empty() || part.size() > 9 ||
        !std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail();
    }
    const int64_t size = std::stoll(part);
    if (size <= 0) fail();
    sizes.push_back(size);
    start = end + 1;
  }
  return sizes;
}

// ---------------------------------------------------------------------------------------------
// Layers the convolutional families share

torch::nn::Conv2d conv_no_bias(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

/// torchvision's ResNet initialisation: Kaiming normal (fan_out, relu) for convs, BN (1, 0).
void init_conv_bn(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* b = m->as<BatchNorm>()) {
      torch::nn::init::ones_(b->weight);
      torch::nn::init::zeros_(b->bias);
    }
  }
}

void trunc_normal_(torch::Tensor t, double std) {
  // The inverse-CDF method of PyTorch's nn.init.trunc_normal_: uniform in [cdf(-2), cdf(2)].
  torch::NoGradGuard no_grad;
  const double lo = std::erf(-2.0 / std::sqrt(2.0)), hi = std::erf(2.0 / std::sqrt(2.0));
  t.uniform_(lo, hi).erfinv_().mul_(std * std::sqrt(2.0)).clamp_(-2 * std, 2 * std);
}

torch::Tensor drop_path(const torch::Tensor& branch, double p, bool training) {
  if (!training || p <= 0) return branch;
  std::vector<int64_t> shape(static_cast<size_t>(branch.dim()), 1);
  shape[0] = branch.size(0);
  const torch::Tensor keep =
      torch::empty(shape, branch.options()).bernoulli_(1.0 - p).div_(1.0 - p);
  return branch * keep;
}

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias, double eps) {
  const bool low = x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf;
  return torch::layer_norm(low ? x.to(torch::kFloat) : x, {weight.size(0)}, weight, bias, eps);
}

void check_drop_path(double rate) {
  if (!(rate >= 0 && rate < 1)) {
    throw SettingError({"drop_path"}, "drop_path must be in [0, 1), got " + std::to_string(rate));
  }
}

double drop_path_rate(double rate, int64_t k, int64_t n) {
  return n > 1 ? rate * static_cast<double>(k) / static_cast<double>(n - 1) : rate;
}

/// A Sequential's forward pass, with its convolutions through conv2d_forward.
torch::Tensor forward_layers(torch::nn::Sequential& layers, torch::Tensor x) {
  for (auto& m : *layers) {
    if (auto* c = m.ptr()->as<torch::nn::Conv2dImpl>()) {
      x = conv2d_forward(*c, x);
    } else {
      x = m.forward(x);
    }
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

BatchNormImpl::BatchNormImpl(const BatchNormOptions& options_) : options(options_) { reset(); }

void BatchNormImpl::reset() {
  TORCH_CHECK(options.num_features() >= 1, "BatchNorm: num_features must be >= 1, got ",
              options.num_features());
  const int64_t c = options.num_features();
  weight = register_parameter("weight", torch::ones({c}));
  bias = register_parameter("bias", torch::zeros({c}));
  running_mean = register_buffer("running_mean", torch::zeros({c}));
  running_var = register_buffer("running_var", torch::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
}

void BatchNormImpl::pretty_print(std::ostream& stream) const {
  stream << "vicreg::BatchNorm(" << options.num_features() << ", eps=" << options.eps()
         << ", momentum=" << options.momentum() << (sync_group ? ", synchronised" : "") << ")";
}

torch::Tensor BatchNormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2 && x.size(1) == options.num_features(), "BatchNorm(",
              options.num_features(), ") expects [N, ", options.num_features(),
              ", ...] inputs, got ", x.sizes());
  if (is_training()) {
    torch::NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
  if (is_training() && sync_group && sync_group->world_size() > 1) {
    return sync_batch_norm(x, weight, bias, running_mean, running_var, options.momentum(),
                           options.eps(), sync_group);
  }
  TORCH_CHECK(!is_training() || x.numel() / x.size(1) > 1,
              "BatchNorm: expected more than 1 value per channel when training, got input of "
              "size ",
              x.sizes(), " (use a batch of at least 2)");
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(),
                           options.momentum(), options.eps(),
                           at::globalContext().userEnabledCuDNN());
}

int64_t convert_sync_batchnorm(torch::nn::Module& module, std::shared_ptr<ProcessGroup> group) {
  int64_t n = 0;
  for (auto& m : module.modules(/*include_self=*/true)) {
    if (auto* bn = m->as<BatchNorm>()) {
      bn->sync_group = group;
      ++n;
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Expander

namespace {

/// LayerNorm over the features of [N, F] (weight, bias: LayerNorm's names), in fp32 under
/// autocast (layer_norm, models/layers.h).
class FeatureLayerNormImpl : public torch::nn::Module {
 public:
  explicit FeatureLayerNormImpl(int64_t features) {
    weight = register_parameter("weight", torch::ones({features}));
    bias = register_parameter("bias", torch::zeros({features}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return layer_norm(x, weight, bias, 1e-5); }
  torch::Tensor weight, bias;
};
TORCH_MODULE(FeatureLayerNorm);

}  // namespace

ExpanderImpl::ExpanderImpl(int64_t in_features, const std::string& spec, bool layer_norm) {
  TORCH_CHECK(in_features >= 1, "Expander: in_features must be >= 1, got ", in_features);
  const std::vector<int64_t> sizes = parse_layer_spec(spec);
  int64_t in = in_features;
  const auto add = [this](auto module) {
    register_module(std::to_string(layers_.size()), module.ptr());
    layers_.emplace_back(module);
  };
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    add(torch::nn::Linear(in, sizes[i]));
    if (layer_norm) {
      add(FeatureLayerNorm(sizes[i]));
    } else {
      add(BatchNorm(sizes[i]));
    }
    add(torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    in = sizes[i];
  }
  add(torch::nn::Linear(torch::nn::LinearOptions(in, sizes.back()).bias(false)));
  output_dim_ = sizes.back();
}

torch::Tensor ExpanderImpl::forward(torch::Tensor y) {
  for (auto& layer : layers_) y = layer.forward(y);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Building encoders by name

namespace {

/// The input-shape checks every family shares: images for image backbones, vectors for vector
/// ones.
void check_input(const BackboneFamily& family, const EncoderConfig& config) {
  if (!family.traits.images) {
    if (config.in_features < 1) {
      throw UsageError("backbone " + config.arch +
                       " needs vector data (the npy data set): it was given no input size");
    }
    return;
  }
  if (config.in_features > 0 && config.image_size <= 0) {
    throw UsageError("backbone " + config.arch +
                     " needs images; for vector data (.npy) use the mlp backbone");
  }
  if (config.in_channels < 1 || config.in_channels > 4096) {
    throw UsageError("backbone " + config.arch + ": images of " +
                     std::to_string(config.in_channels) + " channels (1 to 4,096 are possible)");
  }
}

}  // namespace

Encoder make_encoder(const EncoderConfig& config) {
  const BackboneFamily& family = backbone_family(config.arch);
  check_input(family, config);
  family.check_settings(config);
  return family.build(config);
}

double encoder_parameter_count(const EncoderConfig& config) {
  return backbone_family(config.arch).parameter_count(config);
}

// ---------------------------------------------------------------------------------------------
// The two-branch model

VICRegImpl::VICRegImpl(const VICRegModelConfig& config_) : config(config_) {
  backbone = register_module("backbone", make_encoder(config.encoder));
  const bool ln = config.expander_norm == "layer";
  projector = register_module("projector", Expander(backbone->output_dim(), config.mlp, ln));
  if (!config.shared_weights) {
    backbone_b = register_module("backbone_b", make_encoder(config.encoder_b));
    projector_b =
        register_module("projector_b", Expander(backbone_b->output_dim(), config.mlp, ln));
  }
}

ViewOutput VICRegImpl::forward_view(torch::Tensor x, int branch, bool features) {
  const bool second = branch == 1 && !config.shared_weights;
  Encoder& encoder = second ? backbone_b : backbone;
  Expander& expander = second ? projector_b : projector;
  ViewOutput out;
  torch::Tensor map = encoder->forward_features(std::move(x));
  out.y = encoder->pool(map);
  out.z = expander->forward(out.y);
  if (features) out.features = std::move(map);
  return out;
}

ModelOutputs VICRegImpl::forward(torch::Tensor x_a, torch::Tensor x_b, bool features) {
  // The views go through the network separately, as in the reference: BatchNorm statistics are
  // those of each view's batch.
  ModelOutputs out;
  out.views.push_back(forward_view(std::move(x_a), 0, features));
  out.views.push_back(forward_view(std::move(x_b), 1, features));
  return out;
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace vicreg
