#include "vicreg/evaluate.h"

#include "vicreg/augment.h"
#include "vicreg/error.h"

#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/normalization.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <opencv2/imgproc.hpp>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

namespace vicreg {

template <>
const NameTable<Protocol>& name_table<Protocol>() {
  static const NameTable<Protocol> t{
      "--protocol",
      {{Protocol::Linear, "linear"}, {Protocol::Knn, "knn"}, {Protocol::Finetune, "finetune"}}};
  return t;
}

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
                                      const torch::Device& device, Precision precision) {
  TORCH_CHECK(batch_size >= 1, "compute_representations: batch_size must be >= 1");
  const bool was_training = encoder.is_training();
  encoder.eval();
  torch::NoGradGuard no_grad;
  const bool hwc = has_channels_last_weights(encoder);
  const auto image_options =
      torch::TensorOptions(torch::kFloat)
          .memory_format(hwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  std::vector<torch::Tensor> out;
  const int64_t n = data.size();
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t b = std::min(batch_size, n - start);
    torch::Tensor x;
    if (data.is_vector()) {
      x = data.vectors.narrow(0, start, b);
    } else {
      const int64_t s = transform.size;
      x = torch::empty({b, data.channels, s, s}, image_options);
      float* dst = x.data_ptr<float>();
      for (int64_t i = 0; i < b; ++i) {
        normalize_into(resize_center(data.image(start + i), static_cast<int>(s)), transform.mean,
                       transform.std, dst + i * data.channels * s * s, hwc);
      }
    }
    torch::Tensor y;
    {
      const AutocastGuard autocast(device, precision);
      y = encoder.forward(x.to(device));
    }
    out.push_back(y.to(torch::kCPU, torch::kFloat));
  }
  if (was_training) encoder.train();
  return torch::cat(out);
}

torch::Tensor compute_embeddings(ExpanderImpl& expander, const torch::Tensor& y,
                                 const torch::Device& device, Precision precision) {
  const bool was_training = expander.is_training();
  expander.eval();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> z;
  for (int64_t i = 0; i < y.size(0); i += 4096) {
    const torch::Tensor chunk = y.narrow(0, i, std::min<int64_t>(4096, y.size(0) - i));
    const AutocastGuard autocast(device, precision);
    z.push_back(expander.forward(chunk.to(device)).to(torch::kCPU, torch::kFloat));
  }
  if (was_training) expander.train();
  return torch::cat(z);
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

/// The classifier head of both probes: weights ~ N(0, 0.01^2), zero bias (the reference's).
torch::nn::Linear linear_head(int64_t in_features, int64_t classes) {
  torch::nn::Linear head(in_features, classes);
  torch::NoGradGuard no_grad;
  head->weight.normal_(0, 0.01);
  head->bias.zero_();
  return head;
}

/// Cosine decay from 1 at step 0 towards 0 at step `total`.
double cosine_factor(int64_t step, int64_t total) {
  return 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total)));
}

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
  const int64_t classes = std::max(ytr.max().item<int64_t>(), yte.max().item<int64_t>()) + 1;
  torch::manual_seed(options.seed);
  torch::nn::Linear head = linear_head(xtr.size(1), classes);
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
      const double lr = options.lr * cosine_factor(step, total);
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
  TORCH_CHECK(query_x.dim() == 2 && query_x.size(1) == bank_x.size(1), "knn: queries must be [M, ",
              bank_x.size(1), "], got ", query_x.sizes());
  TORCH_CHECK(k >= 1 && temperature > 0, "knn: k must be >= 1 and the temperature > 0");
  k = std::min<int64_t>(k, bank_x.size(0));
  const int64_t classes = num_classes > 0 ? num_classes : bank_y.max().item<int64_t>() + 1;
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
    const torch::Tensor votes =
        torch::zeros({q.size(0), classes}, torch::kFloat)
            .scatter_add_(1, labels.index({idx}), (sim / temperature).exp());
    out.push_back(votes);
  }
  return torch::cat(out);
}

CollapseStats collapse_stats(const torch::Tensor& z) {
  TORCH_CHECK(z.dim() == 2 && z.size(0) >= 2 && z.size(1) >= 1,
              "collapse_stats: expected [N, D] with N >= 2, got ", z.sizes());
  const torch::Tensor x = z.to(torch::kCPU, torch::kDouble);
  const int64_t n = x.size(0), d = x.size(1);
  const torch::Tensor centred = x - x.mean(0, /*keepdim=*/true);
  const torch::Tensor var = centred.pow(2).sum(0) / static_cast<double>(n - 1);
  const torch::Tensor std = var.sqrt();
  // sum_{i != j} C_ij^2 = ||C||_F^2 - sum_i C_ii^2, with ||C||_F = ||X X^T||_F / (n - 1) through
  // the smaller of the two Gram matrices.
  const torch::Tensor gram = n < d ? centred.mm(centred.t()) : centred.t().mm(centred);
  const double frob2 = gram.pow(2).sum().item<double>() / std::pow(static_cast<double>(n - 1), 2);
  CollapseStats s;
  s.dim = d;
  s.std_mean = std.mean().item<double>();
  s.std_min = std.min().item<double>();
  s.covariance = std::max(0.0, frob2 - var.pow(2).sum().item<double>()) / static_cast<double>(d);
  s.rankme = rankme(x);
  return s;
}

