// safetensors files (https://github.com/huggingface/safetensors), written and read: an 8-byte
// little-endian header length, a JSON header {"name": {"dtype", "shape", "data_offsets"},
// "__metadata__": {...}}, then the raw little-endian tensor bytes. Debian 12 has no safetensors
// library for C++ or Python; the writer and reader here are small and checked field by field.
#pragma once

#include "vicreg/io/named_tensors.h"

#include <map>
#include <string>

namespace vicreg {

/// Writes `tensors` (moved to the CPU, contiguous) as a safetensors file, atomically
/// (write_file_atomically). Metadata values are strings, as the format requires. Throws
/// UsageError for a dtype safetensors has no name for or a duplicated name, FormatError when the
/// file cannot be written.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// Reads a safetensors file. Throws FormatError naming the file and what is wrong: truncated, a
/// header that is not the format's JSON, an unknown dtype, a shape whose size does not match its
/// byte range (dtype mismatch), overlapping or missing bytes.
WeightsFile read_safetensors(const std::string& path);

}  // namespace vicreg
