#include "vicreg/error.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/models.h"
#include "vicreg/models/convnet.h"
#include "vicreg/models/mlp.h"
#include "vicreg/models/registry.h"
#include "vicreg/models/resnet.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <stdexcept>

namespace {

using vicreg::EncoderConfig;

std::set<std::string> names(const torch::nn::Module& m) {
  std::set<std::string> out;
  for (const auto& p : m.named_parameters()) out.insert(p.key());
  for (const auto& b : m.named_buffers()) out.insert(b.key());
  return out;
}

TEST(Models, ResNetParameterCountsMatchTorchvisionWithoutFc) {
  // torchvision's totals minus the 1000-class fc (512*1000+1000, 2048*1000+1000).
  const std::pair<int, int64_t> expected[] = {{18, 11689512 - 513000},
                                              {34, 21797672 - 513000},
                                              {50, 25557032 - 2049000},
                                              {101, 44549160 - 2049000},
                                              {152, 60192808 - 2049000}};
  for (const auto& [depth, count] : expected) {
    vicreg::ResNetImpl net(vicreg::ResNetOptions().depth(depth));
    EXPECT_EQ(vicreg::count_parameters(net), count) << "resnet" << depth;
    EXPECT_EQ(net.output_dim(), depth >= 50 ? 2048 : 512);
  }
  EXPECT_THROW(vicreg::ResNetImpl(vicreg::ResNetOptions().depth(77)), vicreg::UsageError);
}

TEST(Models, ParameterCountsWithoutBuildingMatchTheBuiltModels) {
  // encoder_parameter_count checks stored settings against a file before building anything: it
  // must count what make_encoder builds, for every kind of encoder.
  struct Case {
    std::string arch;
    int64_t in_channels, image_size, in_features;
  };
  for (const Case& k :
       {Case{"convnet", 1, 28, 0}, Case{"convnet", 3, 32, 0}, Case{"mlp", 0, 0, 37},
        Case{"resnet18", 3, 32, 0}, Case{"resnet18", 1, 224, 0}, Case{"resnet34", 3, 224, 0},
        Case{"resnet50", 3, 224, 0}, Case{"resnet50", 2, 32, 0}, Case{"resnet101", 3, 224, 0},
        Case{"resnet50x2", 3, 224, 0}}) {
    vicreg::EncoderConfig c;
    c.arch = k.arch;
    c.in_channels = k.in_channels;
    c.image_size = k.image_size;
    c.in_features = k.in_features;
    c.width = 12;
    c.stages = 3;
    c.encoder_mlp = "16-24";
    const vicreg::Encoder e = vicreg::make_encoder(c);
    EXPECT_EQ(vicreg::encoder_parameter_count(c), static_cast<double>(vicreg::count_parameters(*e)))
        << k.arch << " " << k.in_channels << "x" << k.image_size;
  }
  vicreg::EncoderConfig final_conv;
  final_conv.width = 8;
  final_conv.stages = 2;
  final_conv.final_conv = 40;
  EXPECT_EQ(vicreg::encoder_parameter_count(final_conv),
            static_cast<double>(vicreg::count_parameters(*vicreg::make_encoder(final_conv))));
  // Absurd settings are counted, not built (nor overflowed).
  vicreg::EncoderConfig huge;
  huge.width = int64_t{1} << 40;
  huge.stages = 8;
  EXPECT_GT(vicreg::encoder_parameter_count(huge), 1e29);
}

TEST(Models, WideResNetsWidenEveryWidth) {
  // The official resnet50x2: stem, blocks and output all twice as wide (4096-d), unlike
  // torchvision's wide_resnet50_2 (2048-d). Its full shape check against the reference
  // definition is in tests/python/test_weights.py.
  vicreg::EncoderConfig c;
  c.arch = "resnet50x2";
  c.in_channels = 3;
  c.image_size = 224;
  const vicreg::Encoder e = vicreg::make_encoder(c);
  EXPECT_EQ(e->output_dim(), 4096);
  const auto p = e->named_parameters();
  EXPECT_EQ(p["conv1.weight"].sizes(), torch::IntArrayRef({128, 3, 7, 7}));
  EXPECT_EQ(p["layer1.0.conv1.weight"].sizes(), torch::IntArrayRef({128, 128, 1, 1}));
  EXPECT_EQ(p["layer4.2.conv3.weight"].sizes(), torch::IntArrayRef({4096, 1024, 1, 1}));
  EXPECT_EQ(e->forward(torch::randn({1, 3, 64, 64})).sizes(), torch::IntArrayRef({1, 4096}));
  for (const char* name : {"resnet101", "resnet152", "resnet200", "resnet50x2", "resnet50x4",
                           "resnet50x5", "resnet200x2"}) {
    const auto shape = vicreg::resnet_shape(name);
    ASSERT_TRUE(shape) << name;
    EXPECT_EQ(vicreg::resnet_arch(shape->depth, shape->widen), name) << name;
    EXPECT_TRUE(vicreg::backbone_traits(name).convolutional);
  }
  EXPECT_FALSE(vicreg::resnet_shape("convnet"));
  EXPECT_EQ(vicreg::resnet_depth(true, {3, 24, 36, 3}), 200);
  EXPECT_EQ(vicreg::resnet_depth(false, {3, 4, 6, 3}), 34);
  EXPECT_FALSE(vicreg::resnet_depth(true, {2, 5, 6, 3}));
}

TEST(Models, ResNetNamesMatchTorchvision) {
  vicreg::ResNetImpl net(vicreg::ResNetOptions().depth(50));
  const auto n = names(net);
  for (const char* key :
       {"conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
        "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
        "layer4.2.conv2.weight"}) {
    EXPECT_TRUE(n.count(key)) << key;
  }
  EXPECT_FALSE(n.count("fc.weight"));
  EXPECT_EQ(net.named_parameters()["layer2.0.conv2.weight"].sizes(),
            torch::IntArrayRef({128, 128, 3, 3}));  // v1.5: the stride sits in the 3x3 conv
  vicreg::ResNetImpl r18(vicreg::ResNetOptions().depth(18));
  const auto n18 = names(r18);
  EXPECT_TRUE(n18.count("layer2.1.bn2.weight"));
  EXPECT_FALSE(n18.count("layer1.0.downsample.0.weight"));  // same shape: no projection
  EXPECT_TRUE(n18.count("layer2.0.downsample.0.weight"));
}

TEST(Models, ZeroInitResidualZeroesTheLastNormOfEachBlock) {
  vicreg::ResNetImpl zeroed(vicreg::ResNetOptions().depth(18));
  vicreg::ResNetImpl plain(vicreg::ResNetOptions().depth(18).zero_init_residual(false));
  const auto pz = zeroed.named_parameters(), pp = plain.named_parameters();
  EXPECT_EQ(pz["layer3.1.bn2.weight"].abs().sum().item<float>(), 0.f);
  EXPECT_EQ(pz["layer3.1.bn1.weight"].min().item<float>(), 1.f);
  EXPECT_EQ(pp["layer3.1.bn2.weight"].min().item<float>(), 1.f);
  // With zeroed residual branches every block starts as the identity (plus ReLU).
  vicreg::ResNetImpl z50(vicreg::ResNetOptions().depth(50));
  EXPECT_EQ(z50.named_parameters()["layer1.1.bn3.weight"].abs().sum().item<float>(), 0.f);
}

TEST(Models, SmallStemKeepsResolutionAndFollowsChannels) {
  torch::manual_seed(0);
  auto small = vicreg::make_encoder({"resnet18", /*in_channels=*/1, /*image_size=*/28});
  auto large = vicreg::make_encoder({"resnet18", 3, 224});
  auto* rs = dynamic_cast<vicreg::ResNetImpl*>(small.get());
  ASSERT_NE(rs, nullptr);
  EXPECT_TRUE(rs->options.small_stem());
  EXPECT_EQ(rs->conv1->weight.sizes(), torch::IntArrayRef({64, 1, 3, 3}));
  EXPECT_FALSE(dynamic_cast<vicreg::ResNetImpl*>(large.get())->options.small_stem());
  EXPECT_EQ(small->forward(torch::randn({2, 1, 28, 28})).sizes(), torch::IntArrayRef({2, 512}));
  EXPECT_EQ(large->forward(torch::randn({2, 3, 64, 64})).sizes(), torch::IntArrayRef({2, 512}));
  EXPECT_THROW(small->forward(torch::randn({2, 3, 28, 28})), c10::Error);
}

TEST(Models, ConvNetShapesAndNames) {
  // The default: a last 1x1 conv to 1024 channels sets the representation's size; final.0 is
  // the conv, final.1 its BatchNorm.
  auto net = vicreg::make_encoder({"convnet", 1, 28});
  EXPECT_EQ(net->output_dim(), 1024);
  const torch::Tensor y = net->forward(torch::randn({3, 1, 28, 28}));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({3, 1024}));
  EXPECT_GE(y.min().item<float>(), 0.0F);  // pooled after the ReLU
  EXPECT_TRUE(names(*net).count("stage4.0.weight"));
  const auto p = net->named_parameters();
  EXPECT_EQ(p["final.0.weight"].sizes(), torch::IntArrayRef({1024, 256, 1, 1}));
  EXPECT_EQ(p["final.1.weight"].sizes(), torch::IntArrayRef({1024}));
  EXPECT_TRUE(net->named_buffers().contains("final.1.running_var"));
  // Without it, the last stage's pooled 256 channels.
  EncoderConfig plain{"convnet", 1, 28};
  plain.final_conv = 0;
  auto small = vicreg::make_encoder(plain);
  EXPECT_EQ(small->output_dim(), 256);
  EXPECT_EQ(small->forward(torch::randn({3, 1, 28, 28})).sizes(), torch::IntArrayRef({3, 256}));
  EXPECT_FALSE(names(*small).count("final.0.weight"));
  plain.final_conv = -1;
  EXPECT_THROW(vicreg::make_encoder(plain), vicreg::UsageError);
  EncoderConfig too_deep{"convnet", 1, 4};
  too_deep.stages = 4;
  EXPECT_THROW(vicreg::make_encoder(too_deep), vicreg::UsageError);
}

