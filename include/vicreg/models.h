// Encoders (ResNet, ConvNet, MLP), the expander, and the two-branch VICReg model.
//
// Module names follow the reference so that weights move both ways (issue 6): a ResNet's
// parameters are named like torchvision's (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, ...;
// no fc), the expander's like facebookresearch/vicreg's nn.Sequential ("0.weight", "1.weight",
// ...), and the VICReg model holds them as "backbone" and "projector" like main_vicreg.py.
#pragma once

#include "vicreg/names.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

class ProcessGroup;  // distributed.h

/// What every encoder (backbone) is: a module from inputs to representations [N, output_dim].
class EncoderImpl : public torch::nn::Module {
 public:
  /// x: images [N, C, H, W] (ResNet, ConvNet) or vectors [N, F] (MLP).
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  /// Size of the representation.
  virtual int64_t output_dim() const = 0;
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
// Convolutions under CPU bf16 autocast

/// The layers whose backward pass conv2d_forward computes in fp32: at most this many output
/// pixels (4x4) and at least this many input channels. oneDNN's bf16 backward kernels are slower
/// than its fp32 ones for such layers (few pixels, many channels; bench/train_bench's
/// BM_ConvBackward measures both per layer shape), while on AMX its bf16 forward is faster at
/// every shape (docs/decisions.md).
constexpr int64_t kFp32BackwardMaxPixels = 16;
constexpr int64_t kFp32BackwardMinChannels = 128;

/// Whether conv2d_forward(conv, x) computes the backward pass in fp32: with cpu_bf16_conv()
/// Fp32Backward (precision.h; the default on AMX CPUs), in grad mode under CPU bf16 autocast, for a
/// 2-D convolution without bias, groups or dilation, with square stride and padding, whose output
/// has at most kFp32BackwardMaxPixels pixels and whose input has at least kFp32BackwardMinChannels
/// channels.
bool conv2d_backward_in_fp32(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// Whether conv2d_forward(conv, x) runs in fp32 altogether: with cpu_bf16_conv() Fp32
/// (precision.h; the default on Intel CPUs with AVX512-BF16 but no AMX), under CPU bf16 autocast,
/// for a CPU input and an fp32 weight, in grad mode or not.
bool conv2d_in_fp32(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// The weight gradient of a convolution (no bias, dilation 1, one group, square kernel, stride and
/// padding) as one matrix product: the output gradient, [N Ho Wo, C_out], transposed, times the
/// input's patches, [N Ho Wo, k k C_in] (im2col, zero outside x). Returned as [C_out, C_in, k, k]
/// in channels_last memory format, in x's dtype (bf16: accumulated in fp32, as oneDNN's).
torch::Tensor conv2d_patches_weight_grad(const torch::Tensor& grad_out, const torch::Tensor& x,
                                         int64_t kernel, int64_t stride, int64_t padding);

/// The layers whose weight gradient conv2d_forward computes with conv2d_patches_weight_grad under
/// CPU bf16 autocast: stride >= 2, kernel >= 2, at most this many output pixels (8x8); and, on
/// some CPUs, the small stride-1 ones below. For the strided ones oneDNN's bf16 weight-gradient
/// kernel is 1.4-1.6x slower than the patches and one matrix product on AVX512-BF16 (2-core AMD
/// EPYC, batch 128: the default ConvNet's 64->128 channels from 14x14 to 7x7 4.5 ms against 3.3,
/// 128->256 from 7x7 to 4x4 5.1 against 3.2), while for larger outputs gathering the patches costs
/// more than it saves (32->64 from 28x28 to 14x14: 3.8 against 5.1) and at stride 1 or for 1x1
/// kernels the two are about even there (bench/train_bench's BM_ConvWeightGrad, docs/decisions.md).
constexpr int64_t kPatchesWeightGradMaxPixels = 64;

/// Stride-1 convolutions (any kernel, 1x1 included) whose output has at most this many pixels
/// (4x4) get conv2d_patches_weight_grad too where patches_weight_grad_at_stride1() holds. On a
/// 2-core AMD EPYC of family 26 (Zen 5), batch 128, oneDNN's bf16 weight gradient against the
/// patches: the default ConvNet's 256->256 channels at 4x4 9.21 ms against 5.64, its 1x1 conv
/// 256->1024 at 4x4 2.89 against 1.90, but 128->128 at 7x7 3.34 against 4.57; on family 25 (Zen
/// 4) 256->256 at 4x4 was 6.49 against 7.05 and the 1x1 about even (BM_ConvWeightGrad,
/// docs/decisions.md).
constexpr int64_t kPatchesWeightGradStride1MaxPixels = 16;

/// Whether conv2d_patches_weight_grad_applies takes the stride-1 convolutions of
/// kPatchesWeightGradStride1MaxPixels: default_patches_weight_grad_at_stride1(cpu_amd_family())
/// until set_patches_weight_grad_at_stride1 changes it (process-wide, like set_cpu_bf16_conv).
bool patches_weight_grad_at_stride1();
void set_patches_weight_grad_at_stride1(bool on);
/// The default for a CPU of this AMD family (precision.h's cpu_amd_family(); 0: not AMD): true
/// from family 26 (Zen 5), where it was measured faster.
bool default_patches_weight_grad_at_stride1(int amd_family);

/// Whether conv2d_forward(conv, x) computes its weight gradient with conv2d_patches_weight_grad:
/// with cpu_bf16_conv() Bf16 (precision.h; the default on CPUs with AVX512-BF16 but neither AMX
/// nor Intel's), in grad mode under CPU bf16 autocast, for a channels_last input and a 2-D
/// convolution without bias, groups or dilation, with square kernel and padding, whose kernel,
/// stride and output size kPatchesWeightGradMaxPixels admits (stride >= 2, kernel >= 2), or
/// kPatchesWeightGradStride1MaxPixels (stride 1) where patches_weight_grad_at_stride1() holds.
bool conv2d_patches_weight_grad_applies(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// `conv`'s forward pass as every encoder runs it. Where conv2d_in_fp32 holds, it is the fp32
/// convolution of x (cast to fp32) outside autocast: an fp32 output, fp32 gradients. Where
/// conv2d_backward_in_fp32 holds, the forward pass is autocast's (the bf16 convolution of the
/// bf16-rounded input and weight) and the backward pass is the fp32 convolution backward of those
/// same bf16-rounded tensors, its gradients cast back to the input's and weight's dtypes. Where
/// conv2d_patches_weight_grad_applies holds, the forward pass and the input gradient are
/// autocast's and the weight gradient is conv2d_patches_weight_grad's. Elsewhere it is
/// conv.forward(x).
torch::Tensor conv2d_forward(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

/// Global average pooling, [N, C, H, W] -> [N, C], as x.mean({2, 3}) computes it, with a backward
/// pass whose gradient has x's memory format. ATen's mean backward divides an expanded gradient and
/// may return it contiguous for a channels_last x; the ReLU backward before it then reads its two
/// inputs in different orders (an encoder's last ReLU: 12 ms instead of 0.2 ms per view in the
/// default bf16 + channels_last step, docs/decisions.md).
torch::Tensor global_avg_pool(const torch::Tensor& x);

// ---------------------------------------------------------------------------------------------
// ResNet (torchvision's v1.5: stride in the 3x3 conv of the bottleneck)

struct ResNetOptions {
  /// 18, 34 (BasicBlock), 50, 101, 152 or 200 (Bottleneck).
  TORCH_ARG(int64_t, depth) = 50;
  /// facebookresearch/vicreg's widening (its resnet50x2, x4, x5, resnet200x2): every width, the
  /// stem's and each block's output included, times this. Not torchvision's wide_resnet50_2,
  /// which widens only the inner 3x3 convolutions of the blocks.
  TORCH_ARG(int64_t, widen) = 1;
  TORCH_ARG(int64_t, in_channels) = 3;
  /// 3x3 stride-1 first conv and no max-pool (solo-learn's CIFAR stem), for inputs up to 64 px.
  TORCH_ARG(bool, small_stem) = false;
  /// Zero the last BatchNorm weight of each residual block (the reference does this for ResNet-50).
  TORCH_ARG(bool, zero_init_residual) = true;
};

/// A residual block: BasicBlock (conv1, bn1, conv2, bn2) or Bottleneck (conv1 1x1, bn1, conv2 3x3
/// with the stride, bn2, conv3 1x1, bn3), plus `downsample` (0: 1x1 conv, 1: BatchNorm) when the
/// shape changes. Names as in torchvision.
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(int64_t in_planes, int64_t planes, int64_t stride, bool bottleneck);
  /// x: [N, in_planes, H, W] -> [N, planes * expansion, H / stride, W / stride]
  torch::Tensor forward(torch::Tensor x);
  /// The BatchNorm whose weight zero_init_residual zeroes.
  BatchNorm last_bn() const { return bottleneck_ ? bn3 : bn2; }

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  BatchNorm bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};

 private:
  bool bottleneck_;
};
TORCH_MODULE(ResidualBlock);

class ResNetImpl : public EncoderImpl {
 public:
  explicit ResNetImpl(const ResNetOptions& options);
  /// x: [N, in_channels, H, W] -> [N, output_dim] (after global average pooling; no fc)
  torch::Tensor forward(torch::Tensor x) override;
  /// 512 for ResNet-18/34, 2048 for ResNet-50/101/152/200, times the widening (resnet50x2: 4096).
  int64_t output_dim() const override { return output_dim_; }

  ResNetOptions options;
  torch::nn::Conv2d conv1{nullptr};
  BatchNorm bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};

 private:
  int64_t output_dim_ = 0;
};

// ---------------------------------------------------------------------------------------------
// ConvNet: a compact encoder for 28x28 inputs that trains in minutes on two cores

/// The largest --final-conv accepted (make_encoder, TrainConfig::validate).
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
  /// x: [N, in_channels, H, W] -> [N, output_dim]
  torch::Tensor forward(torch::Tensor x) override;
  int64_t output_dim() const override { return output_dim_; }

  ConvNetOptions options;
  std::vector<torch::nn::Sequential> stages;
  torch::nn::Sequential final{nullptr};

 private:
  int64_t output_dim_ = 0;
};

// ---------------------------------------------------------------------------------------------
// MLP encoder for vector data

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
  torch::Tensor forward(torch::Tensor x) override;
  int64_t output_dim() const override { return output_dim_; }

