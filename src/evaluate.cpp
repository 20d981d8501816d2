#include "vicreg/evaluate.h"

#include "vicreg/augment.h"

#include <opencv2/imgproc.hpp>
#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/normalization.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace vicreg {

namespace F = torch::nn::functional;

EvalTransform eval_transform_for(const std::string& recipe, int channels, int64_t size) {
  const Recipe r = make_recipe(recipe, channels, static_cast<int>(size));
  return {r.view_a.crop.size, r.view_a.mean, r.view_a.std};
}

namespace {

/// Resize (shorter side to size * 256 / 224) and centre crop, unless the image already has the
/// size.
cv::Mat resize_center(const cv::Mat& img, int size) {
  if (img.rows == size && img.cols == size) return img;
  const double target = std::round(size * 256.0 / 224.0);
  const double scale = target / std::min(img.rows, img.cols);
  cv::Mat resized;
  cv::resize(img, resized,
             cv::Size(std::max(size, static_cast<int>(std::lround(img.cols * scale))),
                      std::max(size, static_cast<int>(std::lround(img.rows * scale)))),
             0, 0, scale < 1 ? cv::INTER_AREA : cv::INTER_CUBIC);
  return resized(cv::Rect((resized.cols - size) / 2, (resized.rows - size) / 2, size, size));
}

}  // namespace

torch::Tensor compute_representations(EncoderImpl& encoder, const Dataset& data,
                                      const EvalTransform& transform, int64_t batch_size,
                                      const torch::Device& device) {
  TORCH_CHECK(batch_size >= 1, "compute_representations: batch_size must be >= 1");
  const bool was_training = encoder.is_training();
  encoder.eval();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  const int64_t n = data.size();
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t b = std::min(batch_size, n - start);
    torch::Tensor x;
    if (data.is_vector()) {
      x = data.vectors.narrow(0, start, b);
    } else {
      const int64_t s = transform.size;
      x = torch::empty({b, data.channels, s, s}, torch::kFloat);
      float* dst = x.data_ptr<float>();
      for (int64_t i = 0; i < b; ++i) {
        normalize_into(resize_center(data.image(start + i), static_cast<int>(s)), transform.mean,
                       transform.std, dst + i * data.channels * s * s);
      }
    }
    out.push_back(encoder.forward(x.to(device)).to(torch::kCPU, torch::kFloat));
  }
  if (was_training) encoder.train();
  return torch::cat(out);
}

Accuracy accuracy(const torch::Tensor& scores, const torch::Tensor& labels) {
  TORCH_CHECK(scores.dim() == 2 && labels.dim() == 1 && scores.size(0) == labels.size(0) &&
                  scores.size(0) > 0,
              "accuracy: expected scores [N, C] and labels [N], got ", scores.sizes(), " and ",
              labels.sizes());
  const int64_t k = std::min<int64_t>(5, scores.size(1));
  const torch::Tensor top = std::get<1>(scores.topk(k, 1));
  const torch::Tensor hit = top.eq(labels.to(top.device()).unsqueeze(1));
  Accuracy a;
  a.top1 = hit.select(1, 0).to(torch::kDouble).mean().item<double>();
  a.top5 = hit.any(1).to(torch::kDouble).mean().item<double>();
  return a;
}

namespace {

void check_features(const torch::Tensor& x, const torch::Tensor& y, const char* what) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 1 && x.size(0) == y.size(0) && x.size(0) > 0, what,
              ": expected features [N, D] and labels [N], got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(torch::isfinite(x).all().item<bool>(), what, ": features hold NaN or Inf");
  TORCH_CHECK(y.min().item<int64_t>() >= 0, what, ": labels must be >= 0");
}

}  // namespace

