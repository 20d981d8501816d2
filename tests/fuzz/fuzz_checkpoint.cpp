// checkpoint.pt and backbone.pt (LibTorch archives) as vicreg reads them: the stored settings and
// input shape, checked against the weights and rebuilt into a backbone (read_checkpoint_config,
// TrainConfig::validate, read_checkpoint_backbone, read_backbone). Structure-aware: the input is
// [kind: 1 byte, even = checkpoint, odd = backbone][in_channels, image_size, in_features: 3 x int32
// little-endian][the config's JSON text], written into an archive around a small model's weights
// by save_archive, so that LibTorch's own archive reader (TorchScript's, not vicreg's and not
// instrumented) only ever sees containers LibTorch wrote. Fed raw bytes, that reader crashes on
// crafted archives (docs/decisions.md): checkpoints and backbone.pt are files a run wrote.
#include "fuzz.h"
#include "vicreg/run/artifacts.h"

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 13) return 0;
  const bool backbone = (data[0] & 1) != 0;
  int32_t shape[3];
  std::memcpy(shape, data + 1, sizeof shape);
  const std::string config(reinterpret_cast<const char*>(data + 13), size - 13);
  static const vicreg::VICReg model = [] {
    vicreg::VICRegModelConfig c;
    c.encoder.arch = "convnet";
    c.encoder.in_channels = 1;
    c.encoder.image_size = 8;
    c.encoder.width = 4;
    c.encoder.stages = 2;
    c.mlp = "8-8";
    return vicreg::VICReg(c);
  }();
  torch::serialize::OutputArchive archive, weights;
  if (backbone) {
    model->backbone->save(weights);
    archive.write("backbone", weights);
  } else {
    model->save(weights);
    archive.write("model", weights);
  }
  archive.write("config", c10::IValue(config));
  archive.write("in_channels", c10::IValue(int64_t{shape[0]}));
  archive.write("image_size", c10::IValue(int64_t{shape[1]}));
  archive.write("in_features", c10::IValue(int64_t{shape[2]}));
  const std::string& path = vicreg::fuzz::input_file(nullptr, 0, ".pt");
  vicreg::save_archive(archive, path);
  return vicreg::fuzz::run([&] {
    if (backbone) {
      vicreg::read_backbone(path);
    } else {
      vicreg::read_checkpoint_config(path).validate();
      vicreg::read_checkpoint_backbone(path);
    }
  });
}
