// Backbones from elsewhere: exported safetensors with vicreg metadata, and foreign safetensors
// and torch.save state dicts whose architecture is read off the weights (read_backbone). A run's
// backbone.pt, a LibTorch archive, is fuzz_checkpoint's (structure-aware): raw bytes that LibTorch
// would read as one are left out here.
#include "fuzz.h"
#include "vicreg/io/files.h"
#include "vicreg/run/artifacts.h"

#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // A zip with TorchScript's constants.pkl is what read_backbone hands to LibTorch's reader.
  if (vicreg::sniff_format(bytes.substr(0, 9)) == vicreg::FileFormat::Zip &&
      bytes.find("constants.pkl") != std::string_view::npos) {
    return 0;
  }
  return vicreg::fuzz::run(
      [&] { vicreg::read_backbone(vicreg::fuzz::input_file(data, size, ".backbone")); });
}
