// The ViT family (models/vit.h): sizes and names against torchvision's, the attention's value and
// gradients against a plain reference and finite differences, position embeddings at other
// sizes, stochastic depth, timm's layout, its settings' errors and weight decay.
#include "vicreg/error.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/models/layers.h"
#include "vicreg/models/registry.h"
#include "vicreg/models/vit.h"
#include "vicreg/optim.h"
#include "vicreg/precision.h"

#include <torch/autograd.h>

#include <gtest/gtest.h>

#include <set>

namespace {

using vicreg::EncoderConfig;

EncoderConfig vit(const std::string& arch, int64_t channels, int64_t size, int64_t patch,
                  int64_t depth) {
  EncoderConfig c{arch, channels, size};
  c.patch_size = patch;
  c.depth = depth;
  return c;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ViT, SizesAreTorchvisionsWithoutTheHead) {
  // torchvision's totals minus heads.head (768 * 1000 + 1000; 1024 * 1000 + 1000).
  const std::pair<const char*, double> expected[] = {
      {"vit_b_16", 85798656}, {"vit_b_32", 87455232}, {"vit_l_16", 303301632}};
  for (const auto& [arch, count] : expected) {
    EXPECT_EQ(vicreg::encoder_parameter_count(EncoderConfig{arch, 3, 224}), count) << arch;
  }
  EXPECT_EQ(vicreg::encoder_parameter_count(EncoderConfig{"vit_base", 3, 224}), 85798656);
  // The count is what the builder builds, at any size and channel count.
  for (const EncoderConfig& c : {vit("vit_tiny", 1, 28, 4, 2), vit("vit_small", 3, 32, 8, 1),
                                 vit("vit_tiny", 1, 28, 7, 0)}) {
    const vicreg::Encoder e = vicreg::make_encoder(c);
    EXPECT_EQ(vicreg::encoder_parameter_count(c), static_cast<double>(vicreg::count_parameters(*e)))
        << c.arch << "/" << c.patch_size;
  }
  const vicreg::Encoder tiny = vicreg::make_encoder(vit("vit_tiny", 1, 28, 4, 0));
  auto* v = dynamic_cast<vicreg::ViTImpl*>(tiny.get());
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->options.width(), 192);
  EXPECT_EQ(v->options.heads(), 3);  // width / 64, as timm's
  EXPECT_EQ(v->options.depth(), 12);
  EXPECT_EQ(v->options.mlp_dim(), 768);
  EXPECT_EQ(v->pos_embedding.sizes(), torch::IntArrayRef({1, 50, 192}));  // 7x7 + class token
}

TEST(ViT, NamesAreTorchvisions) {
  const vicreg::Encoder e = vicreg::make_encoder(vit("vit_tiny", 3, 32, 16, 1));
  std::set<std::string> names;
  for (const auto& [name, t] : vicreg::module_state(*e)) names.insert(name);
  const std::string b = "encoder.layers.encoder_layer_0.";
  const std::set<std::string> torchvision = {"class_token",
                                             "conv_proj.weight",
                                             "conv_proj.bias",
                                             "encoder.pos_embedding",
                                             b + "ln_1.weight",
                                             b + "ln_1.bias",
                                             b + "self_attention.in_proj_weight",
                                             b + "self_attention.in_proj_bias",
                                             b + "self_attention.out_proj.weight",
                                             b + "self_attention.out_proj.bias",
                                             b + "ln_2.weight",
                                             b + "ln_2.bias",
                                             b + "mlp.0.weight",
                                             b + "mlp.0.bias",
                                             b + "mlp.3.weight",
                                             b + "mlp.3.bias",
                                             "encoder.ln.weight",
                                             "encoder.ln.bias"};
  EXPECT_EQ(names, torchvision);
}

/// softmax(q kᵀ s) v by autograd's own operations: the reference.
torch::Tensor plain_attention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, double s) {
  return torch::softmax(torch::matmul(q, k.transpose(-2, -1)) * s, -1).matmul(v);
}

