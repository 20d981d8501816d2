// What every encoder is, the expander, building encoders by name, and the two-branch VICReg model.
//
// The encoder families themselves (ResNet, ConvNet, MLP) live in models/, one file each, and are
// listed in one place (models/registry.h); make_encoder() builds any of them by name.
// Module names follow the reference so that weights move both ways: a ResNet's parameters are
// named like torchvision's (no fc), the expander's like facebookresearch/vicreg's nn.Sequential
// ("0.weight", "1.weight", ...), and the VICReg model holds them as "backbone" and "projector"
// like main_vicreg.py.
#pragma once

#include "vicreg/names.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

class ProcessGroup;  // distributed.h

/// How an encoder's forward_features() output is laid out.
enum class FeatureLayout {
  Map,     ///< [N, C, h, w]: the last stage's feature map (convolutional encoders)
  Tokens,  ///< [N, T, C]: a transformer's output tokens
  Vector,  ///< [N, D]: no spatial extent (the mlp encoder)
};

/// What every encoder (backbone) is: a module from inputs to representations [N, output_dim],
/// through the last stage's features, which dense objectives and evaluations use.
class EncoderImpl : public torch::nn::Module {
 public:
  /// x: images [N, C, H, W] or vectors [N, F] -> the last stage's output, laid out as
  /// feature_layout() says, with feature_dim() channels.
  virtual torch::Tensor forward_features(torch::Tensor x) = 0;
  /// forward_features()'s output -> the representation [N, output_dim] (global average pooling
  /// for maps).
  virtual torch::Tensor pool(const torch::Tensor& features) = 0;
  /// pool(forward_features(x)): the representation [N, output_dim].
  torch::Tensor forward(torch::Tensor x) { return pool(forward_features(x)); }
  /// Size of the representation.
  virtual int64_t output_dim() const = 0;
  /// Channels of forward_features()'s output.
  virtual int64_t feature_dim() const { return output_dim(); }
  virtual FeatureLayout feature_layout() const = 0;
  /// Parameters of two or more dimensions that get no weight decay (a ViT's position embeddings
  /// and class token); one-dimensional ones (biases, norms) never get any (make_optimizer).
  virtual std::vector<torch::Tensor> no_weight_decay() const { return {}; }
};
using Encoder = std::shared_ptr<EncoderImpl>;

/// Parses a layer-size spec such as "8192-8192-8192" (the reference's --mlp). Throws
/// std::invalid_argument naming the spec unless it is one or more positive integers joined by '-'.
std::vector<int64_t> parse_layer_spec(const std::string& spec);

// ---------------------------------------------------------------------------------------------
// BatchNorm that can synchronise over ranks

struct BatchNormOptions {
  /* implicit */ BatchNormOptions(int64_t num_features) : num_features_(num_features) {}
  TORCH_ARG(int64_t, num_features);
  TORCH_ARG(double, eps) = 1e-5;
  TORCH_ARG(double, momentum) = 0.1;
};

/// BatchNorm over dimension 1 of [N, C] or [N, C, H, W] inputs: torch::nn::BatchNorm1d/2d's math,
/// parameters and buffers (weight, bias, running_mean, running_var, num_batches_tracked: the same
/// names, so checkpoints and torchvision state dicts fit), plus what PyTorch's SyncBatchNorm adds:
/// with `sync_group` set and more than one rank, training-mode statistics are those of the batch
/// over all ranks (sync_batch_norm, distributed.h). Eval mode uses the running statistics.
class BatchNormImpl : public torch::nn::Cloneable<BatchNormImpl> {
 public:
  explicit BatchNormImpl(const BatchNormOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x: [N, C, ...] -> the same shape
  torch::Tensor forward(const torch::Tensor& x);

  BatchNormOptions options;
  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  /// Set (by convert_sync_batchnorm): statistics over the group's ranks in training mode.
  std::shared_ptr<ProcessGroup> sync_group;
};
TORCH_MODULE(BatchNorm);

/// Makes every BatchNorm inside `module` synchronise over `group` (nullptr: each rank's own batch
/// again), like torch.nn.SyncBatchNorm.convert_sync_batchnorm. Returns how many it changed.
int64_t convert_sync_batchnorm(torch::nn::Module& module, std::shared_ptr<ProcessGroup> group);

// ---------------------------------------------------------------------------------------------
// Expander (the reference's projector)

/// From a spec such as "8192-8192-8192" and the representation size: Linear -> BatchNorm1d ->
/// ReLU for each layer but the last, which is a Linear without bias. Submodules are named "0",
/// "1", ... as in the reference's nn.Sequential. `layer_norm`: LayerNorm (eps 1e-5, computed in
/// fp32) instead of BatchNorm, as VICRegL's projectors for ConvNeXts.
class ExpanderImpl : public torch::nn::Module {
 public:
  ExpanderImpl(int64_t in_features, const std::string& spec, bool layer_norm = false);
  /// y: [N, in_features] -> [N, output_dim]
  torch::Tensor forward(torch::Tensor y);
  int64_t output_dim() const { return output_dim_; }

