#include "vicreg/run/artifacts.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"
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

std::string ExperimentDir::config() const { return (fs::path(root) / "config.json").string(); }
std::string ExperimentDir::metrics() const { return (fs::path(root) / "metrics.jsonl").string(); }
std::string ExperimentDir::checkpoint() const {
  return (fs::path(root) / "checkpoint.pt").string();
}
std::string ExperimentDir::backbone() const { return (fs::path(root) / "backbone.pt").string(); }

namespace {

// The checksum of an archive: CRC-32 of every byte before it, in the zip's end-of-central-
// directory comment (which zip readers, LibTorch's and Python's included, skip).
constexpr std::string_view kChecksumTag = "vicreg crc32 ";
constexpr size_t kChecksumComment = 13 + 8;  // the tag and 8 hex digits
constexpr size_t kEndOfCentralDirectory = 22;

uint32_t crc32_of(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (!bytes.empty()) {
    const auto n = static_cast<uInt>(std::min<size_t>(bytes.size(), 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), n);
    bytes.remove_prefix(n);
  }
  return static_cast<uint32_t>(crc);
}

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

}  // namespace

void add_checksum(std::string& zip) {
  const size_t n = zip.size();
  if (n < kEndOfCentralDirectory ||
      zip.compare(n - kEndOfCentralDirectory, 4, std::string_view("PK\x05\x06", 4)) != 0 ||
      zip[n - 2] != 0 || zip[n - 1] != 0) {
    throw FormatError("cannot add a checksum: not a zip archive ending in an empty comment");
  }
  zip[n - 2] = static_cast<char>(kChecksumComment);
  zip += kChecksumTag;
  zip += hex8(crc32_of(std::string_view(zip).substr(0, n)));
}

ArchiveChecksum verify_checksum(std::string_view bytes) {
  const size_t n = bytes.size();
  if (n < kEndOfCentralDirectory + kChecksumComment) return ArchiveChecksum::Absent;
  const size_t end = n - kChecksumComment;  // where the comment starts
  const std::string_view comment = bytes.substr(end);
  if (comment.substr(0, kChecksumTag.size()) != kChecksumTag ||
      bytes.compare(end - kEndOfCentralDirectory, 4, std::string_view("PK\x05\x06", 4)) != 0) {
    return ArchiveChecksum::Absent;
  }
  return comment.substr(kChecksumTag.size()) == hex8(crc32_of(bytes.substr(0, end)))
             ? ArchiveChecksum::Good
             : ArchiveChecksum::Bad;
}

void save_archive(torch::serialize::OutputArchive& archive, const std::string& path) {
  // Serialised in memory, then written by the one atomic writer: LibTorch's file writer throws
  // from its destructor when the disk fills up (std::terminate, exit 134, a temporary left
  // behind); ours reports the error, removes the temporary and leaves the previous file intact.
  std::ostringstream stream;
  archive.save_to(stream);
  std::string bytes = std::move(stream).str();
  add_checksum(bytes);
  try {
    write_file_atomically(path, bytes);
  } catch (const FormatError& e) {
    throw FormatError(std::string(e.what()) + "; the previous '" +
                      fs::path(path).filename().string() + "', if any, is intact");
  }
}

void load_archive(torch::serialize::InputArchive& archive, const std::string& path,
                  const std::string& what) {
  const std::string bytes = read_file(path, what, std::numeric_limits<uint64_t>::max());
  if (verify_checksum(bytes) == ArchiveChecksum::Bad) {
    throw FormatError(what + " '" + path +
                      "' is damaged: its contents do not match the checksum written with it (a "
                      "disk error, or a copy cut short)");
  }
  try {
    archive.load_from(bytes.data(), bytes.size());
  } catch (const c10::Error& e) {
    throw FormatError(what + " '" + path + "' cannot be read (truncated or not a vicreg file): " +
                      e.what_without_backtrace());
  } catch (const std::exception& e) {  // TorchScript's ErrorReport and the like
    throw FormatError(what + " '" + path +
                      "' cannot be read (truncated or not a vicreg file): " + e.what());
  }
}

