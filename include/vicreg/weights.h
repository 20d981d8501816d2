// Weights in and out of the PyTorch world: safetensors files (written and read), PyTorch's
// torch.save files (read), and loading a state dict with torchvision's names into an encoder.
//
// - safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header
//   length, a JSON header {"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}},
//   then the raw little-endian tensor bytes. Debian 12 has no safetensors library for C++ or
//   Python; the writer and reader here are small and checked field by field.
// - torch.save files (the zip format of PyTorch >= 1.6): LibTorch 1.13's torch::pickle_load
//   cannot read a state dict (it fails on OrderedDict's _metadata, pytorch/pytorch#100741), so
//   the pickle is read by a restricted unpickler here, like torch.load(weights_only=True): only
//   dicts, lists, tuples, numbers, strings and tensors; any other object is an error, and no code
//   from the file is ever run. The zip container is read by LibTorch's PyTorchStreamReader.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
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

/// Writes `tensors` (moved to the CPU, contiguous) as a safetensors file, atomically (temporary
/// file, fsync, rename). Metadata values are strings, as the format requires. Throws
/// std::invalid_argument for a dtype safetensors has no name for or a duplicated name.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// Reads a safetensors file. Throws std::runtime_error naming the file and what is wrong:
/// truncated, a header that is not the format's JSON, an unknown dtype, a shape whose size does
/// not match its byte range (dtype mismatch), overlapping or missing bytes.
WeightsFile read_safetensors(const std::string& path);

/// Reads a torch.save file holding a dict of tensors (a state dict, possibly nested in other
/// dicts such as {"model": ..., "epoch": ...}; entries that are not tensors or string-keyed dicts
/// are skipped). Throws std::runtime_error naming the file for the legacy (pre-1.6) format, a
/// whole pickled nn.Module, corrupt zip or pickle data.
WeightsFile read_torch_file(const std::string& path);

/// Either of the above, chosen by the file's first bytes (not its name).
WeightsFile read_weights(const std::string& path);

/// A module's parameters and buffers under PyTorch's state_dict names, in state_dict order
/// (each module's parameters, then its buffers, depth first). The tensors are the module's own.
NamedTensors module_state(const torch::nn::Module& module);

/// Of the prefixes under which an encoder's keys occur in a file ("", "backbone.", "module.", ...),
/// the one that holds the encoder: the only one; else "" or the only one ending in "backbone."
/// (a VICReg model's first branch). Throws std::runtime_error naming `source` otherwise.
std::string choose_encoder_prefix(const std::vector<std::string>& candidates,
                                  const std::string& source);

/// What load_encoder_weights() did.
struct WeightsLoadReport {
  std::string prefix;              ///< where the encoder's keys were found ("", "backbone.", ...)
  int64_t loaded = 0;              ///< tensors copied
  std::vector<std::string> head;   ///< torchvision classifier keys skipped (fc.*)
  int64_t other = 0;               ///< entries outside the prefix (projector, optimizer, ...)
  std::vector<std::string> kept;   ///< num_batches_tracked buffers the file lacks (left as they were)
};

/// Copies `weights` into `module` (an encoder) by name. The encoder's keys are looked for in the
/// file as they are, or under one prefix: "backbone." of a VICReg model, "module." of
/// DistributedDataParallel, "model."/"state_dict." of a training checkpoint, or any combination
/// (the official full checkpoint: "model.module.backbone."). Under that prefix every key of the
/// module must be present (num_batches_tracked may be absent) with the same shape and a dtype of
/// the same kind (floating point into floating point, converted; integer into integer); the only
/// extra keys allowed are torchvision's classifier fc.weight / fc.bias. Throws
/// std::runtime_error naming `source`, the keys and the shapes otherwise; the module is left
/// unchanged when anything does not fit.
WeightsLoadReport load_encoder_weights(torch::nn::Module& module, const NamedTensors& weights,
                                       const std::string& source);

}  // namespace vicreg
