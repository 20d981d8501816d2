// Built against an installed vicreg (find_package or pkg-config): the loss against its formula,
// an encoder by name, and the library's version against the headers' and the expected one.
//   consumer EXPECTED_VERSION
#include <vicreg/loss.h>
#include <vicreg/models.h>
#include <vicreg/version.h>

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer EXPECTED_VERSION\n");
    return 2;
  }
  if (std::strcmp(vicreg::version(), argv[1]) != 0 ||
      std::strcmp(VICREG_VERSION_STRING, argv[1]) != 0) {
    std::fprintf(stderr, "version: library %s, headers %s, expected %s\n", vicreg::version(),
                 VICREG_VERSION_STRING, argv[1]);
    return 1;
  }
  torch::manual_seed(0);
  const auto z_a = torch::randn({16, 8}, torch::kDouble);
  const auto z_b = torch::randn({16, 8}, torch::kDouble);
  const auto terms = vicreg::vicreg_loss(z_a, z_b);
  // The official preset, written out: 25 s + 25 (v(Z) + v(Z')) / 2 + (c(Z) + c(Z')), s the mean
  // squared difference.
  const auto inv = (z_a - z_b).pow(2).mean();
  auto var_cov = [](const torch::Tensor& z) {
    const auto c = z - z.mean(0);
    const auto std = (c.var(0) + 1e-4).sqrt();
    const auto cov = c.t().mm(c) / (z.size(0) - 1);
    const auto off = cov.pow(2).sum() - cov.diagonal().pow(2).sum();
    return std::make_pair(torch::relu(1 - std).mean(), off / z.size(1));
  };
  const auto [va, ca] = var_cov(z_a);
  const auto [vb, cb] = var_cov(z_b);
  const double expected = (25 * inv + 12.5 * (va + vb) + (ca + cb)).item<double>();
  const double got = terms.total.item<double>();
  if (std::abs(got - expected) > 1e-9 * std::abs(expected)) {
    std::fprintf(stderr, "loss %.17g, formula %.17g\n", got, expected);
    return 1;
  }
  vicreg::EncoderConfig config;
  config.arch = "resnet18";
  config.in_channels = 3;
  config.image_size = 32;
  const auto encoder = vicreg::make_encoder(config);
  encoder->eval();
  const auto y = encoder->forward(torch::randn({2, 3, 32, 32}));
  if (y.sizes() != torch::IntArrayRef({2, 512})) {
    std::fprintf(stderr, "resnet18 representation of shape %s, expected [2, 512]\n",
                 c10::str(y.sizes()).c_str());
    return 1;
  }
  std::printf("consumer: vicreg %s, loss %.6f, resnet18 -> [2, 512]\n", vicreg::version(), got);
  return 0;
}