namespace {

/// The config a vicreg file stores. Files written before the precision and memory format were
/// recorded (0.1) were trained in fp32 and contiguous, all there was. Files written before
/// --recipe-overrides existed were trained with the fashion-mnist recipe's jitter at 0.6 (its
/// strength until then): they resume with it. Files written before --final-conv existed hold a
/// ConvNet without the final 1x1 conv.
TrainConfig stored_config(const std::string& json_text) {
  TrainConfig c;
  c.runtime.precision = Precision::Fp32;
  c.runtime.channels_last = Toggle::Off;
  const nlohmann::json j = parse_json(json_text, "the stored settings");
  update_from_json(c, j);
  const std::vector<std::string> keys = setting_keys(j);
  const auto missing = [&](const char* key) {
    return std::find(keys.begin(), keys.end(), key) == keys.end();
  };
  if (missing("recipe_overrides") && c.data.dataset != DatasetKind::Npy &&
      c.resolved_recipe() == "fashion-mnist") {
    c.data.recipe_overrides = "brightness=0.6,contrast=0.6";
  }
  // Written before the setting existed: the ConvNet had no final conv.
  if (missing("final_conv")) c.model.final_conv = 0;
  return c;
}

std::string read_string(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue v;
  archive.read(key, v);
  return v.toStringRef();
}

int64_t read_int(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue v;
  archive.read(key, v);
  return v.toInt();
}

double read_double(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue v;
  archive.read(key, v);
  return v.toDouble();
}

/// The config stored in a loaded checkpoint archive read from `path`.
TrainConfig checkpoint_config(torch::serialize::InputArchive& archive, const std::string& path) {
  TrainConfig config;
  try {
    config = stored_config(read_string(archive, "config"));
  } catch (const std::exception& e) {
    throw FormatError("checkpoint '" + path + "' has no valid config: " + e.what());
  }
  return config;
}

/// Module::load() in LibTorch 1.13 replaces each tensor with what the archive holds, whatever its
/// shape: a checkpoint of another architecture would load silently. Read every parameter and
/// buffer by name and check its shape before copying it in.
void load_checked(torch::nn::Module& module, torch::serialize::InputArchive& archive,
                  const std::string& prefix) {
  torch::NoGradGuard no_grad;
  const auto load = [&](const std::string& key, torch::Tensor& target, bool is_buffer) {
    torch::Tensor stored;
    if (!archive.try_read(key, stored, is_buffer)) {
      throw FormatError("'" + prefix + key + "' is missing (another architecture?)");
    }
    if (stored.sizes() != target.sizes()) {
      std::ostringstream msg;
      msg << "'" << prefix << key << "' has shape " << stored.sizes() << ", the model expects "
          << target.sizes() << " (another architecture or width?)";
      throw FormatError(msg.str());
    }
    target.copy_(stored);
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) load(p.key(), p.value(), false);
  for (auto& b : module.named_buffers(/*recurse=*/false)) load(b.key(), b.value(), true);
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive sub;
    if (!archive.try_read(child.key(), sub)) {
      throw FormatError("'" + prefix + child.key() + "' is missing (another architecture?)");
    }
    load_checked(*child.value(), sub, prefix + child.key() + ".");
  }
}

}  // namespace

void load_module_checked(torch::nn::Module& module, torch::serialize::InputArchive& archive) {
  load_checked(module, archive, "");
}

std::string previous_checkpoint(const std::string& path) {
  fs::path p(path);
  const std::string stem = p.stem().string(), ext = p.extension().string();
  return (p.parent_path() / (stem + ".prev" + ext)).string();
}

