// The errors vicreg raises on purpose. Every message says what was expected, what came, and how
// to fix it; what() is the text users see. One place (the CLI's main) turns them into exit codes:
// 1 for every error, 130 for an interrupt.
//
// LibTorch's own c10::Error (a failed TORCH_CHECK inside an op) is not wrapped: the CLI and the
// Python bindings translate it where they catch it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace vicreg {

/// Base of the family.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bad input or usage: an impossible option, an unknown name, tensors or data of the wrong shape.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// A file is missing, unreadable, truncated or corrupt, or could not be written.
class FormatError : public Error {
 public:
  using Error::Error;
};

/// A data set has no held-out split (no test files, val/ folder, --val-dir or --holdout).
class NoHeldOutSplitError : public FormatError {
 public:
  using FormatError::FormatError;
};

/// A collective failed: a rank was lost, hung or unreachable, or the rendezvous failed.
class DistributedError : public Error {
 public:
  using Error::Error;
};

/// The training loss stopped being finite at `step`; the last good checkpoint is kept.
class DivergedError : public Error {
 public:
  DivergedError(int64_t at_step, const std::string& what) : Error(what), step(at_step) {}
  int64_t step;
};

}  // namespace vicreg
