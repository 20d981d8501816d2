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
#include <utility>
#include <vector>

namespace vicreg {

/// Base of the family. A message that names settings or options names them by key, as the
/// library's structs and config.json do ("batch_size must be at least 2"), and `settings` lists
/// those keys, so that a front end can say them its own way (the CLI: --batch-size,
/// run/config.h's with_flag_names).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::vector<std::string> settings = {})
      : std::runtime_error(what), settings_(std::move(settings)) {}
  /// The keys of the settings the message names (empty: none).
  const std::vector<std::string>& settings() const { return settings_; }

 private:
  std::vector<std::string> settings_;
};

/// Bad input or usage: an impossible option, an unknown name, tensors or data of the wrong shape.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// A UsageError about the settings `keys`, which its message names.
class SettingError : public UsageError {
 public:
  SettingError(std::vector<std::string> keys, const std::string& what)
      : UsageError(what, std::move(keys)) {}
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
