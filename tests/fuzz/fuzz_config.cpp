// --config files (read_config_file, TrainConfig::validate). What reads must also write: the
// config of an accepted file, written with to_json and read again, is the same config.
#include "fuzz.h"
#include "vicreg/run/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run([&] {
    const vicreg::TrainConfig c =
        vicreg::read_config_file(vicreg::fuzz::input_file(data, size, ".json"));
    const nlohmann::json written = vicreg::to_json(c);
    vicreg::TrainConfig again;
    vicreg::update_from_json(again, written);
    if (vicreg::to_json(again) != written) std::abort();  // does not read back as written
    c.validate();
  });
}