TEST(ViT, AttentionAndItsGradientsMatchAutogradAndFiniteDifferences) {
  torch::manual_seed(1);
  const auto opts = torch::dtype(torch::kDouble).requires_grad(true);
  const torch::Tensor q = torch::randn({2, 3, 5, 4}, opts), k = torch::randn({2, 3, 5, 4}, opts),
                      v = torch::randn({2, 3, 5, 4}, opts);
  const torch::Tensor w = torch::randn({2, 3, 5, 4}, torch::kDouble);
  const double s = 0.5;
  const torch::Tensor ours = vicreg::attention(q, k, v, s);
  const torch::Tensor ref = plain_attention(q, k, v, s);
  EXPECT_TRUE(torch::allclose(ours, ref, 1e-12, 1e-12));
  const auto g_ours = torch::autograd::grad({(ours * w).sum()}, {q, k, v});
  const auto g_ref = torch::autograd::grad({(ref * w).sum()}, {q, k, v});
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::allclose(g_ours[i], g_ref[i], 1e-10, 1e-12)) << i;
  }
  // Central differences of <w, attention> along a random direction of each input.
  const double h = 1e-6;
  for (size_t i = 0; i < 3; ++i) {
    torch::NoGradGuard no_grad;
    const torch::Tensor d = torch::randn({2, 3, 5, 4}, torch::kDouble);
    std::vector<torch::Tensor> plus = {q.detach(), k.detach(), v.detach()}, minus = plus;
    plus[i] = plus[i] + h * d;
    minus[i] = minus[i] - h * d;
    const double numeric = ((vicreg::attention(plus[0], plus[1], plus[2], s) * w).sum() -
                            (vicreg::attention(minus[0], minus[1], minus[2], s) * w).sum())
                               .item<double>() /
                           (2 * h);
    EXPECT_NEAR((g_ours[i] * d).sum().item<double>(), numeric, 1e-6) << i;
  }
  // bf16 inputs: bf16 outputs near the fp32 ones (the softmax is computed in fp32).
  const torch::Tensor qf = torch::randn({2, 2, 9, 8}), kf = torch::randn({2, 2, 9, 8}),
                      vf = torch::randn({2, 2, 9, 8});
  const torch::Tensor low = vicreg::attention(qf.to(torch::kBFloat16), kf.to(torch::kBFloat16),
                                              vf.to(torch::kBFloat16), 0.35);
  EXPECT_EQ(low.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(
      torch::allclose(low.to(torch::kFloat), plain_attention(qf, kf, vf, 0.35), 0.05, 0.05));
}

TEST(ViT, PackedAttentionMatchesTheHeadsComputedApart) {
  torch::manual_seed(4);
  // [B 2, N 5, 3, H 3, d 4], q, k, v of each head as the in_proj's output viewed.
  const torch::Tensor qkv =
      torch::randn({2, 5, 3, 3, 4}, torch::dtype(torch::kDouble)).requires_grad_(true);
  const torch::Tensor w = torch::randn({2, 5, 12}, torch::kDouble);
  const double s = 0.4;
  const torch::Tensor ours = vicreg::packed_attention(qkv, s);
  const torch::Tensor t = qkv.permute({2, 0, 3, 1, 4});
  const torch::Tensor ref =
      plain_attention(t[0], t[1], t[2], s).transpose(1, 2).reshape({2, 5, 12});
  ASSERT_EQ(ours.sizes(), ref.sizes());
  EXPECT_TRUE(torch::allclose(ours, ref, 1e-12, 1e-12));
  const torch::Tensor g_ours = torch::autograd::grad({(ours * w).sum()}, {qkv})[0];
  const torch::Tensor g_ref = torch::autograd::grad({(ref * w).sum()}, {qkv})[0];
  ASSERT_EQ(g_ours.sizes(), qkv.sizes());
  EXPECT_TRUE(torch::allclose(g_ours, g_ref, 1e-10, 1e-12));
  const double h = 1e-6;
  const torch::Tensor d = torch::randn(qkv.sizes(), torch::kDouble);
  const double numeric = [&] {
    torch::NoGradGuard no_grad;
    return ((vicreg::packed_attention(qkv + h * d, s) * w).sum() -
            (vicreg::packed_attention(qkv - h * d, s) * w).sum())
               .item<double>() /
           (2 * h);
  }();
  EXPECT_NEAR((g_ours * d).sum().item<double>(), numeric, 1e-6);
  // bf16, as under autocast: outputs and gradient in bf16, near the fp32 computation.
  const torch::Tensor low = qkv.detach().to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor out = vicreg::packed_attention(low, s);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), ref.detach(), 0.05, 0.05));
  const torch::Tensor g_low = torch::autograd::grad({(out.to(torch::kDouble) * w).sum()}, {low})[0];
  EXPECT_EQ(g_low.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(g_low.to(torch::kDouble), g_ref, 0.1, 0.1));
  EXPECT_THROW(vicreg::packed_attention(torch::randn({2, 5, 4, 3, 4}), s), c10::Error);
}