  MLPOptions options;
  torch::nn::Sequential layers{nullptr};

 private:
  int64_t output_dim_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Expander (the reference's projector)

/// From a spec such as "8192-8192-8192" and the representation size: Linear -> BatchNorm1d ->
/// ReLU for each layer but the last, which is a Linear without bias. Submodules are named "0",
/// "1", ... as in the reference's nn.Sequential.
class ExpanderImpl : public torch::nn::Module {
 public:
  ExpanderImpl(int64_t in_features, const std::string& spec);
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

/// The encoders make_encoder() builds: torchvision's resnet18/34/50/101/152 and resnet200, the
/// official VICReg model zoo's wide resnet50x2/x4/x5 and resnet200x2, convnet, mlp.
enum class Arch {
  ResNet18,
  ResNet34,
  ResNet50,
  ResNet101,
  ResNet152,
  ResNet200,
  ResNet50x2,
  ResNet50x4,
  ResNet50x5,
  ResNet200x2,
  ConvNet,
  Mlp
};
/// A ResNet's depth and widening (resnet50x2: {50, 2}); nullopt for convnet and mlp.
struct ResNetShape {
  int64_t depth = 0, widen = 1;
};
std::optional<ResNetShape> resnet_shape(Arch arch);
/// The depth of a ResNet with these blocks per stage (torchvision's layer1..layer4); nullopt when
/// no depth has them.
std::optional<int64_t> resnet_depth(bool bottleneck, const std::vector<int64_t>& blocks);
/// The ResNet arch of a depth and widening; nullopt when there is none.
std::optional<Arch> resnet_arch(int64_t depth, int64_t widen);
/// Whether the backbone is made of 2-D convolutions (channels_last applies).
inline bool is_convolutional(Arch arch) { return arch != Arch::Mlp; }
template <>
const NameTable<Arch>& name_table<Arch>();

/// What make_encoder() builds.
struct EncoderConfig {
  Arch arch = Arch::ConvNet;
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
  bool zero_init_residual = true;
};

/// Throws UsageError for settings that cannot work (e.g. convnet with more stages than the image
/// can halve, mlp without features).
Encoder make_encoder(const EncoderConfig& config);

/// The parameters (weights and biases, not buffers) of make_encoder(config), counted without
/// building it, so that settings read from a file can be checked against the weights the file
/// holds before any memory goes to them.
double encoder_parameter_count(const EncoderConfig& config);

/// Representations and embeddings of both views.
struct VICRegOutput {
  torch::Tensor y_a, y_b;  ///< [N, backbone output_dim]
  torch::Tensor z_a, z_b;  ///< [N, expander output_dim]
};

struct VICRegModelConfig {
  EncoderConfig encoder;
  /// The expander spec, like the reference's --mlp.
  std::string mlp = "8192-8192-8192";
  /// false: each view gets its own backbone and expander ("backbone_b", "projector_b").
  bool shared_weights = true;
  /// The second branch's encoder when shared_weights is false (arch may differ from the first;
  /// the embeddings must have the same size, which the expander spec guarantees).
  EncoderConfig encoder_b;
};

class VICRegImpl : public torch::nn::Module {
 public:
  explicit VICRegImpl(const VICRegModelConfig& config);
  /// x_a, x_b: the two views, [N, ...] each.
  VICRegOutput forward(torch::Tensor x_a, torch::Tensor x_b);
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
