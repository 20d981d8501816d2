// Backbones: a run's backbone.pt, exported safetensors with vicreg metadata, and foreign state
// dicts whose architecture is read off the weights (read_backbone).
#include "fuzz.h"
#include "vicreg/run/artifacts.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run(
      [&] { vicreg::read_backbone(vicreg::fuzz::input_file(data, size, ".backbone")); });
}
