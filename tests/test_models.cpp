#include "vicreg/models.h"

#include <gtest/gtest.h>

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
    vicreg::Arch arch;
    int64_t in_channels, image_size, in_features;
  };
  using A = vicreg::Arch;
  for (const Case k :
       {Case{A::ConvNet, 1, 28, 0}, Case{A::ConvNet, 3, 32, 0}, Case{A::Mlp, 0, 0, 37},
        Case{A::ResNet18, 3, 32, 0}, Case{A::ResNet18, 1, 224, 0}, Case{A::ResNet34, 3, 224, 0},
        Case{A::ResNet50, 3, 224, 0}, Case{A::ResNet50, 2, 32, 0}, Case{A::ResNet101, 3, 224, 0},
        Case{A::ResNet50x2, 3, 224, 0}}) {
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
        << vicreg::to_string(k.arch) << " " << k.in_channels << "x" << k.image_size;
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
  c.arch = vicreg::Arch::ResNet50x2;
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
    const vicreg::Arch a = vicreg::parse_name<vicreg::Arch>(name);
    const auto shape = vicreg::resnet_shape(a);
    ASSERT_TRUE(shape) << name;
    EXPECT_EQ(vicreg::resnet_arch(shape->depth, shape->widen), a) << name;
    EXPECT_TRUE(vicreg::is_convolutional(a));
  }
  EXPECT_FALSE(vicreg::resnet_shape(vicreg::Arch::ConvNet));
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
  auto small = vicreg::make_encoder({vicreg::Arch::ResNet18, /*in_channels=*/1, /*image_size=*/28});
  auto large = vicreg::make_encoder({vicreg::Arch::ResNet18, 3, 224});
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
  auto net = vicreg::make_encoder({vicreg::Arch::ConvNet, 1, 28});
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
  EncoderConfig plain{vicreg::Arch::ConvNet, 1, 28};
  plain.final_conv = 0;
  auto small = vicreg::make_encoder(plain);
  EXPECT_EQ(small->output_dim(), 256);
  EXPECT_EQ(small->forward(torch::randn({3, 1, 28, 28})).sizes(), torch::IntArrayRef({3, 256}));
  EXPECT_FALSE(names(*small).count("final.0.weight"));
  plain.final_conv = -1;
  EXPECT_THROW(vicreg::make_encoder(plain), vicreg::UsageError);
  EncoderConfig too_deep{vicreg::Arch::ConvNet, 1, 4};
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
  EncoderConfig c{vicreg::Arch::Mlp};
  c.in_features = 10;
  c.encoder_mlp = "32-16";
  auto net = vicreg::make_encoder(c);
  EXPECT_EQ(net->output_dim(), 16);
  EXPECT_EQ(net->forward(torch::randn({4, 10})).sizes(), torch::IntArrayRef({4, 16}));
  EXPECT_THROW(vicreg::make_encoder(EncoderConfig{vicreg::Arch::Mlp}), vicreg::UsageError);
}

TEST(Models, LayerSpecParsing) {
  EXPECT_EQ(vicreg::parse_layer_spec("8192-8192-8192"), (std::vector<int64_t>{8192, 8192, 8192}));
  EXPECT_EQ(vicreg::parse_layer_spec("7"), (std::vector<int64_t>{7}));
  for (const char* bad :
       {"", "-", "8192-", "-8", "8192--8192", "12a", "0-5", "8192 8192", "99999999999"}) {
    EXPECT_THROW(vicreg::parse_layer_spec(bad), vicreg::UsageError) << bad;
  }
  EXPECT_THROW(vicreg::parse_name<vicreg::Arch>("vgg16"), vicreg::UsageError);
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
  config.encoder = {vicreg::Arch::ConvNet, 1, 28};
  config.encoder.width = 8;
  config.mlp = "64-64";
  vicreg::VICReg shared(config);
  EXPECT_TRUE(names(*shared).count("backbone.stage1.0.weight"));
  EXPECT_TRUE(names(*shared).count("projector.0.weight"));
  const auto x = torch::randn({4, 1, 28, 28});
  auto out = shared->forward(x, x);
  EXPECT_EQ(out.z_a.sizes(), torch::IntArrayRef({4, 64}));
  EXPECT_TRUE(torch::allclose(out.z_a, out.z_b));  // same weights, same input

  config.shared_weights = false;
  config.encoder_b = {vicreg::Arch::ResNet18, 1,
                      28};  // a different architecture on the second branch
  vicreg::VICReg separate(config);
  EXPECT_TRUE(names(*separate).count("backbone_b.layer1.0.conv1.weight"));
  out = separate->forward(x, x);
  EXPECT_EQ(out.y_b.sizes(), torch::IntArrayRef({4, 512}));
  EXPECT_EQ(out.z_b.sizes(), torch::IntArrayRef({4, 64}));
  EXPECT_FALSE(torch::allclose(out.z_a, out.z_b));
  EXPECT_GT(vicreg::count_parameters(*separate), vicreg::count_parameters(*shared));
}

}  // namespace