TEST(Models, GlobalAvgPoolIsTheSpatialMeanWithAGradientInTheInputsMemoryFormat) {
  torch::manual_seed(5);
  const auto cl = torch::MemoryFormat::ChannelsLast;
  for (const bool channels_last : {false, true}) {
    for (const auto dtype : {torch::kDouble, torch::kBFloat16}) {
      torch::Tensor x = torch::randn({3, 5, 4, 2}, torch::kDouble).to(dtype);
      if (channels_last) x = x.contiguous(cl);
      const torch::Tensor xa = x.detach().requires_grad_(), xb = x.detach().requires_grad_();
      const torch::Tensor ya = vicreg::global_avg_pool(xa), yb = xb.mean({2, 3});
      EXPECT_EQ(ya.sizes(), torch::IntArrayRef({3, 5}));
      EXPECT_EQ(ya.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(ya, yb));
      const torch::Tensor g = torch::randn({3, 5}, torch::kDouble).to(dtype);
      ya.backward(g);
      yb.backward(g);
      EXPECT_TRUE(torch::equal(xa.grad(), xb.grad())) << channels_last << " " << dtype;
      EXPECT_TRUE(xa.grad().is_contiguous(channels_last ? cl : torch::MemoryFormat::Contiguous));
      // The gradient of sum_ij w_ij mean_hw x_ijhw is w_ij / (H W) everywhere: finite differences.
      if (dtype == torch::kDouble) {
        const double eps = 1e-6;
        torch::Tensor xp = x.clone(), xm = x.clone();
        xp.index_put_({1, 2, 3, 0}, x.index({1, 2, 3, 0}) + eps);
        xm.index_put_({1, 2, 3, 0}, x.index({1, 2, 3, 0}) - eps);
        const double fd = ((vicreg::global_avg_pool(xp) * g).sum().item<double>() -
                           (vicreg::global_avg_pool(xm) * g).sum().item<double>()) /
                          (2 * eps);
        EXPECT_NEAR(xa.grad().index({1, 2, 3, 0}).item<double>(), fd, 1e-8);
        EXPECT_NEAR(fd, g.index({1, 2}).item<double>() / 8, 1e-8);
      }
    }
  }
  EXPECT_THROW(vicreg::global_avg_pool(torch::randn({3, 5})), c10::Error);
}

