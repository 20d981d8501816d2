// Evaluation of a pretrained backbone: representations of a data set, the linear probe on cached
// features, the cosine kNN classifier, fine-tuning, and collapse diagnostics (RankMe). The
// protocols and their defaults: docs/evaluation.md.
#pragma once

#include "vicreg/augment.h"
#include "vicreg/data.h"
#include "vicreg/models.h"
#include "vicreg/names.h"
#include "vicreg/precision.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vicreg {

/// How images are turned into the encoder's input for evaluation: no augmentation; images whose
/// side differs from `size` are resized (shorter side to size * 256 / 224) and centre-cropped.
struct EvalTransform {
  int64_t size = 28;
  std::vector<float> mean = {0.2860f};
  std::vector<float> std = {0.3530f};
};

/// The evaluation transform of a training run's recipe on data with `channels` channels.
EvalTransform eval_transform_for(const std::string& recipe, int channels, int64_t size);

/// The encoder's output for every sample, in order, computed in eval mode without gradients in
/// batches of `batch_size` on `device`, under autocast in `precision` (bf16/fp16; never Auto),
/// images in channels_last memory format when the encoder's convolutions are (precision.h).
/// Returns [N, output_dim] float32 on the CPU.
torch::Tensor compute_representations(EncoderImpl& encoder, const Dataset& data,
                                      const EvalTransform& transform, int64_t batch_size = 512,
                                      const torch::Device& device = torch::kCPU,
                                      Precision precision = Precision::Fp32);

/// The expander's output for representations y [N, D], in eval mode without gradients, in
/// chunks on `device` under autocast in `precision`. Returns [N, embedding_dim] float32 on the CPU.
torch::Tensor compute_embeddings(ExpanderImpl& expander, const torch::Tensor& y,
                                 const torch::Device& device = torch::kCPU,
                                 Precision precision = Precision::Fp32);

/// Top-1 and top-5 accuracy (fractions in [0, 1]) of scores [N, C] against labels [N].
struct Accuracy {
  double top1 = 0, top5 = 0;
};
Accuracy accuracy(const torch::Tensor& scores, const torch::Tensor& labels);

struct LinearProbeOptions {
  int64_t epochs = 100;
  int64_t batch_size = 256;
  double lr = 0.02;  ///< the reference's linear-eval lr at batch 256
  double weight_decay = 1e-6;
  double momentum = 0.9;
  /// Standardise features with the training set's mean and std first (a BatchNorm without affine
  /// parameters in eval mode, folded in): the probe's result no longer depends on the scale of
  /// the representation.
  bool standardize = true;
  uint64_t seed = 0;
};

/// Trains a linear classifier (SGD with momentum, cosine schedule, cross-entropy) on cached
/// features and returns its accuracy on the test features.
/// train_x: [N, D] float, train_y: [N] int64 in [0, C); test_x: [M, D], test_y: [M].
Accuracy linear_probe(const torch::Tensor& train_x, const torch::Tensor& train_y,
                      const torch::Tensor& test_x, const torch::Tensor& test_y,
                      const LinearProbeOptions& options = {});

/// solo-learn's weighted kNN: cosine similarity, the k most similar training samples vote for
/// their class with weight exp(sim / temperature).
/// bank_x: [N, D], bank_y: [N] int64; query_x: [M, D]; returns class scores [M, C].
torch::Tensor knn_scores(const torch::Tensor& bank_x, const torch::Tensor& bank_y,
                         const torch::Tensor& query_x, int64_t k = 20, double temperature = 0.07,
                         int64_t num_classes = 0);

/// Collapse diagnostics of a batch of embeddings or representations z: [N, D], N >= 2.
struct CollapseStats {
  double std_mean = 0, std_min = 0;  ///< over dimensions, of the per-dimension (unbiased) std
  double covariance = 0;             ///< the loss's c(Z) = (1/D) sum_{i != j} C(Z)_ij^2
  double rankme = 0;                 ///< rankme(z)
  int64_t dim = 0;
};
CollapseStats collapse_stats(const torch::Tensor& z);

/// The raw-pixel baseline as an encoder: the normalised input, flattened ([N, C, S, S] ->
/// [N, C * S * S]; vectors pass through).
class PixelEncoderImpl : public EncoderImpl {
 public:
  explicit PixelEncoderImpl(int64_t output_dim) : output_dim_(output_dim) {}
  torch::Tensor forward_features(torch::Tensor x) override { return x.flatten(1); }
  torch::Tensor pool(const torch::Tensor& features) override { return features; }
  int64_t output_dim() const override { return output_dim_; }
  FeatureLayout feature_layout() const override { return FeatureLayout::Vector; }

 private:
  int64_t output_dim_;
};

/// The augmentation of supervised training on top of a recipe (the reference's evaluate.py):
/// the recipe's random resized crop and horizontal flip, then its normalisation; no colour ops.
ViewConfig classifier_augmentation(const std::string& recipe, int channels, int64_t size);

