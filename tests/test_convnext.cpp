// The ConvNeXt family (models/convnext.h): sizes and names against torchvision's, the block's
// computation, feature maps, the official layout, memory formats and settings' errors.
#include "vicreg/error.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/models/convnext.h"
#include "vicreg/models/registry.h"
#include "vicreg/precision.h"

#include <gtest/gtest.h>

#include <set>

namespace {

using vicreg::EncoderConfig;

TEST(ConvNeXt, SizesAreTorchvisionsWithoutTheClassifier) {
  // torchvision's totals minus classifier.2 (C * 1000 + 1000).
  const std::pair<const char*, double> expected[] = {{"convnext_tiny", 27820128},
                                                     {"convnext_small", 49454688},
                                                     {"convnext_base", 87566464},
                                                     {"convnext_large", 196230336}};
  for (const auto& [arch, count] : expected) {
    EXPECT_EQ(vicreg::encoder_parameter_count(EncoderConfig{arch, 3, 224}), count) << arch;
  }
  const vicreg::Encoder tiny = vicreg::make_encoder(EncoderConfig{"convnext_tiny", 3, 224});
  EXPECT_EQ(static_cast<double>(vicreg::count_parameters(*tiny)), 27820128);
  const EncoderConfig small{"convnext_tiny", 1, 28};  // the small-image stem
  EXPECT_EQ(vicreg::encoder_parameter_count(small),
            static_cast<double>(vicreg::count_parameters(*vicreg::make_encoder(small))));
  EXPECT_EQ(tiny->output_dim(), 768);
}

TEST(ConvNeXt, NamesAreTorchvisions) {
  const vicreg::Encoder e = vicreg::make_encoder(EncoderConfig{"convnext_tiny", 3, 224});
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, t] : vicreg::module_state(*e)) shapes[name] = t.sizes().vec();
  EXPECT_EQ(shapes.size(), 180u);  // torchvision's 182 state dict entries without classifier.2
  const std::map<std::string, std::vector<int64_t>> some = {
      {"features.0.0.weight", {96, 3, 4, 4}},     {"features.0.1.weight", {96}},
      {"features.1.0.layer_scale", {96, 1, 1}},   {"features.1.0.block.0.weight", {96, 1, 7, 7}},
      {"features.1.0.block.2.bias", {96}},        {"features.1.0.block.3.weight", {384, 96}},
      {"features.1.0.block.5.weight", {96, 384}}, {"features.2.0.weight", {96}},
      {"features.2.1.weight", {192, 96, 2, 2}},   {"features.5.8.block.3.bias", {1536}},
      {"features.7.2.block.5.bias", {768}},       {"classifier.0.weight", {768}}};
  for (const auto& [name, shape] : some) {
    ASSERT_EQ(shapes.count(name), 1u) << name;
    EXPECT_EQ(shapes[name], shape) << name;
  }
}

TEST(ConvNeXt, BlockIsTheReferenceComputation) {
  torch::manual_seed(1);
  vicreg::ConvNeXtBlock b(8, 0.0, 0.5);
  b->eval();
  {
    torch::NoGradGuard no_grad;
    b->layer_scale.uniform_(0.1, 1.0);
    b->norm->weight.uniform_(0.5, 1.5);
  }
  const torch::Tensor x = torch::randn({2, 8, 6, 5}, torch::kDouble);
  b->to(torch::kDouble);
  // The official ConvNeXt's Block.forward, written out.
  torch::Tensor y = torch::conv2d(x, b->dwconv->weight, b->dwconv->bias, 1, 3, 1, 8);
  y = y.permute({0, 2, 3, 1});
  const torch::Tensor mean = y.mean(-1, true), var = y.var(-1, false, true);
  y = (y - mean) / torch::sqrt(var + 1e-6) * b->norm->weight + b->norm->bias;
  y = torch::linear(y, b->pwconv1->weight, b->pwconv1->bias);
  y = 0.5 * y * (1 + torch::erf(y / std::sqrt(2.0)));
  y = torch::linear(y, b->pwconv2->weight, b->pwconv2->bias) * b->layer_scale.view({-1});
  const torch::Tensor ref = x + y.permute({0, 3, 1, 2});
  EXPECT_TRUE(torch::allclose(b->forward(x), ref, 1e-10, 1e-10));
  // LayerNorm2d normalises over the channels.
  vicreg::LayerNorm2d ln(8);
  ln->to(torch::kDouble);
  const torch::Tensor n = ln->forward(x);
  EXPECT_TRUE(torch::allclose(n.mean(1), torch::zeros({2, 6, 5}, torch::kDouble), 1e-9, 1e-9));
  EXPECT_TRUE(torch::allclose(n.var(1, false), torch::ones({2, 6, 5}, torch::kDouble), 1e-4, 1e-4));
}

