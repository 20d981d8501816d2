// Objectives (objective.h): VICReg's.
#include "vicreg/objective.h"

#include "vicreg/distributed.h"

#include <c10/util/Exception.h>

namespace vicreg {

const ObjectiveTerms& vicreg_terms() {
  static const ObjectiveTerms terms = {
      {"invariance", "inv"}, {"variance", "var"}, {"covariance", "cov"}};
  return terms;
}

VICRegObjective::VICRegObjective(VICRegLossOptions options) : options_(options) {}

const ObjectiveTerms& VICRegObjective::terms() const { return vicreg_terms(); }

ObjectiveLoss VICRegObjective::loss(const ModelOutputs& outputs, ProcessGroup* group) const {
  TORCH_CHECK(outputs.views.size() >= 2, "the VICReg objective needs two views, got ",
              outputs.views.size());
  const torch::Tensor& z_a = outputs.views[0].z;
  const torch::Tensor& z_b = outputs.views[1].z;
  const VICRegLossTerms t = group != nullptr ? vicreg_loss_sharded(z_a, z_b, *group, options_)
                                             : vicreg_loss(z_a, z_b, options_);
  ObjectiveLoss out;
  out.total = t.total;
  out.terms = {t.invariance, t.variance, t.covariance};
  out.embedding_std = t.std_a;
  return out;
}

}  // namespace vicreg
