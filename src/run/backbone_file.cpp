// Backbone files: a run's backbone.pt, exported safetensors and foreign state dicts, and the
// models of checkpoints rebuilt for evaluation (run/artifacts.h).
#include "vicreg/run/artifacts.h"

#include "archive_read.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/models/registry.h"
#include "vicreg/optim.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/serialize.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string_view>

#include <zlib.h>

namespace vicreg {

namespace fs = std::filesystem;

namespace {

/// True for LibTorch's torch::save archives (a TorchScript module: constants.pkl, code/), false
/// for anything else (Python's torch.save zip, safetensors, ...).
bool is_libtorch_archive(const std::string& path) {
  if (sniff_format(read_file_head(path, "backbone", 9)) != FileFormat::Zip) return false;
  try {
    caffe2::serialize::PyTorchStreamReader zip(path);
    return zip.hasRecord("constants.pkl");
  } catch (const c10::Error&) {
    return false;
  }
}

int64_t metadata_int(const std::map<std::string, std::string>& m, const std::string& key) {
  const auto it = m.find(key);
  if (it == m.end()) throw FormatError("metadata '" + key + "' is missing");
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    throw FormatError("metadata '" + key + "' is not an integer: " + it->second);
  }
}

/// The encoder `config` stored in `path` asks for, once it is plausible: a model cannot have more
/// parameters than the file holds values (`values`), and a file's settings are checked so before
/// any memory goes to them (a few hundred bytes could otherwise ask for a model of gigabytes).
EncoderConfig plausible_encoder(const TrainConfig& config, int64_t in_channels, int64_t image_size,
                                int64_t in_features, double values, const std::string& what) {
  if (in_channels < 0 || image_size < 0 || in_features < 0) {
    throw FormatError(what + " stores a negative input shape (channels " +
                      std::to_string(in_channels) + ", image size " + std::to_string(image_size) +
                      ", features " + std::to_string(in_features) + "): damaged");
  }
  const EncoderConfig ec =
      config.encoder_config(config.model.arch, in_channels, image_size, in_features);
  const double parameters = encoder_parameter_count(ec);
  if (!(parameters <= values)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%.4g parameters, but the file holds at most %.4g values",
                  parameters, values);
    throw FormatError(what + " describes a " + ec.arch + " encoder of " + buf +
                      ": its settings are damaged or not vicreg's");
  }
  return ec;
}

/// The most values a LibTorch archive of `path` can hold (2 bytes each: bf16, the smallest).
double archive_values(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0.0 : static_cast<double>(size) / 2;
}

/// The backbone of a safetensors or torch.save file.
Backbone backbone_from_weights(const std::string& path) {
  WeightsFile file;
  try {
    file = read_weights(path);
  } catch (const FormatError& e) {
    throw FormatError("backbone '" + path +
                      "' cannot be read (a backbone.pt, safetensors "
                      "or torch.save file was expected): " +
                      e.what());
  }
  file.tensors = weights_in_own_names(file.tensors, "backbone '" + path + "'");
  Backbone b;
  EncoderConfig ec;
  double values = 0;
  for (const auto& [name, t] : file.tensors) values += static_cast<double>(t.numel());
  if (file.metadata.count("vicreg.config")) {  // written by export_backbone
    try {
      b.config = stored_config(file.metadata.at("vicreg.config"));
      b.in_channels = metadata_int(file.metadata, "vicreg.in_channels");
      b.image_size = metadata_int(file.metadata, "vicreg.image_size");
      b.in_features = metadata_int(file.metadata, "vicreg.in_features");
    } catch (const std::exception& e) {
      throw FormatError("backbone '" + path + "' has broken vicreg metadata: " + e.what());
    }
    ec = plausible_encoder(b.config, b.in_channels, b.image_size, b.in_features, values,
                           "backbone '" + path + "'");
  } else {
    ec = infer_encoder_config(file.tensors, "backbone '" + path + "'");
    ModelConfig& m = b.config.model;
    m.arch = ec.arch;
    m.width = ec.width;
    m.stages = ec.stages;
    m.final_conv = ec.final_conv;
    m.encoder_mlp = ec.encoder_mlp;
    m.patch_size = ec.patch_size;
    m.depth = ec.depth;
    m.class_token = ec.class_token;
    m.mean_pool = ec.mean_pool;
    if (backbone_traits(ec.arch).images) {
      b.config.data.channels = ec.in_channels;
      b.in_channels = ec.in_channels;
    } else {
      b.config.data.dataset = DatasetKind::Npy;
      b.in_features = ec.in_features;
    }
    b.image_size = 0;  // not recorded: the data's recipe decides
    // Read off a few tensors' shapes (a ConvNet's width and stages): no bigger than the file.
    ec = plausible_encoder(b.config, b.in_channels, ec.image_size, b.in_features, values,
                           "backbone '" + path + "'");
  }
  try {
    b.encoder = make_encoder(ec);
  } catch (const UsageError& e) {  // settings no encoder can have: the file is damaged
    throw FormatError("backbone '" + path +
                      "' describes an encoder that cannot be built: " + e.what());
  }
  load_encoder_weights(*b.encoder, file.tensors, "backbone '" + path + "'");
  b.encoder->eval();
  return b;
}

}  // namespace

