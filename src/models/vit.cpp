// Vision Transformers (models/vit.h) and their backbone family.
#include "vicreg/models/vit.h"

#include "vicreg/error.h"
#include "vicreg/models/layers.h"
#include "vicreg/models/registry.h"

#include <torch/autograd.h>
#include <torch/nn/functional/upsampling.h>
#include <torch/version.h>

#include <array>
#include <cmath>
#include <map>
#include <set>

namespace vicreg {

// ---------------------------------------------------------------------------------------------
// Attention

namespace {

torch::ScalarType accumulation_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

/// softmax(q kᵀ scale) v for q, k, v [B, H, N, d] (any strides) and the attention weights P
/// [B, H, N, N] in q's dtype (the softmax computed in the accumulation type).
std::pair<torch::Tensor, torch::Tensor> attention_forward(const torch::Tensor& q,
                                                          const torch::Tensor& k,
                                                          const torch::Tensor& v, double scale) {
  const torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1));
  torch::Tensor p =
      torch::softmax(scores.to(accumulation_type(q)).mul_(scale), -1).to(q.scalar_type());
  torch::Tensor out = torch::matmul(p, v);
  return {std::move(out), std::move(p)};
}

/// The gradients of q, k and v from P and the output's gradient go [B, H, N, d].
std::array<torch::Tensor, 3> attention_backward(const torch::Tensor& q, const torch::Tensor& k,
                                                const torch::Tensor& v, const torch::Tensor& p,
                                                const torch::Tensor& go, double scale) {
  const torch::ScalarType acc = accumulation_type(q);
  const torch::Tensor gv = torch::matmul(p.transpose(-2, -1), go);
  // dS = P (dP - rowsum(dP P)) scale, in the accumulation type.
  const torch::Tensor gp = torch::matmul(go, v.transpose(-2, -1)).to(acc);
  const torch::Tensor p32 = p.to(acc);
  const torch::Tensor gs =
      (p32 * (gp - (gp * p32).sum(-1, /*keepdim=*/true))).mul_(scale).to(q.scalar_type());
  return {torch::matmul(gs, k), torch::matmul(gs.transpose(-2, -1), q), gv};
}

/// attention() as an autograd function: saves q, k, v and P.
class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v, double scale) {
    auto [out, p] = attention_forward(q, k, v, scale);
    ctx->save_for_backward({q, k, v, p});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &p = saved[3];
    const auto g = attention_backward(q, k, v, p, grads[0].to(q.scalar_type()),
                                      ctx->saved_data["scale"].toDouble());
    return {g[0], g[1], g[2], torch::Tensor()};
  }
};

/// [B, N, 3, H, d] -> the [3, B, H, N, d] view whose slices are q, k, v.
torch::Tensor heads_first(const torch::Tensor& qkv) { return qkv.permute({2, 0, 3, 1, 4}); }

/// packed_attention() as an autograd function: saves q, k, v (in one tensor) and P, and writes
/// qkv's gradient as one tensor (autograd's own path through the three slices fills three zero
/// tensors of qkv's size and adds them).
class PackedAttentionFunction : public torch::autograd::Function<PackedAttentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& qkv,
                               double scale) {
    // One copy into [3, B, H, N, d] (the products would otherwise copy q, k and v one by one,
    // and again in the backward pass), kept for the backward instead of qkv.
    const torch::Tensor t = heads_first(qkv).contiguous();
    auto [out, p] = attention_forward(t[0], t[1], t[2], scale);
    ctx->save_for_backward({t, p});
    ctx->saved_data["scale"] = scale;
    return out.transpose(1, 2).reshape({qkv.size(0), qkv.size(1), qkv.size(3) * qkv.size(4)});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &t = saved[0], &p = saved[1];  // t: [3, B, H, N, d]
    const int64_t b = t.size(1), h = t.size(2), n = t.size(3), d = t.size(4);
    // [B, N, H d] -> [B, H, N, d], copied once for the two products that read it.
    const torch::Tensor go =
        grads[0].to(t.scalar_type()).reshape({b, n, h, d}).transpose(1, 2).contiguous();
    const auto g = attention_backward(t[0], t[1], t[2], p, go, ctx->saved_data["scale"].toDouble());
    torch::Tensor gqkv = torch::empty({b, n, 3, h, d}, t.options());
    for (int64_t i = 0; i < 3; ++i) gqkv.select(2, i).copy_(g[i].transpose(1, 2));
    return {gqkv, torch::Tensor()};
  }
};