ViewConfig classifier_augmentation(const std::string& recipe, int channels, int64_t size) {
  ViewConfig v = make_recipe(recipe, channels, static_cast<int>(size)).view_a;
  v.flip_p = 0.5;
  v.jitter_p = 0;
  v.grayscale_p = 0;
  v.blur_p = 0;
  v.solarize_p = 0;
  return v;
}

namespace {

/// Samples idx[0..b) of `data`, each augmented with its own seed for (seed, epoch, index).
torch::Tensor augmented_batch(const Dataset& data, const torch::Tensor& idx,
                              const ViewConfig& augment, uint64_t seed, int64_t epoch) {
  if (data.is_vector()) return data.vectors.index_select(0, idx);
  const int64_t b = idx.numel(), c = data.channels, s = augment.crop.size;
  torch::Tensor x = torch::empty({b, c, s, s}, torch::kFloat);
  float* dst = x.data_ptr<float>();
  const int64_t* p = idx.data_ptr<int64_t>();
  at::parallel_for(0, b, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      Rng rng(sample_seed(seed, epoch, p[i]));
      augment.apply(data.image(p[i]), rng, dst + i * c * s * s);
    }
  });
  return x;
}

}  // namespace

Accuracy train_classifier(EncoderImpl& encoder, const Dataset& train, const Dataset& test,
                          const ViewConfig& augment, const EvalTransform& eval,
                          const ClassifierOptions& options, const torch::Device& device) {
  TORCH_CHECK(options.epochs >= 1 && options.batch_size >= 1 && options.lr_head > 0 &&
                  options.lr_backbone >= 0 && options.weight_decay >= 0,
              "train_classifier: epochs, batch size and head lr must be positive, the backbone "
              "lr and weight decay >= 0");
  const torch::Tensor ytr = train.require_labels().to(torch::kLong);
  const torch::Tensor yte = test.require_labels().to(torch::kLong);
  TORCH_CHECK(ytr.numel() > 0 && ytr.min().item<int64_t>() >= 0,
              "train_classifier: labels must be >= 0");
  const int64_t classes = std::max(ytr.max().item<int64_t>(), yte.max().item<int64_t>()) + 1;
  const bool frozen = options.lr_backbone == 0 || encoder.parameters().empty();

  torch::manual_seed(options.seed);
  torch::nn::Linear head = linear_head(encoder.output_dim(), classes);
  head->to(device);
  const auto sgd = [&](double lr) {
    return std::make_unique<torch::optim::SGDOptions>(
        torch::optim::SGDOptions(lr).momentum(options.momentum).weight_decay(options.weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(head->parameters(), sgd(options.lr_head));
  std::vector<double> peak = {options.lr_head};
  if (!frozen) {
    groups.emplace_back(encoder.parameters(), sgd(options.lr_backbone));
    peak.push_back(options.lr_backbone);
  }
  torch::optim::SGD opt(groups, *sgd(options.lr_head));

  const int64_t n = train.size();
  const int64_t batch = std::min(options.batch_size, n);
  const int64_t steps_per_epoch = (n + batch - 1) / batch;
  const int64_t total = options.epochs * steps_per_epoch;
  torch::Generator gen = at::detail::createCPUGenerator(options.seed);
  if (frozen) {
    encoder.eval();
  } else {
    encoder.train();
  }
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const torch::Tensor order = torch::randperm(n, gen);
    for (int64_t start = 0; start < n; start += batch, ++step) {
      const int64_t b = std::min(batch, n - start);
      if (b < 2 && !frozen) continue;  // BatchNorm in train mode needs two samples
      const double factor = cosine_factor(step, total);
      for (size_t g = 0; g < opt.param_groups().size(); ++g) {
        static_cast<torch::optim::SGDOptions&>(opt.param_groups()[g].options())
            .lr(peak[g] * factor);
      }
      const torch::Tensor idx = order.narrow(0, start, b);
      const torch::Tensor x = augmented_batch(train, idx, augment, options.seed, epoch).to(device);
      torch::Tensor features;
      {
        const AutocastGuard autocast(device, options.precision);
        if (frozen) {
          torch::NoGradGuard no_grad;
          features = encoder.forward(x);
        } else {
          features = encoder.forward(x);
        }
      }
      features = features.to(torch::kFloat);  // the head in fp32
      opt.zero_grad();
      const torch::Tensor loss =
          F::cross_entropy(head(features), ytr.index_select(0, idx).to(device));
      if (!std::isfinite(loss.item<double>())) {
        throw Error("train_classifier: the loss became " + std::to_string(loss.item<double>()) +
                    " at step " + std::to_string(step) + " (lower the learning rates)");
      }
      loss.backward();
      opt.step();
    }
  }
  encoder.eval();
  const torch::Tensor features =
      compute_representations(encoder, test, eval, 512, device, options.precision);
  torch::NoGradGuard no_grad;
  return accuracy(head(features.to(device)).cpu(), yte);
}

OnlineProbeImpl::OnlineProbeImpl(int64_t dim, int64_t classes, OnlineProbeOptions options)
    : dim_(dim), classes_(classes) {
  TORCH_CHECK(dim >= 1 && classes >= 2,
              "online probe: needs a representation of at least one "
              "dimension and at least 2 classes, got ",
              dim, " and ", classes);
  norm_ = register_module("norm",
                          torch::nn::BatchNorm1d(torch::nn::BatchNorm1dOptions(dim).affine(false)));
  head_ = register_module("head", linear_head(dim, classes));
  optimizer_ = std::make_unique<torch::optim::SGD>(head_->parameters(),
                                                   torch::optim::SGDOptions(options.lr)
                                                       .momentum(options.momentum)
                                                       .weight_decay(options.weight_decay));
}

torch::Tensor OnlineProbeImpl::forward(const torch::Tensor& y) { return head_(norm_(y)); }

OnlineProbeStep OnlineProbeImpl::train_step(
    const torch::Tensor& y, const torch::Tensor& labels,
    const std::function<void(const std::vector<torch::Tensor>&)>& reduce_gradients) {
  TORCH_CHECK(y.dim() == 2 && y.size(1) == dim_ && labels.dim() == 1 &&
                  labels.size(0) == y.size(0) && y.size(0) >= 2,
              "online probe: expected representations [N >= 2, ", dim_, "] and labels [N], got ",
              y.sizes(), " and ", labels.sizes());
  train();
  const torch::Tensor x = y.detach().to(torch::kFloat);
  const torch::Tensor target = labels.to(x.device(), torch::kLong);
  optimizer_->zero_grad();
  const torch::Tensor logits = forward(x);
  const torch::Tensor loss = F::cross_entropy(logits, target);
  loss.backward();
  if (reduce_gradients) reduce_gradients(head_->parameters());
  optimizer_->step();
  // One transfer from the device for both numbers.
  const torch::Tensor numbers =
      torch::stack({loss.detach().to(torch::kDouble),
                    logits.detach().argmax(1).eq(target).sum().to(torch::kDouble)})
          .cpu();
  OnlineProbeStep s;
  s.loss = numbers[0].item<double>();
  s.correct = static_cast<int64_t>(numbers[1].item<double>());
  s.count = x.size(0);
  return s;
}

Accuracy OnlineProbeImpl::evaluate(const torch::Tensor& y, const torch::Tensor& labels) {
  const bool was_training = is_training();
  eval();
  torch::NoGradGuard no_grad;
  const Accuracy a = accuracy(forward(y.to(torch::kFloat)), labels.to(torch::kLong));
  train(was_training);
  return a;
}

PrincipalComponents principal_components(const torch::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 2 && k >= 1 && k <= x.size(1),
              "principal_components: expected x [N >= 2, D >= k] and k >= 1, got ", x.sizes(),
              " and k = ", k);
  torch::NoGradGuard no_grad;
  const torch::Tensor x64 = x.to(torch::kCPU, torch::kDouble);
  const torch::Tensor xc = x64 - x64.mean(0);
  const int64_t d = xc.size(1);
  // Subspace iteration with oversampling: Q spans the top of the spectrum of Xc^T Xc after a few
  // rounds; then the Rayleigh-Ritz step gives the components inside it.
  const int64_t width = std::min<int64_t>(d, k + 8);
  torch::Generator gen = at::detail::createCPUGenerator(0);
  torch::Tensor q = std::get<0>(torch::linalg_qr(torch::randn({d, width}, gen, torch::kDouble)));
  for (int it = 0; it < 12; ++it) {
    q = std::get<0>(torch::linalg_qr(xc.t().mm(xc.mm(q))));
  }
  const torch::Tensor b = xc.mm(q);                                // [N, width]
  const auto [values, vectors] = torch::linalg_eigh(b.t().mm(b));  // ascending
  const torch::Tensor top = vectors.flip(1).narrow(1, 0, k);
  torch::Tensor components = q.mm(top);  // [D, k], orthonormal columns
  torch::Tensor projection = xc.mm(components);
  // A sign per component, so that the picture does not flip between runs.
  const torch::Tensor at = projection.abs().argmax(0);
  const torch::Tensor sign = projection.gather(0, at.unsqueeze(0)).sign().clamp_min(0) * 2 - 1;
  projection = projection * sign;
  PrincipalComponents out;
  out.projection = projection.to(torch::kFloat).contiguous();
  const double total = xc.pow(2).sum().item<double>();
  const torch::Tensor top_values = values.flip(0).narrow(0, 0, k);
  for (int64_t i = 0; i < k; ++i) {
    out.explained.push_back(total > 0 ? top_values[i].item<double>() / total : 0.0);
  }
  return out;
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
