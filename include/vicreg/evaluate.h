// Evaluation of a pretrained backbone: representations of a data set, the linear probe on cached
// features, the cosine kNN classifier, and collapse diagnostics (RankMe). DESIGN.md 1.4.
#pragma once

#include "vicreg/data.h"
#include "vicreg/models.h"

#include <torch/types.h>

#include <cstdint>
#include <string>

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
/// batches of `batch_size` on `device`. Returns [N, output_dim] float32 on the CPU.
torch::Tensor compute_representations(EncoderImpl& encoder, const Dataset& data,
                                      const EvalTransform& transform, int64_t batch_size = 512,
                                      const torch::Device& device = torch::kCPU);

/// Top-1 and top-5 accuracy (fractions in [0, 1]) of scores [N, C] against labels [N].
struct Accuracy {
  double top1 = 0, top5 = 0;
};
Accuracy accuracy(const torch::Tensor& scores, const torch::Tensor& labels);

struct LinearProbeOptions {
  int64_t epochs = 100;
  int64_t batch_size = 256;
  double lr = 0.02;          ///< the reference's linear-eval lr at batch 256
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

/// RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of
/// x: [N, D]; between 1 and min(N, D).
double rankme(const torch::Tensor& x);

}  // namespace vicreg
