// IDX files (MNIST, Fashion-MNIST), raw and gzip-compressed (read_idx).
#include "fuzz.h"
#include "vicreg/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run([&] { vicreg::read_idx(vicreg::fuzz::input_file(data, size, ".idx")); });
}
