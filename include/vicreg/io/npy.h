// .npy files (numpy's format): the matrices of --dataset npy, and what `vicreg embed` writes.
#pragma once

#include <torch/types.h>

#include <string>

namespace vicreg {

/// A .npy array (format 1.0-3.0, C or Fortran order) of float32, float64, int64, int32 or uint8,
/// little-endian, returned as a tensor of that dtype and shape. Throws FormatError naming the file
/// and the problem (not .npy, truncated, unsupported dtype, bytes after the data).
torch::Tensor read_npy(const std::string& path);

/// Writes a CPU tensor of those dtypes as .npy (format 1.0), readable by numpy.load, atomically
/// (write_file_atomically). Throws UsageError for another dtype.
void write_npy(const std::string& path, const torch::Tensor& array);

/// Throws FormatError(".npy file 'PATH': WHAT").
[[noreturn]] void npy_error(const std::string& path, const std::string& what);

}  // namespace vicreg