Accuracy linear_probe(const torch::Tensor& train_x, const torch::Tensor& train_y,
                      const torch::Tensor& test_x, const torch::Tensor& test_y,
                      const LinearProbeOptions& options) {
  check_features(train_x, train_y, "linear_probe (train)");
  check_features(test_x, test_y, "linear_probe (test)");
  TORCH_CHECK(train_x.size(1) == test_x.size(1), "linear_probe: train features have ",
              train_x.size(1), " dimensions, test features ", test_x.size(1));
  TORCH_CHECK(options.epochs >= 1 && options.batch_size >= 1 && options.lr > 0,
              "linear_probe: epochs, batch_size and lr must be positive");
  torch::Tensor xtr = train_x.to(torch::kFloat), xte = test_x.to(torch::kFloat);
  if (options.standardize) {
    const torch::Tensor mean = xtr.mean(0), std = xtr.std(0).clamp_min(1e-6);
    xtr = (xtr - mean) / std;
    xte = (xte - mean) / std;
  }
  const torch::Tensor ytr = train_y.to(torch::kLong), yte = test_y.to(torch::kLong);
  const int64_t classes =
      std::max(ytr.max().item<int64_t>(), yte.max().item<int64_t>()) + 1;
  torch::manual_seed(options.seed);
  torch::nn::Linear head(xtr.size(1), classes);
  {
    torch::NoGradGuard no_grad;
    head->weight.normal_(0, 0.01);
    head->bias.zero_();
  }
  torch::optim::SGD opt(head->parameters(), torch::optim::SGDOptions(options.lr)
                                                .momentum(options.momentum)
                                                .weight_decay(options.weight_decay));
  const int64_t n = xtr.size(0);
  const int64_t steps_per_epoch = (n + options.batch_size - 1) / options.batch_size;
  const int64_t total = options.epochs * steps_per_epoch;
  torch::Generator gen = at::detail::createCPUGenerator(options.seed);
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    // One gather per epoch; the batches are then views of the shuffled copy.
    const torch::Tensor order = torch::randperm(n, gen);
    const torch::Tensor xs = xtr.index_select(0, order), ys = ytr.index_select(0, order);
    for (int64_t s = 0; s < n; s += options.batch_size, ++step) {
      const double lr = 0.5 * options.lr * (1 + std::cos(M_PI * step / total));
      for (auto& g : opt.param_groups()) {
        static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
      }
      const int64_t b = std::min(options.batch_size, n - s);
      opt.zero_grad();
      F::cross_entropy(head(xs.narrow(0, s, b)), ys.narrow(0, s, b)).backward();
      opt.step();
    }
  }
  torch::NoGradGuard no_grad;
  return accuracy(head(xte), yte);
}

torch::Tensor knn_scores(const torch::Tensor& bank_x, const torch::Tensor& bank_y,
                         const torch::Tensor& query_x, int64_t k, double temperature,
                         int64_t num_classes) {
  check_features(bank_x, bank_y, "knn (bank)");
  TORCH_CHECK(query_x.dim() == 2 && query_x.size(1) == bank_x.size(1),
              "knn: queries must be [M, ", bank_x.size(1), "], got ", query_x.sizes());
  TORCH_CHECK(k >= 1 && temperature > 0, "knn: k must be >= 1 and the temperature > 0");
  k = std::min<int64_t>(k, bank_x.size(0));
  const int64_t classes =
      num_classes > 0 ? num_classes : bank_y.max().item<int64_t>() + 1;
  const auto normalize = [](const torch::Tensor& t) {
    return F::normalize(t.to(torch::kFloat), F::NormalizeFuncOptions().dim(1));
  };
  const torch::Tensor bank = normalize(bank_x), labels = bank_y.to(torch::kLong);
  const torch::Tensor queries = normalize(query_x);
  std::vector<torch::Tensor> out;
  const int64_t chunk = 512;  // keeps the similarity block at chunk x N
  for (int64_t s = 0; s < queries.size(0); s += chunk) {
    const torch::Tensor q = queries.narrow(0, s, std::min(chunk, queries.size(0) - s));
    auto [sim, idx] = q.mm(bank.t()).topk(k, 1);
    const torch::Tensor votes = torch::zeros({q.size(0), classes}, torch::kFloat)
                                    .scatter_add_(1, labels.index({idx}), (sim / temperature).exp());
    out.push_back(votes);
  }
  return torch::cat(out);
}

double rankme(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0 && x.size(1) > 0, "rankme: expected [N, D], got ",
              x.sizes());
  const torch::Tensor s = torch::linalg_svdvals(x.to(torch::kDouble));
  const double total = s.sum().item<double>();
  if (total <= 0) return 1.0;
  const torch::Tensor p = s / total + 1e-12;
  return std::exp(-(p * p.log()).sum().item<double>());
}

}  // namespace vicreg
