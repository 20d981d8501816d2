// Named tensors: what weights files hold and what a module's state is, in PyTorch's names.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace vicreg {

/// Tensors by name, in file (or module) order.
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

/// What a weights file holds: its tensors (nested dicts flattened with '.': {"model": {"a": t}}
/// gives "model.a") and, for safetensors, the header's __metadata__.
struct WeightsFile {
  NamedTensors tensors;
  std::map<std::string, std::string> metadata;
  std::string format;  ///< "safetensors" or "torch"
};

}  // namespace vicreg