TEST(ConvNeXt, FeatureMapsAndRepresentation) {
  torch::manual_seed(2);
  struct Case {
    int64_t channels, size, side;
  };
  for (const Case& k : {Case{1, 28, 3}, Case{3, 32, 4}, Case{3, 224, 7}}) {
    const vicreg::Encoder e =
        vicreg::make_encoder(EncoderConfig{"convnext_tiny", k.channels, k.size});
    e->eval();
    const torch::Tensor x = torch::randn({2, k.channels, k.size, k.size});
    const torch::Tensor map = e->forward_features(x);
    EXPECT_EQ(map.sizes(), torch::IntArrayRef({2, 768, k.side, k.side})) << k.size;
    // The representation: the pooled map through the final LayerNorm.
    auto* c = dynamic_cast<vicreg::ConvNeXtImpl*>(e.get());
    const torch::Tensor pooled = map.mean({2, 3});
    EXPECT_TRUE(torch::allclose(
        e->forward(x),
        torch::layer_norm(pooled, {768}, c->final_norm->weight, c->final_norm->bias, 1e-6), 1e-5,
        1e-5));
  }
  EXPECT_THROW(vicreg::make_encoder(EncoderConfig{"convnext_tiny", 1, 6}), vicreg::UsageError);
  EncoderConfig bad{"convnext_tiny", 1, 28};
  bad.drop_path = -0.1;
  EXPECT_THROW(vicreg::backbone_family("convnext_tiny").check_settings(bad), vicreg::SettingError);
}

TEST(ConvNeXt, ChannelsLastAndBf16GiveTheSameRepresentation) {
  torch::manual_seed(3);
  const vicreg::Encoder e = vicreg::make_encoder(EncoderConfig{"convnext_tiny", 3, 32});
  e->eval();
  const torch::Tensor x = torch::randn({2, 3, 32, 32});
  const torch::Tensor ref = e->forward(x);
  vicreg::to_channels_last(*e);
  EXPECT_TRUE(torch::allclose(e->forward(vicreg::channels_last_copy(x)), ref, 1e-4, 1e-4));
  torch::Tensor low;
  {
    vicreg::AutocastGuard guard(torch::kCPU, vicreg::Precision::Bf16);
    low = e->forward(vicreg::channels_last_copy(x));
  }
  EXPECT_TRUE(torch::allclose(low.to(torch::kFloat), ref, 0.15, 0.15));
}

/// The official layout, renamed by this test's own rules from torchvision's.
vicreg::NamedTensors as_official(const torch::nn::Module& m, const std::string& prefix) {
  vicreg::NamedTensors out;
  for (const auto& [name, t] : vicreg::module_state(m)) {
    std::string n = name;
    torch::Tensor v = t.clone();
    if (n.rfind("classifier.0.", 0) == 0) {
      n = "norm." + n.substr(13);
    } else {
      const int f = n[9] - '0';  // features.F.
      const std::string rest = n.substr(11);
      if (f % 2 == 0) {
        n = "downsample_layers." + std::to_string(f / 2) + "." + rest;
      } else {
        const size_t dot = rest.find('.');
        std::string part = rest.substr(dot + 1);
        const std::map<std::string, std::string> parts = {{"block.0.", "dwconv."},
                                                          {"block.2.", "norm."},
                                                          {"block.3.", "pwconv1."},
                                                          {"block.5.", "pwconv2."}};
        for (const auto& [from, to] : parts) {
          if (part.rfind(from, 0) == 0) part = to + part.substr(from.size());
        }
        if (part == "layer_scale") {
          part = "gamma";
          v = v.reshape({-1});
        }
        n = "stages." + std::to_string(f / 2) + "." + rest.substr(0, dot) + "." + part;
      }
    }
    out.emplace_back(prefix + n, v);
  }
  return out;
}