TEST(ViT, TokensRepresentationAndOtherImageSizes) {
  torch::manual_seed(2);
  const vicreg::Encoder e = vicreg::make_encoder(vit("vit_tiny", 1, 28, 7, 2));
  e->eval();
  const torch::Tensor x = torch::randn({3, 1, 28, 28});
  const torch::Tensor tokens = e->forward_features(x);
  EXPECT_EQ(tokens.sizes(), torch::IntArrayRef({3, 17, 192}));
  EXPECT_TRUE(torch::equal(e->forward(x), tokens.select(1, 0)));  // the class token
  auto* v = dynamic_cast<vicreg::ViTImpl*>(e.get());
  EXPECT_TRUE(torch::equal(v->position_embeddings(4, 4), v->pos_embedding));
  // Another image size: the embeddings resampled to the new grid (the class token's kept).
  const torch::Tensor big = e->forward_features(torch::randn({2, 1, 56, 35}));
  EXPECT_EQ(big.sizes(), torch::IntArrayRef({2, 1 + 8 * 5, 192}));
  const torch::Tensor resized = v->position_embeddings(8, 5);
  EXPECT_TRUE(torch::equal(resized.narrow(1, 0, 1), v->pos_embedding.narrow(1, 0, 1)));
  // A constant embedding stays constant under bicubic resampling.
  {
    torch::NoGradGuard no_grad;
    v->pos_embedding.fill_(0.25);
  }
  EXPECT_TRUE(
      torch::allclose(v->position_embeddings(8, 5), torch::full({1, 41, 192}, 0.25), 1e-5, 1e-5));
  EXPECT_THROW(e->forward(torch::randn({1, 1, 30, 28})), c10::Error);  // 30 px: not 7s

  // The mean of the patch tokens, with and without a class token.
  EncoderConfig mean = vit("vit_tiny", 1, 28, 14, 1);
  mean.mean_pool = true;
  const vicreg::Encoder m = vicreg::make_encoder(mean);
  m->eval();
  const torch::Tensor t = m->forward_features(x);
  EXPECT_TRUE(torch::allclose(m->forward(x), t.narrow(1, 1, 4).mean(1)));
  mean.class_token = false;
  const vicreg::Encoder none = vicreg::make_encoder(mean);
  none->eval();
  EXPECT_EQ(none->forward_features(x).size(1), 4);
  EXPECT_EQ(none->no_weight_decay().size(), 1u);  // the position embeddings only
}

TEST(ViT, StochasticDepthDropsWholeSamplesInTrainingOnly) {
  torch::manual_seed(3);
  const torch::Tensor ones = torch::ones({4000, 3, 2});
  EXPECT_TRUE(torch::equal(vicreg::drop_path(ones, 0.3, false), ones));
  EXPECT_TRUE(torch::equal(vicreg::drop_path(ones, 0.0, true), ones));
  const torch::Tensor dropped = vicreg::drop_path(ones, 0.3, true);
  const torch::Tensor per_sample = dropped.flatten(1);
  // Each sample is all 0 or all 1 / 0.7.
  EXPECT_TRUE(torch::equal(per_sample.amin(1), per_sample.amax(1)));
  const double kept = (per_sample.select(1, 0) > 0).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(kept, 0.7, 0.03);
  EXPECT_NEAR(per_sample.max().item<double>(), 1 / 0.7, 1e-6);
  // timm's linear rule over the blocks.
  EXPECT_DOUBLE_EQ(vicreg::drop_path_rate(0.1, 0, 12), 0.0);
  EXPECT_DOUBLE_EQ(vicreg::drop_path_rate(0.1, 11, 12), 0.1);
  // A model with drop_path differs between training passes, not in eval mode.
  EncoderConfig c = vit("vit_tiny", 1, 28, 14, 4);
  c.drop_path = 0.5;
  const vicreg::Encoder e = vicreg::make_encoder(c);
  const torch::Tensor x = torch::randn({8, 1, 28, 28});
  e->train();
  EXPECT_FALSE(torch::equal(e->forward(x), e->forward(x)));
  e->eval();
  EXPECT_TRUE(torch::equal(e->forward(x), e->forward(x)));
}

