// torch.save files, zip and bare (legacy) pickle: the restricted unpickler and tensor views
// (read_torch_file).
#include "fuzz.h"
#include "vicreg/io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run(
      [&] { vicreg::read_torch_file(vicreg::fuzz::input_file(data, size, ".pth")); });
}