namespace {

/// Makes `path` (when there is one) the previous checkpoint: a hard link (a copy where the
/// filesystem has none) under the previous one's name, put in place by rename, so that each of
/// the two names always holds a whole checkpoint.
void keep_as_previous(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return;
  const std::string previous = previous_checkpoint(path);
  const std::string link = previous + ".link";
  fs::remove(link, ec);
  fs::create_hard_link(path, link, ec);
  if (ec) fs::copy_file(path, link, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(link, previous, ec);
  if (ec) {
    fs::remove(link);
    throw FormatError("cannot keep '" + path + "' as '" + previous +
                      "' before writing the next "
                      "checkpoint: " +
                      ec.message() + " (is the disk full?); '" + path + "' is intact");
  }
}

}  // namespace

std::string recover_checkpoint(const std::string& path, std::string* warning) {
  std::error_code ec;
  const std::string previous = previous_checkpoint(path);
  std::string why;
  if (fs::exists(path, ec)) {
    try {
      read_checkpoint_config(path);
      return path;
    } catch (const FormatError& e) {
      why = e.what();
    }
  }
  if (!fs::exists(previous, ec)) {
    if (why.empty()) return "";  // a new run
    throw FormatError(why + "; there is no previous checkpoint (" +
                      fs::path(previous).filename().string() +
                      ") to go back to: remove it to start over, or give another --exp-dir");
  }
  try {
    read_checkpoint_config(previous);
  } catch (const FormatError& e) {
    throw FormatError((why.empty() ? "" : why + "; ") +
                      "the previous checkpoint is damaged too: " + e.what());
  }
  std::string note = "resuming from the previous checkpoint '" + previous + "'";
  if (!why.empty()) {
    const std::string damaged = path + ".damaged";
    fs::rename(path, damaged, ec);
    note = why + "; " + note + (ec ? "" : " (the damaged one is kept as '" + damaged + "')");
  }
  if (warning != nullptr) *warning = note;
  return previous;
}

void write_checkpoint(const std::string& path, const torch::nn::Module& model,
                      const torch::optim::Optimizer& optimizer, const CheckpointState& state,
                      const OnlineProbeImpl* probe) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("step", c10::IValue(state.step));
  archive.write("epoch", c10::IValue(state.epoch));
  archive.write("elapsed_s", c10::IValue(state.elapsed_s));
  archive.write("rng_state", state.rng_state);
  archive.write("config", c10::IValue(to_json(state.config).dump()));
  archive.write("in_channels", c10::IValue(state.in_channels));
  archive.write("image_size", c10::IValue(state.image_size));
  archive.write("in_features", c10::IValue(state.in_features));
  if (state.loss_scaler.defined()) {
    archive.write("loss_scaler", state.loss_scaler);
    archive.write("skipped_in_a_row", c10::IValue(state.skipped_in_a_row));
  }
  if (probe != nullptr) {
    torch::serialize::OutputArchive probe_archive, probe_optimizer;
    probe->save(probe_archive);
    probe->optimizer().save(probe_optimizer);
    archive.write("online_probe", probe_archive);
    archive.write("online_probe_optimizer", probe_optimizer);
  }
  keep_as_previous(path);
  save_archive(archive, path);
}

namespace {

/// Refuses a checkpoint whose optimizer state (`archive`'s entry `key`, if any) this LibTorch
/// would read wrongly: one a LibTorch 1.x build wrote, read by a 2.x build
/// (optimizer_state_keys_readable in optim.h).
void check_optimizer_state_keys(torch::serialize::InputArchive& archive, const std::string& key,
                                const std::string& path) {
  std::vector<std::string> keys;
  try {
    torch::serialize::InputArchive optimizer, state;
    if (!archive.try_read(key, optimizer) || !optimizer.try_read("state", state)) return;
    keys = state.keys();
  } catch (const c10::Error&) {
    return;  // a damaged archive: reading it in read_checkpoint names the problem
  }
  if (!optimizer_state_keys_readable(keys)) {
    throw FormatError("checkpoint '" + path +
                      "' was written by a build of vicreg on LibTorch 1.x, whose optimizer state "
                      "LibTorch " TORCH_VERSION
                      " reads wrongly (it would mix up the parameters' state): resume it with a "
                      "LibTorch 1.x build of vicreg");
  }
}

}  // namespace

