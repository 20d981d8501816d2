// The named terms of an objective, as metrics.jsonl, TensorBoard, the progress line and the
// report show them.
#pragma once

#include <string>
#include <vector>

namespace vicreg {

/// One term of an objective's loss, unweighted: `key` names it in metrics.jsonl (and TensorBoard's
/// train/KEY, the report's charts), `abbrev` in the progress line ("inv").
struct ObjectiveTerm {
  std::string key, abbrev;
};

using ObjectiveTerms = std::vector<ObjectiveTerm>;

}  // namespace vicreg