struct ClassifierOptions {
  int64_t epochs = 20;
  int64_t batch_size = 256;
  /// 0 freezes the backbone (eval mode, no gradients): a linear probe. An encoder without
  /// parameters (PixelEncoder) is always frozen.
  double lr_backbone = 0.01;
  double lr_head = 0.1;
  double weight_decay = 0.0;
  double momentum = 0.9;
  uint64_t seed = 0;
  /// The backbone's forward passes under autocast in this precision; the head trains in fp32.
  Precision precision = Precision::Fp32;
};

/// Supervised training of `encoder` and a linear head on `train` (images augmented by `augment`
/// afresh every epoch; vectors as they are), SGD with momentum and a cosine schedule per step, one
/// learning rate for the backbone and one for the head (the reference's evaluate.py --weights
/// finetune / freeze). Returns the accuracy on `test` through `eval`. The encoder is trained in
/// place (BatchNorm in train mode) unless lr_backbone == 0, and is left in eval mode.
Accuracy train_classifier(EncoderImpl& encoder, const Dataset& train, const Dataset& test,
                          const ViewConfig& augment, const EvalTransform& eval,
                          const ClassifierOptions& options = {},
                          const torch::Device& device = torch::kCPU);

/// The evaluation protocols: linear (frozen backbone, linear head), knn, finetune (backbone and
/// head on a fraction of the labels).
enum class Protocol { Linear, Knn, Finetune };
template <>
const NameTable<Protocol>& name_table<Protocol>();

/// solo-learn's kNN settings.
struct KnnOptions {
  int64_t k = 20;
  double temperature = 0.07;
};

/// Every protocol's defaults, stated once: the linear probe and fine-tuning as the reference's
/// evaluate.py (--weights freeze / finetune), kNN as solo-learn's.
struct ProtocolDefaults {
  /// 100 epochs, batch 256, lr 0.02, wd 1e-6, on cached features.
  static LinearProbeOptions linear() { return {}; }
  /// The same head trained on augmented images through the frozen backbone.
  static ClassifierOptions linear_augmented() {
    ClassifierOptions o;
    o.epochs = 100;
    o.lr_head = 0.02;
    o.lr_backbone = 0.0;
    o.weight_decay = 1e-6;
    return o;
  }
  /// 20 epochs, head lr 0.1, backbone lr 0.01, wd 0.
  static ClassifierOptions finetune() { return {}; }
  static KnnOptions knn() { return {}; }
};

/// The online linear probe's settings (solo-learn's and lightly's online classifier: SGD at a
/// fixed lr on the detached representations of the training views while pretraining goes on).
struct OnlineProbeOptions {
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 0.0;
};

/// A training step of the online probe: the batch's mean cross-entropy and top-1 hits.
struct OnlineProbeStep {
  double loss = 0;
  int64_t correct = 0, count = 0;
};

/// A linear classifier trained during pretraining on the representations of the labelled
/// training batches, with an optimizer of its own: it watches how linearly separable the
/// representation is without a separate evaluation. Its input is standardised by a BatchNorm
/// without affine parameters (running statistics in eval mode), so that one lr fits every
/// backbone's scale, as LinearProbeOptions::standardize does for the offline probe. The
/// representations are detached: no gradient of the probe ever reaches the backbone. It runs in
/// fp32 whatever the backbone's precision.
class OnlineProbeImpl : public torch::nn::Module {
 public:
  OnlineProbeImpl(int64_t dim, int64_t classes, OnlineProbeOptions options = {});
  /// Class scores [N, classes] of representations y [N, dim] (BatchNorm in the module's mode).
  torch::Tensor forward(const torch::Tensor& y);
  /// One optimizer step (train mode) on `y` (detached and made fp32 here) and `labels` [N];
  /// `reduce_gradients`, when given, averages the probe's gradients over processes before the
  /// step (distributed training keeps every rank's probe the same).
  OnlineProbeStep train_step(
      const torch::Tensor& y, const torch::Tensor& labels,
      const std::function<void(const std::vector<torch::Tensor>&)>& reduce_gradients = {});
  /// Accuracy on held-out representations, in eval mode without gradients (the module is left in
  /// the mode it was in).
  Accuracy evaluate(const torch::Tensor& y, const torch::Tensor& labels);
  /// Its optimizer, whose state checkpoints keep with the module's.
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  int64_t dim() const { return dim_; }
  int64_t classes() const { return classes_; }

 private:
  int64_t dim_, classes_;
  torch::nn::BatchNorm1d norm_{nullptr};
  torch::nn::Linear head_{nullptr};
  std::unique_ptr<torch::optim::SGD> optimizer_;
};
TORCH_MODULE(OnlineProbe);

/// The principal components of x: [N, D] (N >= 2), computed with LibTorch by subspace iteration
/// on the centred data (a fixed start, so the same x gives the same result; never a D x D
/// matrix). `projection` is [N, k] float32 (x's coordinates on the first k components, each
/// component's sign chosen so that its largest coordinate is positive), `explained` the share of
/// the total variance each component holds (k values, decreasing).
struct PrincipalComponents {
  torch::Tensor projection;
  std::vector<double> explained;
};
PrincipalComponents principal_components(const torch::Tensor& x, int64_t k = 2);

/// RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of
/// x: [N, D]; between 1 and min(N, D).
double rankme(const torch::Tensor& x);

}  // namespace vicreg
