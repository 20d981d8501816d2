// Objectives: what a training step minimises, from the model's outputs for all the step's views,
// with its named terms. The trainer knows only this interface; VICReg is one objective (its
// fused loss, loss.h), and an objective with other terms (VICRegL's local ones) needs no change
// to the trainer, metrics.jsonl, TensorBoard, the progress line or the report.
#pragma once

#include "vicreg/loss.h"
#include "vicreg/models.h"
#include "vicreg/terms.h"

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace vicreg {

class ProcessGroup;  // distributed.h

/// One step's loss.
struct ObjectiveLoss {
  torch::Tensor total;               ///< 0-dim, differentiable: what backward runs on
  std::vector<torch::Tensor> terms;  ///< 0-dim each, unweighted, in the order of terms()
  /// [d] standard deviation of each dimension of the first view's embedding over the (global)
  /// batch, detached: the std_z diagnostics of every metrics line.
  torch::Tensor embedding_std;
};

class Objective {
 public:
  virtual ~Objective() = default;
  /// The terms loss() returns, in order.
  virtual const ObjectiveTerms& terms() const = 0;
  /// Whether loss() reads the views' features (ViewOutput::features; dense objectives): the
  /// model then keeps them.
  virtual bool uses_features() const { return false; }
  /// The loss of one step from the outputs of all its views (computed in fp32 at least, outside
  /// autocast). With a process group of more than one rank, each rank passes its own rows and
  /// gets the loss of the global batch. Throws c10::Error for inputs the loss cannot take (NaN
  /// embeddings among them, where the objective checks for them).
  virtual ObjectiveLoss loss(const ModelOutputs& outputs, ProcessGroup* group) const = 0;
};

/// VICReg on the embeddings of the first two views: vicreg_loss, or vicreg_loss_sharded over a
/// process group. Terms: invariance, variance, covariance (VICRegLossTerms).
class VICRegObjective : public Objective {
 public:
  explicit VICRegObjective(VICRegLossOptions options);
  const ObjectiveTerms& terms() const override;
  ObjectiveLoss loss(const ModelOutputs& outputs, ProcessGroup* group) const override;
  const VICRegLossOptions& options() const { return options_; }

 private:
  VICRegLossOptions options_;
};

/// VICRegObjective's terms.
const ObjectiveTerms& vicreg_terms();

}  // namespace vicreg