/// An encoder's state under timm's names, renamed by this test's own table.
vicreg::NamedTensors as_timm(const torch::nn::Module& m, const std::string& prefix) {
  const std::vector<std::pair<std::string, std::string>> table = {
      {"class_token", "cls_token"},
      {"encoder.pos_embedding", "pos_embed"},
      {"conv_proj.", "patch_embed.proj."},
      {"encoder.ln.", "norm."},
  };
  const std::vector<std::pair<std::string, std::string>> block = {
      {"ln_1.", "norm1."},
      {"self_attention.in_proj_weight", "attn.qkv.weight"},
      {"self_attention.in_proj_bias", "attn.qkv.bias"},
      {"self_attention.out_proj.", "attn.proj."},
      {"ln_2.", "norm2."},
      {"mlp.0.", "mlp.fc1."},
      {"mlp.3.", "mlp.fc2."},
  };
  vicreg::NamedTensors out;
  const std::string layers = "encoder.layers.encoder_layer_";
  for (const auto& [name, t] : vicreg::module_state(m)) {
    std::string renamed;
    for (const auto& [from, to] : table) {
      if (name.rfind(from, 0) == 0) renamed = to + name.substr(from.size());
    }
    if (name.rfind(layers, 0) == 0) {
      const size_t dot = name.find('.', layers.size());
      const std::string rest = name.substr(dot + 1);
      for (const auto& [from, to] : block) {
        if (rest.rfind(from, 0) == 0) {
          renamed = "blocks." + name.substr(layers.size(), dot - layers.size()) + "." + to +
                    rest.substr(from.size());
        }
      }
    }
    EXPECT_FALSE(renamed.empty()) << name;
    out.emplace_back(prefix + renamed, t.clone());
  }
  return out;
}

TEST(ViT, ReadsTimmsLayoutAndInfersTheArchitecture) {
  torch::manual_seed(4);
  const vicreg::Encoder original = vicreg::make_encoder(vit("vit_small", 3, 32, 8, 3));
  original->eval();
  vicreg::NamedTensors timm = as_timm(*original, "module.");
  timm.emplace_back("module.head.weight", torch::randn({10, 384}));
  timm.emplace_back("module.head.bias", torch::randn({10}));
  const vicreg::NamedTensors own = vicreg::weights_in_own_names(timm, "dino.pth");
  const EncoderConfig found = vicreg::infer_encoder_config(own, "dino.pth");
  EXPECT_EQ(found.arch, "vit_small");
  EXPECT_EQ(found.patch_size, 8);  // not the size's 16
  EXPECT_EQ(found.depth, 3);       // not the size's 12
  EXPECT_EQ(found.image_size, 32);
  EXPECT_EQ(found.in_channels, 3);
  EXPECT_TRUE(found.class_token);
  const vicreg::Encoder back = vicreg::make_encoder(found);
  const vicreg::WeightsLoadReport r = vicreg::load_encoder_weights(*back, own, "dino.pth");
  EXPECT_EQ(r.head, (std::vector<std::string>{"heads.head.weight", "heads.head.bias"}));
  back->eval();
  const torch::Tensor x = torch::randn({2, 3, 32, 32});
  EXPECT_TRUE(torch::equal(back->forward(x), original->forward(x)));

  // Without a qkv bias (qkv_bias=False): zeros.
  vicreg::NamedTensors no_bias;
  for (const auto& e : as_timm(*original, "")) {
    if (e.first.find("qkv.bias") == std::string::npos) no_bias.push_back(e);
  }
  EXPECT_NO_THROW(vicreg::load_encoder_weights(
      *back, vicreg::weights_in_own_names(no_bias, "moco.pth"), "moco.pth"));
  // Parts vicreg's ViT does not have are named.
  vicreg::NamedTensors scaled = as_timm(*original, "");
  scaled.emplace_back("blocks.0.ls1.gamma", torch::ones({384}));
  EXPECT_NE(error_of([&] { vicreg::weights_in_own_names(scaled, "f"); }).find("layer scale"),
            std::string::npos);
  vicreg::NamedTensors pooled = as_timm(*original, "");
  pooled.emplace_back("fc_norm.weight", torch::ones({384}));
  EXPECT_NE(error_of([&] { vicreg::weights_in_own_names(pooled, "f"); }).find("pooled tokens"),
            std::string::npos);
  // I-JEPA's: no class token, position embeddings for the patches only.
  EncoderConfig ijepa = vit("vit_tiny", 3, 32, 16, 1);
  ijepa.class_token = false;
  ijepa.mean_pool = true;
  const vicreg::Encoder no_cls = vicreg::make_encoder(ijepa);
  const EncoderConfig f2 = vicreg::infer_encoder_config(
      vicreg::weights_in_own_names(as_timm(*no_cls, "encoder."), "ijepa.pth"), "ijepa.pth");
  EXPECT_FALSE(f2.class_token);
  EXPECT_TRUE(f2.mean_pool);
  EXPECT_EQ(f2.image_size, 32);
  EXPECT_EQ(f2.patch_size, 0);  // the size's 16
}

