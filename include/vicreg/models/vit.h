// Vision Transformers (Dosovitskiy et al., 2021) with torchvision's module names, so that their
// weights load into torchvision.models.VisionTransformer; timm's layout (DINO, MAE, MoCo v3,
// I-JEPA) is read by renaming (vit_weights_from_timm).
#pragma once

#include "vicreg/io/named_tensors.h"
#include "vicreg/models.h"

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

struct ViTOptions {
  TORCH_ARG(int64_t, in_channels) = 3;
  /// The side the position embeddings are made for; other sizes interpolate them (bicubic).
  TORCH_ARG(int64_t, image_size) = 224;
  TORCH_ARG(int64_t, patch_size) = 16;
  TORCH_ARG(int64_t, width) = 768;  ///< token width (torchvision's hidden_dim)
  TORCH_ARG(int64_t, depth) = 12;   ///< blocks
  TORCH_ARG(int64_t, heads) = 12;
  TORCH_ARG(int64_t, mlp_dim) = 3072;
  /// Stochastic depth: block k of D drops its residual branches with probability
  /// drop_path * k / (D - 1), per sample, in training mode (timm's rule).
  TORCH_ARG(double, drop_path) = 0;
  /// A learned class token ahead of the patch tokens (I-JEPA's ViTs have none).
  TORCH_ARG(bool, class_token) = true;
  /// Representation: the mean of the patch tokens instead of the class token (always without one).
  TORCH_ARG(bool, mean_pool) = false;
};

/// Multi-head self-attention with torchvision's (nn.MultiheadAttention's) parameter names:
/// in_proj_weight [3D, D] and in_proj_bias [3D] (q, k, v stacked, as timm's attn.qkv), out_proj.
class ViTAttentionImpl : public torch::nn::Module {
 public:
  ViTAttentionImpl(int64_t width, int64_t heads);
  /// x: [B, N, D] -> [B, N, D]
  torch::Tensor forward(const torch::Tensor& x);

  int64_t heads;
  torch::Tensor in_proj_weight, in_proj_bias;
  torch::nn::Linear out_proj{nullptr};
};
TORCH_MODULE(ViTAttention);

/// softmax(q kᵀ scale) v for q, k, v [B, H, N, d] of one dtype, with a backward pass that keeps
/// only the attention weights [B, H, N, N] (in the inputs' dtype) besides q, k and v; the softmax
/// and its gradient are computed in fp32 (fp64 for fp64 inputs). LibTorch 2.x builds use
/// at::scaled_dot_product_attention instead (flash and memory-efficient kernels on CUDA).
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        double scale);
/// attention() on packed projections, as the in_proj writes them: qkv [B, N, 3, H, d] (any
/// strides; q, k, v of each head) -> the heads' outputs concatenated, [B, N, H d]. On LibTorch
/// 1.13 its backward writes qkv's gradient as one tensor of qkv's shape.
torch::Tensor packed_attention(const torch::Tensor& qkv, double scale);

/// Linear ("0"), GELU, Linear ("3"): torchvision's MLPBlock names (timm's mlp.fc1, mlp.fc2).
class ViTMLPImpl : public torch::nn::Module {
 public:
  ViTMLPImpl(int64_t width, int64_t hidden);
  /// x: [..., width] -> [..., width]
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ViTMLP);

/// A pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); LayerNorm eps 1e-6.
class ViTBlockImpl : public torch::nn::Module {
 public:
  ViTBlockImpl(int64_t width, int64_t heads, int64_t mlp_dim, double drop_path);
  /// x: [B, N, D] -> [B, N, D]
  torch::Tensor forward(torch::Tensor x);

  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  ViTAttention self_attention{nullptr};
  ViTMLP mlp{nullptr};
  double drop_path;
};
TORCH_MODULE(ViTBlock);

/// class_token [1, 1, D], conv_proj (P x P, stride P), encoder.pos_embedding [1, T, D] (T: the
/// patches of image_size, plus the class token), encoder.layers.encoder_layer_K, encoder.ln: the
/// names of torchvision's VisionTransformer (whose heads.head vicreg leaves out).
class ViTImpl : public EncoderImpl {
 public:
  explicit ViTImpl(const ViTOptions& options);
  /// x: [N, in_channels, H, W], H and W multiples of patch_size -> the normalised tokens
  /// [N, T, width], the class token first when there is one.
  torch::Tensor forward_features(torch::Tensor x) override;
  /// The class token, or the mean of the patch tokens.
  torch::Tensor pool(const torch::Tensor& features) override;
  FeatureLayout feature_layout() const override { return FeatureLayout::Tokens; }
  int64_t output_dim() const override { return options.width(); }
  /// The position embeddings for a grid of h x w patches (interpolated when it is not the grid of
  /// image_size): [1, h w (+1), D].
  torch::Tensor position_embeddings(int64_t h, int64_t w) const;
  std::vector<torch::Tensor> no_weight_decay() const override;

  ViTOptions options;
  torch::Tensor class_token, pos_embedding;
  torch::nn::Conv2d conv_proj{nullptr};
  std::vector<ViTBlock> blocks;
  torch::nn::LayerNorm ln{nullptr};
};

/// The ViT sizes by name: width and depth (heads = width / 64, mlp 4 x width, as timm's).
struct ViTShape {
  int64_t width = 0, depth = 0, patch = 16;
};
/// vit_tiny 192/12, vit_small 384/12, vit_base 768/12, vit_large 1024/24 (patch 16), and
/// torchvision's names vit_b_16, vit_b_32 (patch 32), vit_l_16; nullopt for other names.
std::optional<ViTShape> vit_shape(const std::string& arch);

/// `weights` with timm's ViT names (cls_token, pos_embed, patch_embed.proj, blocks.K.norm1,
/// attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, norm, head) renamed to torchvision's, under the
/// same prefix; nullopt when it holds no timm ViT (no patch_embed.proj.weight). Throws
/// FormatError naming `source` for parts vicreg's ViT does not have (layer scale, separate q/v
/// biases, a pooled-token norm).
std::optional<NamedTensors> vit_weights_from_timm(const NamedTensors& weights,
                                                  const std::string& source);

}  // namespace vicreg
