// .npy arrays: header, dtype, shape, data size (read_npy).
#include "fuzz.h"
#include "vicreg/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run([&] { vicreg::read_npy(vicreg::fuzz::input_file(data, size, ".npy")); });
}
