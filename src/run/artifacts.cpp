#include "vicreg/run/artifacts.h"

#include "archive_read.h"

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

namespace {

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
                          ") to go back to: remove it to start over, or give another exp_dir",
                      {"exp_dir"});
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

}  // namespace vicreg