TEST(Models, MLPEncoder) {
  EncoderConfig c{"mlp"};
  c.in_features = 10;
  c.encoder_mlp = "32-16";
  auto net = vicreg::make_encoder(c);
  EXPECT_EQ(net->output_dim(), 16);
  EXPECT_EQ(net->forward(torch::randn({4, 10})).sizes(), torch::IntArrayRef({4, 16}));
  EXPECT_THROW(vicreg::make_encoder(EncoderConfig{"mlp"}), vicreg::UsageError);
}

TEST(Models, LayerSpecParsing) {
  EXPECT_EQ(vicreg::parse_layer_spec("8192-8192-8192"), (std::vector<int64_t>{8192, 8192, 8192}));
  EXPECT_EQ(vicreg::parse_layer_spec("7"), (std::vector<int64_t>{7}));
  for (const char* bad :
       {"", "-", "8192-", "-8", "8192--8192", "12a", "0-5", "8192 8192", "99999999999"}) {
    EXPECT_THROW(vicreg::parse_layer_spec(bad), vicreg::UsageError) << bad;
  }
  EXPECT_THROW(vicreg::make_encoder(vicreg::EncoderConfig{"vgg16"}), vicreg::UsageError);
}

TEST(Models, ExpanderMatchesTheReferenceSequential) {
  vicreg::Expander e(512, "64-64-32");
  const auto n = names(*e);
  for (const char* key :
       {"0.weight", "0.bias", "1.weight", "1.running_mean", "3.weight", "4.bias", "6.weight"}) {
    EXPECT_TRUE(n.count(key)) << key;
  }
  EXPECT_FALSE(n.count("6.bias"));  // last Linear without bias
  EXPECT_EQ(e->named_parameters()["6.weight"].sizes(), torch::IntArrayRef({32, 64}));
  EXPECT_EQ(e->output_dim(), 32);
  EXPECT_EQ(e->forward(torch::randn({5, 512})).sizes(), torch::IntArrayRef({5, 32}));
}