void check_packed(const torch::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3,
              "packed_attention: qkv must be [B, N, 3, H, d], got ", qkv.sizes());
}

}  // namespace

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        double scale) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "attention: q, k, v must be [B, H, N, d] of one shape, got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
#if TORCH_VERSION_MAJOR >= 2
  // The fused kernels take their own scale from 2.1; q is scaled here so that 2.0 works too.
  const double own = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return at::scaled_dot_product_attention(scale == own ? q : q * (scale / own), k, v);
#else
  const torch::ScalarType dtype = q.scalar_type();
  return AttentionFunction::apply(q, k.to(dtype), v.to(dtype), scale);
#endif
}

torch::Tensor packed_attention(const torch::Tensor& qkv, double scale) {
  check_packed(qkv);
#if TORCH_VERSION_MAJOR >= 2
  const torch::Tensor t = heads_first(qkv);
  return attention(t[0], t[1], t[2], scale)
      .transpose(1, 2)
      .reshape({qkv.size(0), qkv.size(1), qkv.size(3) * qkv.size(4)});
#else
  return PackedAttentionFunction::apply(qkv, scale);
#endif
}

ViTAttentionImpl::ViTAttentionImpl(int64_t width, int64_t heads_) : heads(heads_) {
  TORCH_CHECK(heads >= 1 && width % heads == 0, "ViT attention: width ", width,
              " is not a multiple of the heads (", heads, ")");
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * width, width}));
  in_proj_bias = register_parameter("in_proj_bias", torch::zeros({3 * width}));
  out_proj = register_module("out_proj", torch::nn::Linear(width, width));
}

torch::Tensor ViTAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), n = x.size(1), d = x.size(2);
  // [B, N, 3D] viewed as [B, N, 3, H, d/H]
  const torch::Tensor qkv =
      torch::linear(x, in_proj_weight, in_proj_bias).view({b, n, 3, heads, d / heads});
  return out_proj(packed_attention(qkv, 1.0 / std::sqrt(static_cast<double>(d / heads))));
}

// ---------------------------------------------------------------------------------------------
// Blocks and the encoder

ViTMLPImpl::ViTMLPImpl(int64_t width, int64_t hidden) {
  fc1 = register_module("0", torch::nn::Linear(width, hidden));
  fc2 = register_module("3", torch::nn::Linear(hidden, width));
}

torch::Tensor ViTMLPImpl::forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x))); }

namespace {

torch::nn::LayerNorm layer_norm_module(int64_t width) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(1e-6));
}

}  // namespace

ViTBlockImpl::ViTBlockImpl(int64_t width, int64_t heads, int64_t mlp_dim, double drop_path_)
    : drop_path(drop_path_) {
  ln_1 = register_module("ln_1", layer_norm_module(width));
  self_attention = register_module("self_attention", ViTAttention(width, heads));
  ln_2 = register_module("ln_2", layer_norm_module(width));
  mlp = register_module("mlp", ViTMLP(width, mlp_dim));
}

torch::Tensor ViTBlockImpl::forward(torch::Tensor x) {
  // Under autocast the residual stream is fp32 (the position embeddings promote it) and the
  // branches bf16: each branch is cast before the sum, which ATen's CPU add of mixed dtypes
  // does several times slower than a cast and a plain add.
  const auto residual = [&](const torch::Tensor& branch) {
    return x + vicreg::drop_path(branch, drop_path, is_training()).to(x.scalar_type());
  };
  x = residual(self_attention(layer_norm(x, ln_1->weight, ln_1->bias, 1e-6)));
  return residual(mlp(layer_norm(x, ln_2->weight, ln_2->bias, 1e-6)));
}

