// State dicts: a module's parameters and buffers under PyTorch's names, reading any weights file
// (safetensors or torch.save, told apart by its first bytes), and loading a state dict with
// torchvision's names into an encoder.
#pragma once

#include "vicreg/io/named_tensors.h"

#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vicreg {

/// A safetensors or a torch.save file, chosen by the file's first bytes (not its name).
WeightsFile read_weights(const std::string& path);
/// A module's parameters and buffers under PyTorch's state_dict names, in state_dict order
/// (each module's parameters, then its buffers, depth first). The tensors are the module's own.
NamedTensors module_state(const torch::nn::Module& module);

/// Of the prefixes under which an encoder's keys occur in a file ("", "backbone.", "module.", ...),
/// the one that holds the encoder: the only one; else "" or the only one ending in "backbone."
/// (a VICReg model's first branch). Throws FormatError naming `source` otherwise.
std::string choose_encoder_prefix(const std::vector<std::string>& candidates,
                                  const std::string& source);

/// What load_encoder_weights() did.
struct WeightsLoadReport {
  std::string prefix;             ///< where the encoder's keys were found ("", "backbone.", ...)
  int64_t loaded = 0;             ///< tensors copied
  std::vector<std::string> head;  ///< torchvision classifier keys skipped (fc.*, heads.head.*, ...)
  int64_t other = 0;              ///< entries outside the prefix (projector, optimizer, ...)
  std::vector<std::string>
      kept;  ///< num_batches_tracked buffers the file lacks (left as they were)
};

/// Copies `weights` into `module` (an encoder) by name. The encoder's keys are looked for in the
/// file as they are, or under one prefix: "backbone." of a VICReg model, "module." of
/// DistributedDataParallel, "model."/"state_dict." of a training checkpoint, or any combination
/// (the official full checkpoint: "model.module.backbone."). Under that prefix every key of the
/// module must be present (num_batches_tracked may be absent) with the same shape and a dtype of
/// the same kind (floating point into floating point, converted; integer into integer); the only
/// extra keys allowed are torchvision's classifiers (fc.*, heads.head.*, classifier.2.*). Throws
/// FormatError naming `source`, the keys and the shapes otherwise; the module is left
/// unchanged when anything does not fit.
WeightsLoadReport load_encoder_weights(torch::nn::Module& module, const NamedTensors& weights,
                                       const std::string& source);

}  // namespace vicreg
