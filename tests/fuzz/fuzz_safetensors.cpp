// safetensors: header JSON, dtypes, shapes, offsets (read_safetensors).
#include "fuzz.h"
#include "vicreg/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run(
      [&] { vicreg::read_safetensors(vicreg::fuzz::input_file(data, size, ".safetensors")); });
}