Backbone read_backbone(const std::string& path) {
  if (!fs::is_regular_file(path)) {
    throw FormatError("backbone '" + path + "': no such file");
  }
  if (!is_libtorch_archive(path)) return backbone_from_weights(path);
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "backbone");
  Backbone b;
  try {
    b.config = stored_config(read_string(archive, "config"));
    b.in_channels = read_int(archive, "in_channels");
    b.image_size = read_int(archive, "image_size");
    b.in_features = read_int(archive, "in_features");
    b.encoder = make_encoder(plausible_encoder(b.config, b.in_channels, b.image_size, b.in_features,
                                               archive_values(path), "the file"));
    torch::serialize::InputArchive weights;
    archive.read("backbone", weights);
    load_module_checked(*b.encoder, weights);
  } catch (const std::exception& e) {
    throw FormatError("backbone '" + path +
                      "' is not a vicreg backbone, or its weights do "
                      "not fit its stored architecture: " +
                      e.what());
  }
  b.encoder->eval();
  return b;
}

Backbone read_checkpoint_backbone(const std::string& path) {
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "checkpoint");
  Backbone b;
  b.config = checkpoint_config(archive, path);
  c10::IValue probe;
  if (!archive.try_read("in_channels", probe)) {
    throw FormatError("checkpoint '" + path +
                      "' does not record its input shape (written "
                      "before vicreg 0.1's export); use the run's backbone.pt instead");
  }
  try {
    b.in_channels = read_int(archive, "in_channels");
    b.image_size = read_int(archive, "image_size");
    b.in_features = read_int(archive, "in_features");
    b.encoder = make_encoder(plausible_encoder(b.config, b.in_channels, b.image_size, b.in_features,
                                               archive_values(path), "the file"));
    torch::serialize::InputArchive model_archive, weights;
    archive.read("model", model_archive);
    model_archive.read("backbone", weights);
    load_module_checked(*b.encoder, weights);
  } catch (const std::exception& e) {
    throw FormatError("checkpoint '" + path +
                      "' does not fit the backbone it describes: " + e.what());
  }
  b.encoder->eval();
  return b;
}

Encoder load_backbone(const std::string& path) { return read_backbone(path).encoder; }

TrainedModel read_model(const std::string& checkpoint, const Dataset& data) {
  TrainedModel m;
  torch::serialize::InputArchive archive;
  load_archive(archive, checkpoint, "checkpoint");
  m.config = checkpoint_config(archive, checkpoint);  // one read of the file for both
  try {
    const VICRegModelConfig mc = m.config.model_config(data);
    const double values = archive_values(checkpoint);
    plausible_encoder(m.config, data.channels, mc.encoder.image_size, data.features(), values,
                      "the file");
    m.model = VICReg(mc);
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    load_module_checked(*m.model, model_archive);
    m.step = read_int(archive, "step");
  } catch (const std::exception& e) {
    throw FormatError("checkpoint '" + checkpoint +
                      "' does not fit the model it describes "
                      "on this data (" +
                      data.name + "): " + e.what());
  }
  m.model->eval();
  return m;
}

void write_backbone(const Backbone& backbone, const std::string& path) {
  torch::serialize::OutputArchive out, weights;
  backbone.encoder->save(weights);
  out.write("backbone", weights);
  out.write("config", c10::IValue(to_json(backbone.config).dump()));
  out.write("in_channels", c10::IValue(backbone.in_channels));
  out.write("image_size", c10::IValue(backbone.image_size));
  out.write("in_features", c10::IValue(backbone.in_features));
  save_archive(out, path);
}

}  // namespace vicreg