CheckpointState read_checkpoint(const std::string& path, torch::nn::Module& model,
                                torch::optim::Optimizer& optimizer, OnlineProbeImpl* probe) {
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "checkpoint");
  CheckpointState s;
  s.config = checkpoint_config(archive, path);
  check_optimizer_state_keys(archive, "optimizer", path);
  if (probe != nullptr) check_optimizer_state_keys(archive, "online_probe_optimizer", path);
  try {
    torch::serialize::InputArchive model_archive, optimizer_archive;
    archive.read("model", model_archive);
    load_module_checked(model, model_archive);
    archive.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
    s.step = read_int(archive, "step");
    s.epoch = read_int(archive, "epoch");
    s.elapsed_s = read_double(archive, "elapsed_s");
    archive.read("rng_state", s.rng_state);
    c10::IValue shape;
    if (archive.try_read("in_channels", shape)) {
      s.in_channels = read_int(archive, "in_channels");
      s.image_size = read_int(archive, "image_size");
      s.in_features = read_int(archive, "in_features");
    }
    torch::Tensor scaler;
    if (archive.try_read("loss_scaler", scaler)) {
      s.loss_scaler = scaler;
      s.skipped_in_a_row = read_int(archive, "skipped_in_a_row");
    }
    torch::serialize::InputArchive probe_archive;
    if (probe != nullptr && archive.try_read("online_probe", probe_archive)) {
      load_module_checked(*probe, probe_archive);
      torch::serialize::InputArchive probe_optimizer;
      archive.read("online_probe_optimizer", probe_optimizer);
      probe->optimizer().load(probe_optimizer);
      s.online_probe = true;
    }
  } catch (const c10::Error& e) {
    throw FormatError("checkpoint '" + path +
                      "' does not match this model or is corrupt: " + e.what_without_backtrace());
  } catch (const Error& e) {
    throw FormatError("checkpoint '" + path + "' does not match this model: " + e.what());
  }
  return s;
}

TrainConfig read_checkpoint_config(const std::string& path) {
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "checkpoint");
  return checkpoint_config(archive, path);
}