TEST(ConvNeXt, ReadsTheOfficialLayoutAndInfersTheArchitecture) {
  torch::manual_seed(4);
  const vicreg::Encoder original = vicreg::make_encoder(EncoderConfig{"convnext_tiny", 3, 32});
  original->eval();
  {
    torch::NoGradGuard no_grad;  // a trained model's layer scales are not all 1e-6
    for (auto& p : original->parameters()) p.uniform_(-0.2, 0.2);
  }
  vicreg::NamedTensors official = as_official(*original, "backbone.");
  official.emplace_back("backbone.head.weight", torch::randn({10, 768}));
  official.emplace_back("backbone.head.bias", torch::randn({10}));
  official.emplace_back("projector.0.weight", torch::randn({4, 768}));  // VICRegL's: other parts
  const vicreg::NamedTensors own = vicreg::weights_in_own_names(official, "vicregl.pth");
  const EncoderConfig found = vicreg::infer_encoder_config(own, "vicregl.pth");
  EXPECT_EQ(found.arch, "convnext_tiny");
  EXPECT_EQ(found.in_channels, 3);
  EXPECT_LE(found.image_size, 64);  // the 3x3 stem: the small-image one
  const vicreg::Encoder back = vicreg::make_encoder(found);
  const vicreg::WeightsLoadReport r = vicreg::load_encoder_weights(*back, own, "vicregl.pth");
  EXPECT_EQ(r.prefix, "backbone.");
  EXPECT_EQ(r.head.size(), 2u);
  back->eval();
  const torch::Tensor x = torch::randn({2, 3, 32, 32});
  EXPECT_TRUE(torch::equal(back->forward(x), original->forward(x)));
  // torchvision's own names are recognised as they are (features.0.0 4x4: the large stem).
  const vicreg::Encoder large = vicreg::make_encoder(EncoderConfig{"convnext_small", 1, 224});
  const EncoderConfig l = vicreg::infer_encoder_config(vicreg::module_state(*large), "tv");
  EXPECT_EQ(l.arch, "convnext_small");
  EXPECT_GT(l.image_size, 64);
  EXPECT_EQ(l.in_channels, 1);
  // Something else under the official names is refused, by name.
  vicreg::NamedTensors odd = as_official(*original, "");
  odd.emplace_back("stages.0.0.grn.gamma", torch::ones({96}));  // ConvNeXt V2
  try {
    vicreg::weights_in_own_names(odd, "v2.pt");
    ADD_FAILURE();
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("v2.pt: stages.0.0.grn.gamma"), std::string::npos)
        << e.what();
  }
}

TEST(ConvNeXt, LayerNormExpanderAsVICRegLs) {
  // The expander with LayerNorm (VICRegL's projectors for ConvNeXts): LayerNorm's parameters
  // under the reference's Sequential names, no running statistics, and a bf16 forward pass.
  vicreg::Expander e(24, "32-32-16", /*layer_norm=*/true);
  std::set<std::string> names;
  for (const auto& [name, t] : vicreg::module_state(*e)) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "3.weight",
                                          "3.bias", "4.weight", "4.bias", "6.weight"}));
  const torch::Tensor y = torch::randn({5, 24});
  const torch::Tensor z = e->forward(y);
  EXPECT_EQ(z.sizes(), torch::IntArrayRef({5, 16}));
  {
    vicreg::AutocastGuard guard(torch::kCPU, vicreg::Precision::Bf16);
    EXPECT_TRUE(torch::allclose(e->forward(y).to(torch::kFloat), z, 0.1, 0.1));
  }
  // One sample is enough (no batch statistics), unlike BatchNorm in training mode.
  e->train();
  EXPECT_NO_THROW(e->forward(torch::randn({1, 24})));
}

}  // namespace
