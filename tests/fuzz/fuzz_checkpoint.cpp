// checkpoint.pt: the checksum, the stored settings and input shape, and the backbone rebuilt from
// them (read_checkpoint_config, read_checkpoint_backbone). LibTorch's own archive reader is not
// instrumented: the fuzzer explores what vicreg does with what it returns.
#include "fuzz.h"
#include "vicreg/run/artifacts.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run([&] {
    const std::string& path = vicreg::fuzz::input_file(data, size, ".pt");
    vicreg::read_checkpoint_config(path).validate();
    vicreg::read_checkpoint_backbone(path);
  });
}
