// The harness of vicreg's fuzz targets (libFuzzer; built by scripts/fuzz.sh, run in CI by
// scripts/sanitize.sh). vicreg's readers take paths, so each input is written to a file of this
// process's own and the reader is run on it. A reader may reject an input only with vicreg's
// error family (vicreg::Error: a message that names the file and the problem); anything else that
// escapes (c10::Error, std::bad_alloc, nlohmann's exceptions, ...) is a finding, and so is every
// sanitizer report, a leak, a timeout or a run past the RSS limit.
#pragma once

#include "vicreg/error.h"

#include <unistd.h>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace vicreg::fuzz {

/// A file of this process's own (in /dev/shm when there is one: no disk traffic) ending in
/// `suffix`, holding `size` bytes of `data`.
inline const std::string& input_file(const uint8_t* data, size_t size,
                                     const std::string& suffix = ".bin") {
  struct File {
    std::string path;
    ~File() { std::remove(path.c_str()); }
  };
  static const File file{std::string(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") +
                         "/vicreg-fuzz-" + std::to_string(getpid()) + suffix};
  const std::string& path = file.path;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return file.path;
}

/// Runs `read`; vicreg's errors are the expected way to reject an input.
template <typename Read>
int run(Read&& read) {
  try {
    read();
  } catch (const vicreg::Error&) {
  }
  return 0;
}

}  // namespace vicreg::fuzz