TEST(Models, VICRegSharedAndSeparateBranches) {
  vicreg::VICRegModelConfig config;
  config.encoder = {"convnet", 1, 28};
  config.encoder.width = 8;
  config.mlp = "64-64";
  vicreg::VICReg shared(config);
  EXPECT_TRUE(names(*shared).count("backbone.stage1.0.weight"));
  EXPECT_TRUE(names(*shared).count("projector.0.weight"));
  const auto x = torch::randn({4, 1, 28, 28});
  auto out = shared->forward(x, x);
  ASSERT_EQ(out.views.size(), 2u);
  EXPECT_EQ(out.views[0].z.sizes(), torch::IntArrayRef({4, 64}));
  EXPECT_TRUE(torch::allclose(out.views[0].z, out.views[1].z));  // same weights, same input

  config.shared_weights = false;
  config.encoder_b = {"resnet18", 1, 28};  // a different architecture on the second branch
  vicreg::VICReg separate(config);
  EXPECT_TRUE(names(*separate).count("backbone_b.layer1.0.conv1.weight"));
  out = separate->forward(x, x);
  EXPECT_EQ(out.views[1].y.sizes(), torch::IntArrayRef({4, 512}));
  EXPECT_EQ(out.views[1].z.sizes(), torch::IntArrayRef({4, 64}));
  EXPECT_FALSE(torch::allclose(out.views[0].z, out.views[1].z));
  EXPECT_GT(vicreg::count_parameters(*separate), vicreg::count_parameters(*shared));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The backbone registry and feature maps

namespace {

/// A small encoder of every family, on its kind of input.
struct FamilyCase {
  vicreg::EncoderConfig config;
  torch::Tensor input;
};
std::vector<FamilyCase> one_of_each_family() {
  vicreg::EncoderConfig convnet{"convnet", 3, 16};
  convnet.width = 4;
  convnet.stages = 3;
  convnet.final_conv = 24;
  vicreg::EncoderConfig resnet{"resnet18", 2, 32};
  vicreg::EncoderConfig mlp{"mlp"};
  mlp.in_features = 7;
  mlp.encoder_mlp = "12-10";
  vicreg::EncoderConfig vit{"vit_tiny", 1, 16};
  vit.patch_size = 8;
  vit.depth = 2;
  vicreg::EncoderConfig convnext{"convnext_tiny", 3, 16};
  return {{convnet, torch::randn({3, 3, 16, 16})},
          {resnet, torch::randn({3, 2, 32, 32})},
          {mlp, torch::randn({3, 7})},
          {vit, torch::randn({3, 1, 16, 16})},
          {convnext, torch::randn({3, 3, 16, 16})}};
}

}  // namespace

TEST(Registry, EveryNameBelongsToOneFamily) {
  const std::vector<std::string>& names = vicreg::backbone_names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), names.size());
  size_t listed = 0;
  for (const vicreg::BackboneFamily& f : vicreg::backbone_families()) {
    listed += f.archs.size();
    for (const std::string& a : f.archs) EXPECT_EQ(&vicreg::backbone_family(a), &f) << a;
    EXPECT_TRUE(f.check_settings && f.build && f.parameter_count) << f.name;
    EXPECT_NE(vicreg::backbone_help().find(f.help), std::string::npos) << f.name;
  }
  EXPECT_EQ(listed, names.size());
  for (const char* family : {"resnet", "convnet", "mlp", "vit", "convnext"}) {
    EXPECT_NE(std::find_if(vicreg::backbone_families().begin(), vicreg::backbone_families().end(),
                           [&](const vicreg::BackboneFamily& f) { return f.name == family; }),
              vicreg::backbone_families().end())
        << family;
  }
  try {
    vicreg::backbone_family("vgg16");
    ADD_FAILURE() << "vgg16 accepted";
  } catch (const vicreg::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown backbone 'vgg16': use resnet18"),
              std::string::npos)
        << e.what();
  }
  // What the numerics follow: a family's traits, not its name.
  EXPECT_TRUE(vicreg::backbone_traits("resnet50").convolutional);
  EXPECT_TRUE(vicreg::backbone_traits("convnet").images);
  EXPECT_FALSE(vicreg::backbone_traits("mlp").convolutional);
  EXPECT_FALSE(vicreg::backbone_traits("mlp").images);
  EXPECT_FALSE(vicreg::backbone_traits("vit_small").convolutional);
  EXPECT_TRUE(vicreg::backbone_traits("convnext_base").convolutional);
}