ViTImpl::ViTImpl(const ViTOptions& options_) : options(options_) {
  const ViTOptions& o = options;
  TORCH_CHECK(o.in_channels() >= 1 && o.patch_size() >= 1 && o.image_size() >= o.patch_size() &&
                  o.width() >= 1 && o.depth() >= 1 && o.mlp_dim() >= 1,
              "ViT: in_channels, patch_size, width, depth and mlp_dim must be >= 1 and "
              "image_size >= patch_size");
  TORCH_CHECK(o.class_token() || o.mean_pool(), "ViT: without a class token, pool the mean");
  const int64_t grid = o.image_size() / o.patch_size();
  const int64_t tokens = grid * grid + (o.class_token() ? 1 : 0);
  if (o.class_token()) {
    class_token = register_parameter("class_token", torch::zeros({1, 1, o.width()}));
  }
  conv_proj = register_module(
      "conv_proj",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels(), o.width(), o.patch_size())
                            .stride(o.patch_size())));
  // torchvision's module tree: encoder.{pos_embedding, layers.encoder_layer_K, ln}.
  auto encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
  pos_embedding =
      encoder->register_parameter("pos_embedding", torch::empty({1, tokens, o.width()}));
  auto layers = encoder->register_module("layers", std::make_shared<torch::nn::Module>());
  for (int64_t k = 0; k < o.depth(); ++k) {
    blocks.push_back(layers->register_module(
        "encoder_layer_" + std::to_string(k),
        ViTBlock(o.width(), o.heads(), o.mlp_dim(), drop_path_rate(o.drop_path(), k, o.depth()))));
  }
  ln = encoder->register_module("ln", layer_norm_module(o.width()));

  // timm's initialisation (DINO's, MoCo v3's): truncated normal 0.02 for the linear layers and
  // the position embeddings, zero biases; torchvision's for the patch projection.
  torch::NoGradGuard no_grad;
  trunc_normal_(pos_embedding, 0.02);
  for (auto& b : blocks) {
    trunc_normal_(b->self_attention->in_proj_weight, 0.02);
    for (torch::nn::Linear* l : {&b->self_attention->out_proj, &b->mlp->fc1, &b->mlp->fc2}) {
      trunc_normal_((*l)->weight, 0.02);
      (*l)->bias.zero_();
    }
  }
  const double fan_in = static_cast<double>(o.in_channels() * o.patch_size() * o.patch_size());
  trunc_normal_(conv_proj->weight, std::sqrt(1.0 / fan_in));
  conv_proj->bias.zero_();
}

torch::Tensor ViTImpl::position_embeddings(int64_t h, int64_t w) const {
  const int64_t grid = options.image_size() / options.patch_size();
  if (h == grid && w == grid) return pos_embedding;
  // timm's dynamic image size: the patches' embeddings resampled bicubically to the new grid.
  const int64_t extra = options.class_token() ? 1 : 0;
  const int64_t d = options.width();
  const torch::Tensor patches =
      pos_embedding.narrow(1, extra, grid * grid).reshape({1, grid, grid, d}).permute({0, 3, 1, 2});
  torch::Tensor resized =
      torch::nn::functional::interpolate(patches, torch::nn::functional::InterpolateFuncOptions()
                                                      .size(std::vector<int64_t>{h, w})
                                                      .mode(torch::kBicubic)
                                                      .align_corners(false));
  resized = resized.permute({0, 2, 3, 1}).reshape({1, h * w, d});
  return extra ? torch::cat({pos_embedding.narrow(1, 0, 1), resized}, 1) : resized;
}

torch::Tensor ViTImpl::forward_features(torch::Tensor x) {
  const ViTOptions& o = options;
  TORCH_CHECK(x.dim() == 4 && x.size(1) == o.in_channels() && x.size(2) % o.patch_size() == 0 &&
                  x.size(3) % o.patch_size() == 0 && x.size(2) > 0 && x.size(3) > 0,
              "ViT expects [N, ", o.in_channels(), ", H, W] images with H and W multiples of the ",
              o.patch_size(), " px patches, got ", x.sizes());
  const int64_t h = x.size(2) / o.patch_size(), w = x.size(3) / o.patch_size();
  torch::Tensor t = conv_proj(x).flatten(2).transpose(1, 2);  // [N, h w, D]
  // fp32 from here (the class token and position embeddings are fp32; under autocast the
  // projection's bf16 output is widened, as PyTorch's cat promotes it), so the residual stream is.
  if (o.class_token()) {
    t = torch::cat({class_token.expand({t.size(0), 1, -1}), t.to(class_token.scalar_type())}, 1);
  }
  t = t + position_embeddings(h, w);
  for (auto& b : blocks) t = b(t);
  return layer_norm(t, ln->weight, ln->bias, 1e-6);
}

torch::Tensor ViTImpl::pool(const torch::Tensor& features) {
  if (options.class_token() && !options.mean_pool()) return features.select(1, 0);
  const int64_t extra = options.class_token() ? 1 : 0;
  return features.narrow(1, extra, features.size(1) - extra).mean(1);
}

