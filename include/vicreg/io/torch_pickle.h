// PyTorch's torch.save files (the zip format of PyTorch >= 1.6), read without Python.
//
// LibTorch 1.13's torch::pickle_load cannot read a state dict (it fails on OrderedDict's
// _metadata, pytorch/pytorch#100741), so the pickle is read by a restricted unpickler here, like
// torch.load(weights_only=True): only dicts, lists, tuples, numbers, strings and tensors; any
// other object is an error, and no code from the file is ever run. Every tensor view is
// bounds-checked against its storage without overflow. The zip container is read by LibTorch's
// PyTorchStreamReader.
#pragma once

#include "vicreg/io/named_tensors.h"

#include <string>

namespace vicreg {

/// Reads a torch.save file holding a dict of tensors (a state dict, possibly nested in other
/// dicts such as {"model": ..., "epoch": ...}; entries that are not tensors or string-keyed dicts
/// are skipped). Throws FormatError naming the file for the legacy (pre-1.6) format, a whole
/// pickled nn.Module, corrupt zip or pickle data.
WeightsFile read_torch_file(const std::string& path);

}  // namespace vicreg