 private:
  std::vector<torch::nn::AnyModule> layers_;
  int64_t output_dim_ = 0;
};
TORCH_MODULE(Expander);

// ---------------------------------------------------------------------------------------------
// Building encoders by name, and the two-branch model

/// What make_encoder() builds.
struct EncoderConfig {
  /// The backbone's name, one of backbone_names() (models/registry.h).
  std::string arch = "convnet";
  /// Image channels (1 for Fashion-MNIST, 3 for RGB); ignored by mlp.
  int64_t in_channels = 1;
  /// Image side; ResNets use the small stem when it is at most 64. Ignored by mlp.
  int64_t image_size = 28;
  /// Input features of the mlp encoder (the columns of the .npy matrix).
  int64_t in_features = 0;
  /// ConvNet: base width and stages.
  int64_t width = 32;
  int64_t stages = 4;
  /// ConvNet: channels of the last 1x1 conv (0: none).
  int64_t final_conv = 1024;
  /// mlp: hidden layers.
  std::string encoder_mlp = "1024-1024";
  /// vit: patch side and blocks (0: the arch's: patch 16, 32 for vit_b_32; 12 blocks, 24 large).
  int64_t patch_size = 0;
  int64_t depth = 0;
  /// vit: a class token ahead of the patches; the representation the mean of the patch tokens
  /// instead of the class token (always without one).
  bool class_token = true;
  bool mean_pool = false;
  /// vit, convnext: stochastic depth, the rate of the last block (earlier ones linearly less).
  double drop_path = 0;
  bool zero_init_residual = true;
};

/// The encoder of `config.arch`'s family (models/registry.h). Throws UsageError for an unknown
/// name and for settings that cannot work (e.g. convnet with more stages than the image can
/// halve, mlp without features, an image backbone on vectors).
Encoder make_encoder(const EncoderConfig& config);

/// The parameters (weights and biases, not buffers) make_encoder(config) would have, from the
/// settings alone (the family's count), so that settings read from a file can be checked against
/// the weights the file holds before any memory goes to them.
double encoder_parameter_count(const EncoderConfig& config);

/// One view through one branch.
struct ViewOutput {
  /// The encoder's forward_features() (feature map, tokens or vector), when asked for: held, it
  /// outlives the backward pass of a training step (memory the VICReg objective does not need).
  torch::Tensor features;
  torch::Tensor y;  ///< representation [N, backbone output_dim]
  torch::Tensor z;  ///< embedding [N, expander output_dim]
};

/// The model's outputs for the views of one step, in the views' order (an objective's input).
struct ModelOutputs {
  std::vector<ViewOutput> views;
};

struct VICRegModelConfig {
  EncoderConfig encoder;
  /// The expander spec, like the reference's --mlp.
  std::string mlp = "8192-8192-8192";
  /// The expander's normalisation: "batch" (BatchNorm, the reference's) or "layer" (LayerNorm).
  std::string expander_norm = "batch";
  /// false: each view gets its own backbone and expander ("backbone_b", "projector_b").
  bool shared_weights = true;
  /// The second branch's encoder when shared_weights is false (arch may differ from the first;
  /// the embeddings must have the same size, which the expander spec guarantees).
  EncoderConfig encoder_b;
};

class VICRegImpl : public torch::nn::Module {
 public:
  explicit VICRegImpl(const VICRegModelConfig& config);
  /// x_a, x_b: the two views, [N, ...] each; the second through the second branch when the
  /// weights are not shared. `features`: keep each view's forward_features() output too.
  ModelOutputs forward(torch::Tensor x_a, torch::Tensor x_b, bool features = false);
  /// One view through branch 0 (backbone, projector) or 1 (backbone_b, projector_b; the first
  /// with shared weights).
  ViewOutput forward_view(torch::Tensor x, int branch = 0, bool features = false);
  /// The first branch's representation only (what downstream tasks use).
  torch::Tensor represent(torch::Tensor x) { return backbone->forward(x); }

  VICRegModelConfig config;
  Encoder backbone, backbone_b;
  Expander projector{nullptr}, projector_b{nullptr};
};
TORCH_MODULE(VICReg);

/// Number of elements in all parameters of a module.
int64_t count_parameters(const torch::nn::Module& module);

}  // namespace vicreg