TEST(ViT, ImpossibleSettingsAreNamed) {
  const auto check = [](const EncoderConfig& c) {
    vicreg::backbone_family(c.arch).check_settings(c);
    vicreg::make_encoder(c);
  };
  EXPECT_NE(error_of([&] {
              check(vit("vit_tiny", 1, 28, 16, 0));
            }).find("images of 28 px do not split into 16 px patches"),
            std::string::npos);
  EXPECT_NE(error_of([&] { check(vit("vit_b_32", 3, 224, 16, 0)); }).find("vit_b_32 has 32 px"),
            std::string::npos);
  EXPECT_NO_THROW(check(vit("vit_b_32", 3, 64, 32, 1)));
  EXPECT_NE(error_of([&] { check(vit("vit_tiny", 1, 28, 4, -1)); }).find("depth must be"),
            std::string::npos);
  EncoderConfig c = vit("vit_tiny", 1, 28, 4, 1);
  c.class_token = false;
  EXPECT_NE(error_of([&] { check(c); }).find("needs mean_pool"), std::string::npos);
  c.class_token = true;
  c.drop_path = 1.0;
  try {
    check(c);
    ADD_FAILURE();
  } catch (const vicreg::SettingError& e) {
    EXPECT_EQ(e.settings(), (std::vector<std::string>{"drop_path"}));
  }
}

TEST(ViT, PositionEmbeddingsAndClassTokenGetNoWeightDecay) {
  const vicreg::Encoder e = vicreg::make_encoder(vit("vit_tiny", 1, 28, 14, 1));
  const std::vector<torch::Tensor> no_decay = e->no_weight_decay();
  ASSERT_EQ(no_decay.size(), 2u);
  vicreg::OptimizerConfig oc;
  oc.kind = vicreg::OptimizerKind::AdamW;
  oc.lr = 0;  // weight decay alone would still move nothing; check the groups instead
  oc.weight_decay = 0.05;
  const auto opt = vicreg::make_optimizer(e->parameters(), oc, no_decay);
  ASSERT_EQ(opt->param_groups().size(), 2u);
  const auto& plain = opt->param_groups()[1];
  EXPECT_EQ(static_cast<const torch::optim::AdamWOptions&>(plain.options()).weight_decay(), 0);
  std::set<const void*> in_plain;
  for (const auto& p : plain.params()) in_plain.insert(p.unsafeGetTensorImpl());
  for (const auto& t : no_decay) EXPECT_EQ(in_plain.count(t.unsafeGetTensorImpl()), 1u);
  for (const auto& p : opt->param_groups()[0].params()) EXPECT_GE(p.dim(), 2);
  // LARS: neither weight decay nor adaptation for them (an update of exactly -lr * grad).
  oc.kind = vicreg::OptimizerKind::Lars;
  oc.lr = 0.1;
  oc.momentum = 0;
  const auto lars = vicreg::make_optimizer(e->parameters(), oc, no_decay);
  const torch::Tensor before = no_decay[0].detach().clone();
  for (auto& p : e->parameters()) p.mutable_grad() = torch::ones_like(p);
  lars->step();
  EXPECT_TRUE(torch::allclose(no_decay[0].detach(), before - 0.1));
}

TEST(ViT, Bf16AutocastStaysNearFp32) {
  torch::manual_seed(5);
  const vicreg::Encoder e = vicreg::make_encoder(vit("vit_tiny", 1, 28, 7, 2));
  e->eval();
  const torch::Tensor x = torch::randn({4, 1, 28, 28});
  const torch::Tensor fp32 = e->forward(x);
  torch::Tensor low;
  {
    vicreg::AutocastGuard guard(torch::kCPU, vicreg::Precision::Bf16);
    low = e->forward(x);
  }
  EXPECT_TRUE(torch::allclose(low.to(torch::kFloat), fp32, 0.1, 0.1));
  // Training-mode backward runs under autocast and gives fp32 gradients to fp32 weights.
  e->train();
  {
    vicreg::AutocastGuard guard(torch::kCPU, vicreg::Precision::Bf16);
    low = e->forward(x);
  }
  low.to(torch::kFloat).square().sum().backward();
  auto* v = dynamic_cast<vicreg::ViTImpl*>(e.get());
  EXPECT_EQ(v->blocks[0]->self_attention->in_proj_weight.grad().scalar_type(), torch::kFloat);
  EXPECT_GT(v->pos_embedding.grad().abs().sum().item<double>(), 0);
}

}  // namespace