std::vector<torch::Tensor> ViTImpl::no_weight_decay() const {
  std::vector<torch::Tensor> out{pos_embedding};
  if (class_token.defined()) out.push_back(class_token);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Names and timm's layout

namespace {

struct ViTName {
  const char* name;
  ViTShape shape;
  bool fixed_patch = false;  ///< torchvision's names: the patch is part of the name
};

const std::vector<ViTName>& vit_names() {
  static const std::vector<ViTName> names = {
      {"vit_tiny", {192, 12, 16}},        {"vit_small", {384, 12, 16}},
      {"vit_base", {768, 12, 16}},        {"vit_large", {1024, 24, 16}},
      {"vit_b_16", {768, 12, 16}, true},  {"vit_b_32", {768, 12, 32}, true},
      {"vit_l_16", {1024, 24, 16}, true},
  };
  return names;
}

bool starts_with(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}

}  // namespace

std::optional<ViTShape> vit_shape(const std::string& arch) {
  for (const auto& e : vit_names()) {
    if (arch == e.name) return e.shape;
  }
  return std::nullopt;
}

namespace {

/// The table entry of a name the family lists (check_settings runs on those only).
const ViTName& vit_name(const std::string& arch) {
  for (const auto& e : vit_names()) {
    if (arch == e.name) return e;
  }
  throw UsageError("not a ViT: '" + arch + "'");
}

}  // namespace

std::optional<NamedTensors> vit_weights_from_timm(const NamedTensors& weights,
                                                  const std::string& source) {
  const std::optional<EncoderWeights> w =
      encoder_weights(weights, "patch_embed.proj.weight", source);
  if (!w) return std::nullopt;
  const std::string& prefix = w->prefix();
  // timm's name -> torchvision's, for the parts both have.
  static const std::vector<std::pair<std::string, std::string>> block_parts = {
      {"norm1.", "ln_1."},
      {"attn.qkv.weight", "self_attention.in_proj_weight"},
      {"attn.qkv.bias", "self_attention.in_proj_bias"},
      {"attn.proj.", "self_attention.out_proj."},
      {"norm2.", "ln_2."},
      {"mlp.fc1.", "mlp.0."},
      {"mlp.fc2.", "mlp.3."},
  };
  static const std::map<std::string, std::string> top = {
      {"cls_token", "class_token"},
      {"pos_embed", "encoder.pos_embedding"},
      {"patch_embed.proj.weight", "conv_proj.weight"},
      {"patch_embed.proj.bias", "conv_proj.bias"},
      {"norm.weight", "encoder.ln.weight"},
      {"norm.bias", "encoder.ln.bias"},
  };
  NamedTensors out;
  for (const auto& entry : weights) {
    // Named, not a structured binding: C++17 lambdas cannot capture those.
    const std::string& name = entry.first;
    const torch::Tensor& t = entry.second;
    if (!starts_with(name, prefix)) {
      out.emplace_back(name, t);
      continue;
    }
    const std::string key = name.substr(prefix.size());
    const auto unsupported = [&](const std::string& what) {
      return FormatError(source + ": " + name + " is " + what +
                         ", which vicreg's ViT does not have (it builds timm's plain ViTs: "
                         "DINO's, MAE's, MoCo v3's, I-JEPA's)");
    };
    if (top.count(key)) {
      out.emplace_back(prefix + top.at(key), t);
    } else if (starts_with(key, "blocks.")) {
      const size_t dot = key.find('.', 7);
      const std::string index = key.substr(7, dot - 7), part = key.substr(dot + 1);
      std::string renamed;
      for (const auto& [from, to] : block_parts) {
        if (starts_with(part, from)) renamed = to + part.substr(from.size());
      }
      if (renamed.empty()) {
        throw unsupported(starts_with(part, "ls") ? "layer scale"
                          : starts_with(part, "attn.q_bias") || starts_with(part, "attn.v_bias")
                              ? "a separate q/v bias (BEiT's)"
                              : "a part of a block");
      }
      out.emplace_back(prefix + "encoder.layers.encoder_layer_" + index + "." + renamed, t);
    } else if (starts_with(key, "fc_norm.")) {
      throw unsupported("a norm of the pooled tokens (timm's global_pool='avg' fine-tuning head)");
    } else if (starts_with(key, "head.")) {  // the classifier, skipped by the loader
      out.emplace_back(prefix + "heads." + key, t);
    } else if (starts_with(key, "decoder") || key == "mask_token") {
      continue;  // a whole MAE model: its decoder is not part of the encoder
    } else {
      throw FormatError(source + ": " + name +
                        " is not part of a timm ViT (cls_token, pos_embed, patch_embed.proj, "
                        "blocks.K, norm, head)");
    }
  }
  // A qkv without bias (timm's qkv_bias=False) is one with zero bias.
  std::set<std::string> names;
  for (const auto& e : out) names.insert(e.first);
  const std::string suffix = ".self_attention.in_proj_weight";
  for (const auto& [name, t] : NamedTensors(out)) {
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string bias = name.substr(0, name.size() - 6) + "bias";
      if (!names.count(bias)) out.emplace_back(bias, torch::zeros({t.size(0)}, t.options()));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The family

namespace {

/// The shape `config` asks for: the arch's, with its own patch size and depth when set.
ViTShape resolved_shape(const EncoderConfig& config) {
  ViTShape s = vit_shape(config.arch).value();
  if (config.patch_size > 0) s.patch = config.patch_size;
  if (config.depth > 0) s.depth = config.depth;
  return s;
}

void check_vit(const EncoderConfig& config) {
  const ViTShape own = vit_shape(config.arch).value();
  if (config.patch_size < 0 || config.patch_size > 1024) {
    throw SettingError({"patch_size"}, "vit: patch_size must be in [0, 1024] (0: the arch's " +
                                           std::to_string(own.patch) + "), got " +
                                           std::to_string(config.patch_size));
  }
  // torchvision's names fix the patch: vit_b_32 is vit_base with 32 px patches.
  if (vit_name(config.arch).fixed_patch && config.patch_size != 0 &&
      config.patch_size != own.patch) {
    throw SettingError({"arch", "patch_size"},
                       config.arch + " has " + std::to_string(own.patch) +
                           " px patches; for patch_size " + std::to_string(config.patch_size) +
                           " use the size's name (vit_base, vit_large) instead");
  }
  if (config.depth < 0 || config.depth > 256) {
    throw SettingError({"depth"}, "vit: depth must be in [0, 256] (0: the arch's " +
                                      std::to_string(own.depth) + "), got " +
                                      std::to_string(config.depth));
  }
  check_drop_path(config.drop_path);
  if (!config.class_token && !config.mean_pool) {
    throw SettingError({"class_token", "mean_pool"},
                       "a ViT without a class token needs mean_pool (its representation is the "
                       "mean of the patch tokens)");
  }
}

Encoder build_vit(const EncoderConfig& config) {
  const ViTShape s = resolved_shape(config);
  if (config.image_size < s.patch || config.image_size % s.patch != 0) {
    throw SettingError({"patch_size", "image_size"},
                       "vit: images of " + std::to_string(config.image_size) +
                           " px do not split into " + std::to_string(s.patch) +
                           " px patches: choose a patch_size that divides the image size "
                           "(Fashion-MNIST's 28 px: 4, 7, 14 or 28) or another image_size");
  }
  return std::make_shared<ViTImpl>(ViTOptions()
                                       .in_channels(config.in_channels)
                                       .image_size(config.image_size)
                                       .patch_size(s.patch)
                                       .width(s.width)
                                       .depth(s.depth)
                                       .heads(s.width / 64)
                                       .mlp_dim(4 * s.width)
                                       .drop_path(config.drop_path)
                                       .class_token(config.class_token)
                                       .mean_pool(config.mean_pool));
}

double count_vit(const EncoderConfig& config) {
  const ViTShape s = resolved_shape(config);
  const double d = static_cast<double>(s.width), p = static_cast<double>(s.patch);
  const double grid = std::floor(static_cast<double>(config.image_size) / p);
  const double tokens = grid * grid + (config.class_token ? 1 : 0);
  const double block = 2 * (2 * d)          // ln_1, ln_2
                       + 3 * d * d + 3 * d  // in_proj
                       + d * d + d          // out_proj
                       + d * 4 * d + 4 * d  // mlp.0
                       + 4 * d * d + d;     // mlp.3
  return (config.class_token ? d : 0) + static_cast<double>(config.in_channels) * p * p * d + d +
         tokens * d + static_cast<double>(s.depth) * block + 2 * d;
}

/// Width, depth, patch size, channels and image size (from the position embeddings' grid) off
/// torchvision's names; the name is the size of that width (vit_tiny ... vit_large), the depth
/// recorded when it is not the size's.
std::optional<EncoderConfig> recognise_vit(const NamedTensors& weights, const std::string& source) {
  const std::optional<EncoderWeights> w = encoder_weights(weights, "conv_proj.weight", source);
  if (!w || !w->has("encoder.pos_embedding")) return std::nullopt;
  const torch::Tensor& proj = *w->find("conv_proj.weight");
  const torch::Tensor& pos = *w->find("encoder.pos_embedding");
  if (proj.dim() != 4 || proj.size(2) != proj.size(3) || pos.dim() != 3 ||
      pos.size(2) != proj.size(0)) {
    throw FormatError(source + ": " + w->prefix() +
                      "conv_proj.weight and encoder.pos_embedding are not a ViT's (a square "
                      "[D, C, P, P] projection and [1, T, D] embeddings)");
  }
  EncoderConfig ec;
  const int64_t width = proj.size(0);
  ec.in_channels = proj.size(1);
  ec.patch_size = proj.size(2);
  ec.class_token = w->has("class_token");
  ec.mean_pool = !ec.class_token;
  const int64_t patches = pos.size(1) - (ec.class_token ? 1 : 0);
  const auto grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(patches))));
  if (patches < 1 || grid * grid != patches) {
    throw FormatError(source + ": " + w->prefix() + "encoder.pos_embedding holds " +
                      std::to_string(patches) +
                      " patch positions, not a square grid: the image size cannot be inferred");
  }
  ec.image_size = grid * ec.patch_size;
  int64_t depth = 0;
  while (w->has("encoder.layers.encoder_layer_" + std::to_string(depth) + ".ln_1.weight")) ++depth;
  const torch::Tensor* fc1 = w->find("encoder.layers.encoder_layer_0.mlp.0.weight");
  if (depth == 0 || fc1 == nullptr || fc1->dim() != 2 || fc1->size(0) != 4 * width) {
    throw FormatError(source + ": a ViT of width " + std::to_string(width) +
                      (depth == 0 ? " without blocks"
                                  : " whose MLP is not 4x its width (vicreg builds timm's and "
                                    "torchvision's ratio 4 only)"));
  }
  for (const auto& e : vit_names()) {
    if (e.shape.width == width && !e.fixed_patch) {
      ec.arch = e.name;
      ec.depth = depth == e.shape.depth ? 0 : depth;
      ec.patch_size = ec.patch_size == e.shape.patch ? 0 : ec.patch_size;
      return ec;
    }
  }
  throw FormatError(source + ": a ViT of width " + std::to_string(width) +
                    ", which is none of vit_tiny (192), vit_small (384), vit_base (768), "
                    "vit_large (1024)");
}

std::string torchvision_vit(const EncoderImpl& encoder) {
  const auto* vit = dynamic_cast<const ViTImpl*>(&encoder);
  if (!vit || !vit->options.class_token()) return "";  // torchvision's ViT always has one
  const ViTOptions& o = vit->options;
  std::string how =
      "m = torchvision.models.VisionTransformer(image_size=" + std::to_string(o.image_size()) +
      ", patch_size=" + std::to_string(o.patch_size()) +
      ", num_layers=" + std::to_string(o.depth()) + ", num_heads=" + std::to_string(o.heads()) +
      ", hidden_dim=" + std::to_string(o.width()) + ", mlp_dim=" + std::to_string(o.mlp_dim()) +
      ")";
  if (o.in_channels() != 3) {
    how += "; m.conv_proj = nn.Conv2d(" + std::to_string(o.in_channels()) + ", " +
           std::to_string(o.width()) + ", " + std::to_string(o.patch_size()) + ", " +
           std::to_string(o.patch_size()) + ")";
  }
  return how +
         "; m.load_state_dict(tensors, strict=False) (missing: heads.head.weight, "
         "heads.head.bias); m.heads = nn.Identity() for the representation" +
         (o.mean_pool() ? " (vicreg's pools the mean of the patch tokens, torchvision's the class "
                          "token)"
                        : "");
}

}  // namespace

BackboneFamily vit_family() {
  BackboneFamily f;
  f.name = "vit";
  for (const auto& e : vit_names()) f.archs.push_back(e.name);
  f.help =
      "vit_tiny/small/base/large (patch_size, default 16; depth), or torchvision's vit_b_16, "
      "vit_b_32, vit_l_16";
  f.traits.images = true;
  f.traits.convolutional = false;
  f.traits.features = FeatureLayout::Tokens;
  f.traits.optimizer_hint = "adamw";
  f.check_settings = check_vit;
  f.build = build_vit;
  f.parameter_count = count_vit;
  f.recognise = recognise_vit;
  f.own_names = vit_weights_from_timm;
  f.torchvision_recipe = torchvision_vit;
  return f;
}

}  // namespace vicreg
