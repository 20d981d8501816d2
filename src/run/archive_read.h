// Reading the archives a run writes (checkpoint.pt, backbone.pt): shared by run/artifacts.cpp and
// run/backbone_file.cpp. Internal to the library.
#pragma once

#include "vicreg/run/config.h"

#include <torch/serialize/input-archive.h>

#include <cstdint>
#include <string>

namespace vicreg {

/// The config a vicreg file stores, with the values of their time for settings it predates.
TrainConfig stored_config(const std::string& json_text);
std::string read_string(torch::serialize::InputArchive& archive, const std::string& key);
int64_t read_int(torch::serialize::InputArchive& archive, const std::string& key);
double read_double(torch::serialize::InputArchive& archive, const std::string& key);
/// The config stored in a loaded checkpoint archive read from `path`; FormatError naming it.
TrainConfig checkpoint_config(torch::serialize::InputArchive& archive, const std::string& path);

}  // namespace vicreg