TrainConfig read_run_config_file(const std::string& path) {
  const std::string text = read_file(path, "run config", 1 << 20);
  try {
    return stored_config(text);
  } catch (const UsageError& e) {
    throw UsageError("'" + path + "': " + e.what());
  }
}

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
    throw FormatError(what + " describes a " + to_string(ec.arch) + " encoder of " + buf +
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
  Backbone b;
  EncoderConfig ec;
  if (file.metadata.count("vicreg.config")) {  // written by export_backbone
    try {
      b.config = stored_config(file.metadata.at("vicreg.config"));
      b.in_channels = metadata_int(file.metadata, "vicreg.in_channels");
      b.image_size = metadata_int(file.metadata, "vicreg.image_size");
      b.in_features = metadata_int(file.metadata, "vicreg.in_features");
    } catch (const std::exception& e) {
      throw FormatError("backbone '" + path + "' has broken vicreg metadata: " + e.what());
    }
    double values = 0;
    for (const auto& [name, t] : file.tensors) values += static_cast<double>(t.numel());
    ec = plausible_encoder(b.config, b.in_channels, b.image_size, b.in_features, values,
                           "backbone '" + path + "'");
  } else {
    ec = infer_encoder_config(file.tensors, "backbone '" + path + "'");
    b.config.model.arch = ec.arch;
    b.config.data.channels = ec.in_channels;
    b.in_channels = ec.in_channels;
    b.image_size = 0;  // not recorded: the data's recipe decides
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

EncoderConfig infer_encoder_config(const NamedTensors& weights, const std::string& source) {
  // The prefix under which a ResNet's first block is.
  const std::string probe = "layer1.0.conv1.weight";
  std::vector<std::string> prefixes;
  for (const auto& [name, t] : weights) {
    if (name.size() >= probe.size() &&
        name.compare(name.size() - probe.size(), probe.size(), probe) == 0) {
      const std::string p = name.substr(0, name.size() - probe.size());
      if (p.empty() || p.back() == '.') prefixes.push_back(p);
    }
  }
  if (prefixes.empty()) {
    throw FormatError(source +
                      ": holds no ResNet with torchvision's names (no "
                      "layer1.0.conv1.weight), and no vicreg metadata; name the "
                      "architecture instead (--init-backbone with --arch, or with --config)");
  }
  const std::string p = choose_encoder_prefix(prefixes, source);
  std::map<std::string, torch::Tensor> by_name(weights.begin(), weights.end());
  const auto conv1 = by_name.find(p + "conv1.weight");
  if (conv1 == by_name.end() || conv1->second.dim() != 4) {
    throw FormatError(source + ": no 4-d " + p + "conv1.weight");
  }
  const bool bottleneck = by_name.count(p + "layer1.0.conv3.weight") > 0;
  std::vector<int64_t> blocks;
  for (int layer = 1; layer <= 4; ++layer) {
    int64_t n = 0;
    while (by_name.count(p + "layer" + std::to_string(layer) + "." + std::to_string(n) +
                         ".conv1.weight")) {
      ++n;
    }
    blocks.push_back(n);
  }
  // Depth from the blocks per stage, widening from the stem: the reference's wide ResNets multiply
  // every width, the stem's too.
  const std::optional<int64_t> depth = resnet_depth(bottleneck, blocks);
  const int64_t stem = conv1->second.size(0);
  const std::string described = std::string("a ResNet with ") +
                                (bottleneck ? "Bottleneck" : "BasicBlock") + " blocks [" +
                                std::to_string(blocks[0]) + "," + std::to_string(blocks[1]) + "," +
                                std::to_string(blocks[2]) + "," + std::to_string(blocks[3]) +
                                "] and a " + std::to_string(stem) + "-channel stem";
  const torch::Tensor& inner = by_name.at(p + "layer1.0.conv1.weight");
  if (inner.dim() != 4 || inner.size(0) != stem) {
    throw FormatError(source + ": " + described + " whose first block is " +
                      std::to_string(inner.dim() == 4 ? inner.size(0) : 0) +
                      " wide: neither a torchvision ResNet nor one of the official VICReg wide "
                      "ResNets (torchvision's wide_resnet50_2 widens only the blocks' inner "
                      "convolutions, which vicreg does not build)");
  }
  const std::optional<Arch> arch =
      depth && stem % 64 == 0 ? resnet_arch(*depth, stem / 64) : std::nullopt;
  if (!arch) {
    std::string names;
    for (const std::string& n : names_of<Arch>()) {
      if (resnet_shape(parse_name<Arch>(n))) names += (names.empty() ? "" : ", ") + n;
    }
    throw FormatError(source + ": " + described + ", which is none of " + names);
  }
  EncoderConfig ec;
  ec.arch = *arch;
  const int64_t kernel = conv1->second.size(3);
  if (kernel != 3 && kernel != 7) {
    throw FormatError(source + ": conv1 has a " + std::to_string(kernel) + "x" +
                      std::to_string(kernel) +
                      " kernel; vicreg's ResNets have 7x7 "
                      "(torchvision) or 3x3 (small-image stem)");
  }
  ec.in_channels = conv1->second.size(1);
  ec.image_size = kernel == 3 ? 32 : 224;  // what selects the stem in make_encoder
  return ec;
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