TEST(Registry, EncodersGiveTheirLastFeaturesAndPoolThemIntoTheRepresentation) {
  torch::manual_seed(5);
  for (const FamilyCase& k : one_of_each_family()) {
    const vicreg::Encoder e = vicreg::make_encoder(k.config);
    e->eval();
    const torch::Tensor features = e->forward_features(k.input);
    const vicreg::FeatureLayout layout = vicreg::backbone_traits(k.config.arch).features;
    EXPECT_EQ(e->feature_layout(), layout) << k.config.arch;
    EXPECT_EQ(features.size(0), 3) << k.config.arch;
    if (layout == vicreg::FeatureLayout::Map) {
      ASSERT_EQ(features.dim(), 4) << k.config.arch;
      EXPECT_EQ(features.size(1), e->feature_dim()) << k.config.arch;
    } else if (layout == vicreg::FeatureLayout::Tokens) {
      ASSERT_EQ(features.dim(), 3) << k.config.arch;
      EXPECT_EQ(features.size(2), e->feature_dim()) << k.config.arch;
    } else {
      ASSERT_EQ(features.dim(), 2) << k.config.arch;
    }
    // The representation is the pooled features, bit for bit.
    const torch::Tensor y = e->forward(k.input);
    EXPECT_TRUE(torch::equal(e->pool(features), y)) << k.config.arch;
    EXPECT_EQ(y.sizes(), torch::IntArrayRef({3, e->output_dim()})) << k.config.arch;
  }
  // The small-stem ResNet-18's map: 512 channels at 1/8 of 32 px.
  vicreg::EncoderConfig r{"resnet18", 3, 32};
  EXPECT_EQ(vicreg::make_encoder(r)->forward_features(torch::randn({2, 3, 32, 32})).sizes(),
            torch::IntArrayRef({2, 512, 4, 4}));
  // The model hands every view's features, representation and embedding to the objective.
  vicreg::VICRegModelConfig mc;
  mc.encoder = one_of_each_family()[0].config;
  mc.mlp = "16-8";
  vicreg::VICReg model(mc);
  const torch::Tensor x = torch::randn({4, 3, 16, 16});
  EXPECT_FALSE(model->forward(x, x).views[0].features.defined());  // not kept unless asked for
  const vicreg::ModelOutputs out = model->forward(x, x.flip(3), /*features=*/true);
  ASSERT_EQ(out.views.size(), 2u);
  for (const vicreg::ViewOutput& v : out.views) {
    EXPECT_EQ(v.features.sizes(), torch::IntArrayRef({4, 24, 4, 4}));
    EXPECT_EQ(v.y.sizes(), torch::IntArrayRef({4, 24}));
    EXPECT_EQ(v.z.sizes(), torch::IntArrayRef({4, 8}));
  }
}

TEST(Registry, EveryFamilyReadsItsOwnWeightsBack) {
  torch::manual_seed(6);
  for (const FamilyCase& k : one_of_each_family()) {
    const vicreg::Encoder original = vicreg::make_encoder(k.config);
    original->eval();
    // Under a prefix, as a VICReg model's state dict holds them.
    vicreg::NamedTensors weights;
    for (auto& [name, t] : vicreg::module_state(*original))
      weights.emplace_back("backbone." + name, t);
    const vicreg::EncoderConfig found = vicreg::infer_encoder_config(weights, "test");
    EXPECT_EQ(found.arch, k.config.arch);
    const vicreg::Encoder back = vicreg::make_encoder(found);
    vicreg::load_encoder_weights(*back, weights, "test");
    back->eval();
    EXPECT_TRUE(torch::equal(back->forward(k.input), original->forward(k.input))) << k.config.arch;
  }
}
