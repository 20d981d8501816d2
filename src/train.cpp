#include "vicreg/train.h"

#include "vicreg/evaluate.h"
#include "vicreg/runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/serialize.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace vicreg {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Config

namespace {

bool one_of(const std::string& value, const std::vector<std::string>& valid) {
  return std::find(valid.begin(), valid.end(), value) != valid.end();
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

std::string TrainConfig::resolved_recipe() const {
  if (!recipe.empty() || dataset == "npy") return recipe;
  if (dataset == "fashion-mnist" || dataset == "mnist") return "fashion-mnist";
  if (dataset == "cifar10" || dataset == "cifar100") return "cifar";
  return "imagenet";
}

void TrainConfig::validate() const {
  const auto check = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
  };
  check(one_of(dataset, dataset_names()),
        "unknown --dataset '" + dataset + "': use one of " + joined(dataset_names()));
  check(dataset == "npy" || recipe.empty() || one_of(recipe, recipe_names()),
        "unknown --recipe '" + recipe + "': use one of " + joined(recipe_names()));
  check(dataset != "npy" || recipe.empty() || recipe == "vector",
        "--dataset npy uses the vector augmentations: leave --recipe out (or say vector)");
  check(image_size >= 0 && image_size <= 4096, "--image-size must be in [0, 4096]");
  check(channels == 1 || channels == 3, "--channels must be 1 or 3");
  check(one_of(arch, encoder_archs()),
        "unknown --arch '" + arch + "': use one of " + joined(encoder_archs()));
  check(arch_b.empty() || one_of(arch_b, encoder_archs()),
        "unknown --arch-b '" + arch_b + "': use one of " + joined(encoder_archs()));
  check(arch_b.empty() || !shared_weights, "--arch-b needs --no-shared-weights");
  check((arch == "mlp") == (dataset == "npy") && (arch_b.empty() || (arch_b == "mlp") == (arch == "mlp")),
        "--arch mlp is for vector data (--dataset npy), and vector data need --arch mlp");
  parse_layer_spec(mlp);          // throws with the spec in the message
  parse_layer_spec(encoder_mlp);
  check(width >= 1 && width <= 4096, "--width must be in [1, 4096]");
  check(stages >= 1 && stages <= 8, "--stages must be in [1, 8]");
  check(epochs >= 1, "--epochs must be at least 1");
  check(batch_size >= 2, "--batch-size must be at least 2 (the variance and covariance terms "
                         "need two samples), got " + std::to_string(batch_size));
  check(std::isfinite(base_lr) && base_lr > 0, "--base-lr must be > 0");
  check(std::isfinite(wd) && wd >= 0, "--wd must be >= 0");
  check(one_of(optimizer, {"lars", "adamw", "sgd"}),
        "unknown --optimizer '" + optimizer + "': use lars, adamw or sgd");
  check(momentum >= 0 && momentum < 1, "--momentum must be in [0, 1)");
  check(eta > 0, "--eta must be > 0");
  check(warmup_epochs >= 0 && warmup_epochs <= static_cast<double>(epochs),
        "--warmup-epochs must be in [0, --epochs]");
  check(end_lr_ratio >= 0 && end_lr_ratio <= 1, "--end-lr-ratio must be in [0, 1]");
  check(sim_coeff >= 0 && std_coeff >= 0 && cov_coeff >= 0 &&
            std::isfinite(sim_coeff + std_coeff + cov_coeff),
        "--sim-coeff, --std-coeff and --cov-coeff must be finite and >= 0");
  loss_preset_from_string(loss_preset);
  check(device == "cpu" || device.rfind("cuda", 0) == 0, "--device must be cpu or cuda[:N]");
  check(threads >= 0, "--threads must be >= 0 (0: all cores)");
  check(workers >= 1 && workers <= 256, "--workers must be in [1, 256]");
  check(prefetch >= 1, "--prefetch must be at least 1");
  check(!exp_dir.empty(), "--exp-dir must not be empty");
  check(log_every >= 1, "--log-every must be at least 1");
  check(max_steps >= 0, "--max-steps must be >= 0");
  check(eval_every >= 0, "--eval-every must be >= 0 (0: never)");
  check(eval_bank >= 0, "--eval-bank must be >= 0 (0: the whole training split)");
  check(one_of(dist_backend, {"auto", "gloo", "nccl"}),
        "unknown --dist-backend '" + dist_backend + "': use auto, gloo or nccl");
  check(std::isfinite(dist_timeout) && dist_timeout >= 1,
        "--dist-timeout must be at least 1 second");
}

#define VICREG_CONFIG_FIELDS(X)                                                                 \
  X(dataset) X(data_dir) X(recipe) X(image_size) X(channels) X(arch) X(width) X(stages)         \
  X(encoder_mlp) X(mlp) X(shared_weights) X(arch_b) X(init_backbone) X(epochs) X(batch_size)   \
  X(base_lr) X(wd) X(optimizer) X(momentum) X(eta) X(clip_lr) X(warmup_epochs) X(end_lr_ratio)  \
  X(sim_coeff) X(std_coeff) X(cov_coeff) X(loss_preset) X(device) X(threads) X(workers)         \
  X(prefetch) X(seed) X(exp_dir) X(log_every) X(max_steps) X(eval_every) X(eval_bank)           \
  X(sync_bn) X(dist_backend) X(dist_timeout)

nlohmann::json to_json(const TrainConfig& config) {
  nlohmann::json j;
#define X(field) j[#field] = config.field;
  VICREG_CONFIG_FIELDS(X)
#undef X
  return j;
}

void update_from_json(TrainConfig& config, const nlohmann::json& json) {
  if (!json.is_object()) throw std::invalid_argument("config: expected a JSON object");
  for (const auto& [key, value] : json.items()) {
    bool known = false;
#define X(field)                                                                          \
  if (key == #field) {                                                                    \
    known = true;                                                                         \
    try {                                                                                 \
      config.field = value.get<decltype(config.field)>();                                 \
    } catch (const nlohmann::json::exception&) {                                         \
      throw std::invalid_argument("config: key '" + key + "' has the wrong type (" +      \
                                  value.dump() + ")");                                    \
    }                                                                                     \
  }
    VICREG_CONFIG_FIELDS(X)
#undef X
    if (!known) throw std::invalid_argument("config: unknown key '" + key + "'");
  }
}

EncoderConfig encoder_config(const TrainConfig& config, const std::string& arch,
                             int64_t in_channels, int64_t image_size, int64_t in_features) {
  EncoderConfig e;
  e.arch = arch;
  e.in_channels = in_channels;
  e.image_size = image_size;
  e.in_features = in_features;
  e.width = config.width;
  e.stages = config.stages;
  e.mlp_hidden = config.encoder_mlp;
  return e;
}

// ---------------------------------------------------------------------------------------------
// Files

void save_atomically(torch::serialize::OutputArchive& archive, const std::string& path) {
  const std::string tmp = path + ".tmp";
  archive.save_to(tmp);
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot flush '" + tmp + "' to disk");
  }
  ::close(fd);
  fs::rename(tmp, path);
  const std::string dir = fs::path(path).parent_path().empty()
                              ? std::string(".")
                              : fs::path(path).parent_path().string();
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

namespace {

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

void load_archive(torch::serialize::InputArchive& archive, const std::string& path,
                  const char* what) {
  if (!fs::is_regular_file(path)) {
    throw std::runtime_error(std::string(what) + " '" + path + "': no such file");
  }
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error(std::string(what) + " '" + path +
                             "' cannot be read (truncated or not a vicreg file): " +
                             e.what_without_backtrace());
  }
}

/// Module::load() in LibTorch 1.13 replaces each tensor with what the archive holds, whatever its
/// shape: a checkpoint of another architecture would load silently. Read every parameter and
/// buffer by name and check its shape before copying it in.
void load_module_checked(torch::nn::Module& module, torch::serialize::InputArchive& archive,
                         const std::string& prefix = "") {
  torch::NoGradGuard no_grad;
  const auto load = [&](const std::string& key, torch::Tensor& target, bool is_buffer) {
    torch::Tensor stored;
    if (!archive.try_read(key, stored, is_buffer)) {
      throw std::runtime_error("'" + prefix + key + "' is missing (another architecture?)");
    }
    if (stored.sizes() != target.sizes()) {
      std::ostringstream msg;
      msg << "'" << prefix << key << "' has shape " << stored.sizes() << ", the model expects "
          << target.sizes() << " (another architecture or width?)";
      throw std::runtime_error(msg.str());
    }
    target.copy_(stored);
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) load(p.key(), p.value(), false);
  for (auto& b : module.named_buffers(/*recurse=*/false)) load(b.key(), b.value(), true);
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive sub;
    if (!archive.try_read(child.key(), sub)) {
      throw std::runtime_error("'" + prefix + child.key() + "' is missing (another architecture?)");
    }
    load_module_checked(*child.value(), sub, prefix + child.key() + ".");
  }
}

std::string iso_duration(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d:%02d", static_cast<int>(s / 3600),
                static_cast<int>((s / 60) % 60), static_cast<int>(s % 60));
  return buf;
}

}  // namespace

namespace {

/// The config stored in a loaded checkpoint archive read from `path`.
TrainConfig checkpoint_config(torch::serialize::InputArchive& archive, const std::string& path) {
  TrainConfig config;
  try {
    update_from_json(config, nlohmann::json::parse(read_string(archive, "config")));
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + path + "' has no valid config: " + e.what());
  }
  return config;
}

}  // namespace

TrainConfig read_checkpoint_config(const std::string& path) {
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "checkpoint");
  return checkpoint_config(archive, path);
}

namespace {

/// True for LibTorch's torch::save archives (a TorchScript module: constants.pkl, code/), false
/// for anything else (Python's torch.save zip, safetensors, ...).
bool is_libtorch_archive(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  if (!in.read(magic, 4) || std::string(magic, 4) != std::string("PK\x03\x04", 4)) return false;
  try {
    caffe2::serialize::PyTorchStreamReader zip(path);
    return zip.hasRecord("constants.pkl");
  } catch (const c10::Error&) {
    return false;
  }
}

int64_t metadata_int(const std::map<std::string, std::string>& m, const std::string& key) {
  const auto it = m.find(key);
  if (it == m.end()) throw std::runtime_error("metadata '" + key + "' is missing");
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    throw std::runtime_error("metadata '" + key + "' is not an integer: " + it->second);
  }
}

/// The backbone of a safetensors or torch.save file.
Backbone backbone_from_weights(const std::string& path) {
  WeightsFile file;
  try {
    file = read_weights(path);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("backbone '" + path + "' cannot be read (a backbone.pt, safetensors "
                             "or torch.save file was expected): " + e.what());
  }
  Backbone b;
  EncoderConfig ec;
  if (file.metadata.count("vicreg.config")) {  // written by export_backbone
    try {
      update_from_json(b.config, nlohmann::json::parse(file.metadata.at("vicreg.config")));
      b.in_channels = metadata_int(file.metadata, "vicreg.in_channels");
      b.image_size = metadata_int(file.metadata, "vicreg.image_size");
      b.in_features = metadata_int(file.metadata, "vicreg.in_features");
    } catch (const std::exception& e) {
      throw std::runtime_error("backbone '" + path + "' has broken vicreg metadata: " + e.what());
    }
    ec = encoder_config(b.config, b.config.arch, b.in_channels, b.image_size, b.in_features);
  } else {
    ec = infer_encoder_config(file.tensors, "backbone '" + path + "'");
    b.config.arch = ec.arch;
    b.config.channels = ec.in_channels;
    b.in_channels = ec.in_channels;
    b.image_size = 0;  // not recorded: the data's recipe decides
  }
  b.encoder = make_encoder(ec);
  load_encoder_weights(*b.encoder, file.tensors, "backbone '" + path + "'");
  b.encoder->eval();
  return b;
}

}  // namespace

Backbone read_backbone(const std::string& path) {
  if (!fs::is_regular_file(path)) {
    throw std::runtime_error("backbone '" + path + "': no such file");
  }
  if (!is_libtorch_archive(path)) return backbone_from_weights(path);
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "backbone");
  Backbone b;
  try {
    update_from_json(b.config, nlohmann::json::parse(read_string(archive, "config")));
    b.in_channels = read_int(archive, "in_channels");
    b.image_size = read_int(archive, "image_size");
    b.in_features = read_int(archive, "in_features");
    b.encoder = make_encoder(
        encoder_config(b.config, b.config.arch, b.in_channels, b.image_size, b.in_features));
    torch::serialize::InputArchive weights;
    archive.read("backbone", weights);
    load_module_checked(*b.encoder, weights);
  } catch (const std::exception& e) {
    throw std::runtime_error("backbone '" + path + "' is not a vicreg backbone, or its weights do "
                             "not fit its stored architecture: " + e.what());
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
    throw std::runtime_error("checkpoint '" + path + "' does not record its input shape (written "
                             "before vicreg 0.1's export); use the run's backbone.pt instead");
  }
  try {
    b.in_channels = read_int(archive, "in_channels");
    b.image_size = read_int(archive, "image_size");
    b.in_features = read_int(archive, "in_features");
    b.encoder = make_encoder(
        encoder_config(b.config, b.config.arch, b.in_channels, b.image_size, b.in_features));
    torch::serialize::InputArchive model_archive, weights;
    archive.read("model", model_archive);
    model_archive.read("backbone", weights);
    load_module_checked(*b.encoder, weights);
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + path + "' does not fit the backbone it describes: " +
                             e.what());
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
    throw std::runtime_error(source + ": holds no ResNet with torchvision's names (no "
                             "layer1.0.conv1.weight), and no vicreg metadata; name the "
                             "architecture instead (--init-backbone with --arch, or with --config)");
  }
  const std::string p = choose_encoder_prefix(prefixes, source);
  std::map<std::string, torch::Tensor> by_name(weights.begin(), weights.end());
  const auto conv1 = by_name.find(p + "conv1.weight");
  if (conv1 == by_name.end() || conv1->second.dim() != 4) {
    throw std::runtime_error(source + ": no 4-d " + p + "conv1.weight");
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
  const std::vector<int64_t> short_stages = {2, 2, 2, 2}, long_stages = {3, 4, 6, 3};
  EncoderConfig ec;
  if (!bottleneck && blocks == short_stages) ec.arch = "resnet18";
  else if (!bottleneck && blocks == long_stages) ec.arch = "resnet34";
  else if (bottleneck && blocks == long_stages) ec.arch = "resnet50";
  else {
    throw std::runtime_error(source + ": a ResNet with " + (bottleneck ? "Bottleneck" : "BasicBlock") +
                             " blocks [" + std::to_string(blocks[0]) + "," + std::to_string(blocks[1]) +
                             "," + std::to_string(blocks[2]) + "," + std::to_string(blocks[3]) +
                             "], which is none of resnet18, resnet34, resnet50");
  }
  const int64_t kernel = conv1->second.size(3);
  if (kernel != 3 && kernel != 7) {
    throw std::runtime_error(source + ": conv1 has a " + std::to_string(kernel) + "x" +
                             std::to_string(kernel) + " kernel; vicreg's ResNets have 7x7 "
                             "(torchvision) or 3x3 (small-image stem)");
  }
  ec.in_channels = conv1->second.size(1);
  ec.image_size = kernel == 3 ? 32 : 224;  // what selects the stem in make_encoder
  return ec;
}

std::string torchvision_recipe(const Backbone& backbone) {
  const auto* resnet = dynamic_cast<const ResNetImpl*>(backbone.encoder.get());
  if (!resnet) return "";
  const std::string c = std::to_string(resnet->options.in_channels());
  std::string how = "m = torchvision.models.resnet" + std::to_string(resnet->options.depth()) + "()";
  if (resnet->options.small_stem()) {
    how += "; m.conv1 = nn.Conv2d(" + c + ", 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()";
  } else if (resnet->options.in_channels() != 3) {
    how += "; m.conv1 = nn.Conv2d(" + c + ", 64, 7, 2, 3, bias=False)";
  }
  return how + "; m.load_state_dict(tensors, strict=False) (missing: fc.weight, fc.bias); "
               "m.fc = nn.Identity() for the representation";
}

int64_t export_backbone(const Backbone& backbone, const std::string& path) {
  const NamedTensors state = module_state(*backbone.encoder);
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"vicreg.arch", backbone.config.arch},
      {"vicreg.config", to_json(backbone.config).dump()},
      {"vicreg.in_channels", std::to_string(backbone.in_channels)},
      {"vicreg.image_size", std::to_string(backbone.image_size)},
      {"vicreg.in_features", std::to_string(backbone.in_features)}};
  const std::string how = torchvision_recipe(backbone);
  if (!how.empty()) meta["vicreg.torchvision"] = how;
  write_safetensors(path, state, meta);
  return static_cast<int64_t>(state.size());
}

Encoder load_backbone(const std::string& path) { return read_backbone(path).encoder; }

VICRegModelConfig model_config(const TrainConfig& config, const Dataset& data) {
  int64_t image_size = 0;
  if (!data.is_vector()) {
    image_size = make_recipe(config.resolved_recipe(), static_cast<int>(data.channels),
                             static_cast<int>(config.image_size))
                     .view_a.crop.size;
  }
  VICRegModelConfig mc;
  mc.encoder = encoder_config(config, config.arch, data.channels, image_size, data.features());
  mc.encoder_b = encoder_config(config, config.arch_b.empty() ? config.arch : config.arch_b,
                                data.channels, image_size, data.features());
  mc.mlp = config.mlp;
  mc.shared_weights = config.shared_weights;
  return mc;
}

TrainedModel read_model(const std::string& checkpoint, const Dataset& data) {
  TrainedModel m;
  torch::serialize::InputArchive archive;
  load_archive(archive, checkpoint, "checkpoint");
  m.config = checkpoint_config(archive, checkpoint);  // one read of the file for both
  try {
    m.model = VICReg(model_config(m.config, data));
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    load_module_checked(*m.model, model_archive);
    m.step = read_int(archive, "step");
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + checkpoint + "' does not fit the model it describes "
                             "on this data (" + data.name + "): " + e.what());
  }
  m.model->eval();
  return m;
}

// ---------------------------------------------------------------------------------------------
// Trainer

Trainer::Trainer(TrainConfig config, std::string resume, std::shared_ptr<ProcessGroup> group)
    : config_(std::move(config)), device_(torch::kCPU), group_(std::move(group)) {
  config_.validate();
  if (group_ && group_->world_size() > 1) {
    rank_ = group_->rank();
    world_ = group_->world_size();
  } else {
    group_ = nullptr;
  }
  device_ = torch::Device(config_.device);
  if (device_.is_cuda() && !torch::cuda::is_available()) {
    throw std::invalid_argument("--device " + config_.device +
                                ": no CUDA device is available to this LibTorch build");
  }
  set_threads(config_.threads);

  const std::string checkpoint = (fs::path(config_.exp_dir) / "checkpoint.pt").string();
  if (resume.empty() && fs::exists(checkpoint)) resume = checkpoint;
  if (!resume.empty()) {
    // The stored config decides everything that shapes the run (model, data order, schedule);
    // the new one may change only where and how fast it runs, where the data are, and max_steps.
    const TrainConfig stored = read_checkpoint_config(resume);
    TrainConfig merged = stored;
    merged.device = config_.device;
    merged.threads = config_.threads;
    merged.workers = config_.workers;
    merged.prefetch = config_.prefetch;
    merged.exp_dir = config_.exp_dir;
    merged.log_every = config_.log_every;
    merged.max_steps = config_.max_steps;
    merged.eval_every = config_.eval_every;
    merged.eval_bank = config_.eval_bank;
    merged.sync_bn = config_.sync_bn;
    merged.dist_backend = config_.dist_backend;
    merged.dist_timeout = config_.dist_timeout;
    if (!config_.data_dir.empty()) merged.data_dir = config_.data_dir;
    // Say which of the new settings the checkpoint overrides, rather than ignore them silently.
    const nlohmann::json asked = to_json(config_), kept = to_json(merged);
    std::string ignored;
    for (const auto& [key, value] : asked.items()) {
      std::string flag = key;
      std::replace(flag.begin(), flag.end(), '_', '-');
      if (kept[key] != value) ignored += " --" + flag + " " + value.dump();
    }
    if (!ignored.empty() && is_main()) {
      std::fprintf(stderr, "vicreg train: resuming from '%s', whose settings are kept; ignoring%s\n",
                   resume.c_str(), ignored.c_str());
    }
    config_ = merged;
  }

  DatasetConfig dc;
  dc.name = config_.dataset;
  dc.data_dir = config_.data_dir;
  dc.channels = config_.channels;
  data_ = std::make_shared<Dataset>(load_dataset(dc));

  std::shared_ptr<TwoViewTransform> transform;
  if (data_->is_vector()) {
    transform = std::make_shared<VectorTwoViewTransform>(VectorAugment{});
  } else {
    const Recipe recipe = make_recipe(config_.resolved_recipe(), static_cast<int>(data_->channels),
                                      static_cast<int>(config_.image_size));
    image_size_ = recipe.view_a.crop.size;
    transform = std::make_shared<ImageTwoViewTransform>(recipe);
  }
  LoaderOptions lo;
  lo.batch_size = config_.batch_size;
  lo.workers = config_.workers;
  lo.prefetch = config_.prefetch;
  lo.seed = config_.seed;
  lo.shard_rank = rank_;
  lo.shard_count = world_;
  if (world_ > 1 && config_.batch_size / world_ < 2) {
    throw std::invalid_argument("--batch-size " + std::to_string(config_.batch_size) + " over " +
                                std::to_string(world_) + " processes leaves fewer than 2 rows per "
                                "process: use at least " + std::to_string(2 * world_));
  }
  loader_ = std::make_unique<TwoViewLoader>(data_, transform, lo);

  torch::manual_seed(config_.seed);
  model_ = VICReg(model_config(config_, *data_));
  if (resume.empty() && !config_.init_backbone.empty()) init_backbone();
  model_->to(device_);

  OptimizerConfig oc;
  oc.name = config_.optimizer;
  oc.weight_decay = config_.wd;
  oc.momentum = config_.momentum;
  oc.eta = config_.eta;
  oc.clip_lr = config_.clip_lr;
  optimizer_ = make_optimizer(model_->parameters(), oc);

  const int64_t per_epoch = loader_->batches_per_epoch();
  schedule_.peak_lr = config_.optimizer == "adamw" ? config_.base_lr
                                                   : scaled_lr(config_.base_lr, config_.batch_size);
  schedule_.total_steps = config_.epochs * per_epoch;
  schedule_.warmup_steps = std::min<int64_t>(
      schedule_.total_steps, static_cast<int64_t>(std::llround(config_.warmup_epochs * per_epoch)));
  schedule_.end_ratio = config_.end_lr_ratio;
  schedule_.validate();

  loss_options_.sim_coeff(config_.sim_coeff)
      .std_coeff(config_.std_coeff)
      .cov_coeff(config_.cov_coeff)
      .preset(loss_preset_from_string(config_.loss_preset));

  if (!resume.empty()) load_checkpoint(resume);
  if (group_) {
    // Every rank must have resumed from the same step (a checkpoint on a filesystem every host
    // sees), or their optimizers and data would part ways.
    std::vector<torch::Tensor> step0 = {torch::full({1}, static_cast<double>(step_),
                                                    torch::TensorOptions(device_).dtype(torch::kDouble))};
    group_->broadcast(step0, 0);
    const auto main_step = static_cast<int64_t>(step0[0].item<double>());
    if (main_step != step_) {
      throw std::runtime_error(
          "rank " + std::to_string(rank_) + " starts at step " + std::to_string(step_) +
          " but rank 0 resumes at step " + std::to_string(main_step) + " from " +
          (fs::path(config_.exp_dir) / "checkpoint.pt").string() + ": every rank must read the "
          "same checkpoint (put --exp-dir on a filesystem all hosts share, or copy the file)");
    }
    // Same seed, same checkpoint: the ranks agree already; the broadcast makes sure of it.
    if (config_.sync_bn) convert_sync_batchnorm(*model_, group_);
    broadcast_module(*model_, *group_);
  }
}

void Trainer::init_backbone() {
  const std::string& path = config_.init_backbone;
  const WeightsFile file = read_weights(path);
  const std::string source = "--init-backbone '" + path + "'";
  WeightsLoadReport r = load_encoder_weights(*model_->backbone, file.tensors, source);
  // Without shared weights, the second branch starts from the same weights when it has the same
  // architecture.
  if (model_->backbone_b && model_->config.encoder_b.arch == model_->config.encoder.arch) {
    load_encoder_weights(*model_->backbone_b, file.tensors, source);
  }
  if (is_main()) {
    std::string skipped;
    for (const auto& k : r.head) skipped += " " + k;
    std::fprintf(stderr, "vicreg train: backbone initialised from %s: %lld tensors%s%s%s\n",
                 path.c_str(), static_cast<long long>(r.loaded),
                 r.prefix.empty() ? "" : (" under '" + r.prefix + "'").c_str(),
                 skipped.empty() ? "" : ("; skipped the classifier" + skipped).c_str(),
                 r.other ? ("; ignored " + std::to_string(r.other) + " other entries").c_str() : "");
  }
}

void Trainer::load_checkpoint(const std::string& path) {
  torch::serialize::InputArchive archive;
  load_archive(archive, path, "checkpoint");
  try {
    torch::serialize::InputArchive model_archive, optimizer_archive;
    archive.read("model", model_archive);
    load_module_checked(*model_, model_archive);
    archive.read("optimizer", optimizer_archive);
    optimizer_->load(optimizer_archive);
    step_ = read_int(archive, "step");
    elapsed_before_ = read_double(archive, "elapsed_s");
    torch::Tensor rng_state;
    archive.read("rng_state", rng_state);
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(rng_state);
  } catch (const c10::Error& e) {
    throw std::runtime_error("checkpoint '" + path + "' does not match this model or is corrupt: " +
                             e.what_without_backtrace());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("checkpoint '" + path + "' does not match this model: " + e.what());
  }
  model_->to(device_);
}

void Trainer::save_checkpoint() const {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model_->save(model_archive);
  optimizer_->save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("step", c10::IValue(step_));
  archive.write("epoch", c10::IValue(step_ / loader_->batches_per_epoch()));
  archive.write("elapsed_s", c10::IValue(elapsed_before_));
  archive.write("rng_state", at::detail::getDefaultCPUGenerator().get_state());
  archive.write("config", c10::IValue(to_json(config_).dump()));
  // The input shape, so that the backbone can be rebuilt without the data (export).
  archive.write("in_channels", c10::IValue(data_->channels));
  archive.write("image_size", c10::IValue(static_cast<int64_t>(
                                  data_->is_vector() ? 0 : model_->config.encoder.image_size)));
  archive.write("in_features", c10::IValue(data_->features()));
  save_atomically(archive, (fs::path(config_.exp_dir) / "checkpoint.pt").string());
}

StepStats Trainer::train_step(const TwoViewBatch& batch) {
  StepStats s;
  s.lr = schedule_.lr_at(step_);
  set_learning_rate(*optimizer_, s.lr);
  const torch::Tensor x_a = batch.view_a.to(device_, /*non_blocking=*/true);
  const torch::Tensor x_b = batch.view_b.to(device_, /*non_blocking=*/true);
  optimizer_->zero_grad();
  const VICRegOutput out = model_->forward(x_a, x_b);
  VICRegLossTerms terms;
  try {
    terms = group_ ? vicreg_loss_sharded(out.z_a, out.z_b, *group_, loss_options_)
                   : vicreg_loss(out.z_a, out.z_b, loss_options_);
  } catch (const c10::Error& e) {
    throw TrainingDiverged(step_, "training diverged at step " + std::to_string(step_) + ": " +
                                      e.what_without_backtrace());
  }
  terms.total.backward();
  if (group_) all_reduce_gradients(model_->parameters(), *group_);
  const torch::Tensor& std_per_dim = terms.std_a;  // over the global batch
  last_y_ = out.y_a.detach();
  last_z_ = out.z_a.detach();
  const torch::Tensor numbers =
      torch::stack({terms.total.detach().to(torch::kDouble), terms.invariance.detach().to(torch::kDouble),
                    terms.variance.detach().to(torch::kDouble), terms.covariance.detach().to(torch::kDouble),
                    std_per_dim.mean().to(torch::kDouble), std_per_dim.min().to(torch::kDouble)})
          .cpu();
  const double* n = numbers.data_ptr<double>();
  s.loss = n[0];
  s.invariance = n[1];
  s.variance = n[2];
  s.covariance = n[3];
  s.std_z = n[4];
  s.std_z_min = n[5];
  if (!std::isfinite(s.loss)) {
    throw TrainingDiverged(step_, "training diverged at step " + std::to_string(step_) +
                                      ": the loss is " + std::to_string(s.loss));
  }
  optimizer_->step();
  ++step_;
  return s;
}

namespace {

struct Interval {
  int64_t steps = 0;
  StepStats sum;
  void add(const StepStats& s) {
    ++steps;
    sum.loss += s.loss;
    sum.invariance += s.invariance;
    sum.variance += s.variance;
    sum.covariance += s.covariance;
    sum.std_z += s.std_z;
    sum.std_z_min += s.std_z_min;
  }
};

}  // namespace

nlohmann::json Trainer::knn_probe() {
  if (!test_data_) {
    DatasetConfig dc;
    dc.name = config_.dataset;
    dc.data_dir = config_.data_dir;
    dc.channels = config_.channels;
    dc.split = "test";
    test_data_ = std::make_shared<Dataset>(load_dataset(dc));
    test_data_->require_labels();
  }
  // The bank: the first eval_bank training samples.
  const int64_t n = config_.eval_bank > 0 ? std::min(config_.eval_bank, data_->size()) : data_->size();
  data_->require_labels();
  const Dataset bank = data_->subset(torch::arange(n));
  EvalTransform t;
  if (!data_->is_vector()) {
    t = eval_transform_for(config_.resolved_recipe(), static_cast<int>(data_->channels), image_size_);
  }
  const torch::Tensor xb = compute_representations(*model_->backbone, bank, t, 512, device_);
  const torch::Tensor xq = compute_representations(*model_->backbone, *test_data_, t, 512, device_);
  const int64_t classes =
      std::max(bank.labels.max().item<int64_t>(), test_data_->labels.max().item<int64_t>()) + 1;
  const Accuracy a = accuracy(knn_scores(xb, bank.labels, xq, 20, 0.07, classes), test_data_->labels);
  return {{"event", "knn"},
          {"step", step_},
          {"epoch", static_cast<double>(step_) / loader_->batches_per_epoch()},
          {"knn_top1", a.top1},
          {"knn_top5", a.top5},
          {"bank", n},
          {"rankme_representation", rankme(xq)}};
}

TrainResult Trainer::run(const TrainHooks& hooks) {
  // Only rank 0 writes files and reports progress.
  std::ofstream metrics;
  if (is_main()) {
    fs::create_directories(config_.exp_dir);
    std::ofstream out(fs::path(config_.exp_dir) / "config.json");
    out << to_json(config_).dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write config.json in '" + config_.exp_dir + "'");
    metrics.open(fs::path(config_.exp_dir) / "metrics.jsonl", std::ios::app);
    if (!metrics) throw std::runtime_error("cannot write metrics.jsonl in '" + config_.exp_dir + "'");
  }

  const std::string progress = is_main() ? hooks.progress : "none";
  const bool bar = progress == "bar" || (progress == "auto" && isatty(STDERR_FILENO));
  const bool plain = progress == "plain" || (progress == "auto" && !bar);
  const int64_t per_epoch = loader_->batches_per_epoch();
  const int64_t total = schedule_.total_steps;
  const int64_t batch = config_.batch_size;
  const int64_t start_step = step_;
  TrainResult result;
  result.step = step_;

  if (plain || bar) {
    std::fprintf(stderr, "vicreg train: %s, %lld samples, %lld steps/epoch, %lld epochs, %s; %s\n",
                 config_.dataset.c_str(), static_cast<long long>(data_->size()),
                 static_cast<long long>(per_epoch), static_cast<long long>(config_.epochs),
                 start_step > 0 ? ("resuming at step " + std::to_string(start_step)).c_str()
                                : "from scratch",
                 describe_runtime().c_str());
    if (group_) {
      std::fprintf(stderr,
                   "vicreg train: %d processes (%s), global batch %lld = %d x %lld, BatchNorm %s\n",
                   world_, group_->backend().c_str(), static_cast<long long>(batch), world_,
                   static_cast<long long>(batch / world_),
                   config_.sync_bn ? "synchronised" : "per process");
    }
  }

  model_->train();
  loader_->start(step_);
  const auto t0 = std::chrono::steady_clock::now();
  auto t_interval = t0;
  Interval interval;
  double wait_at_interval = 0.0;
  const auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  const int64_t stop_at = config_.max_steps > 0 ? std::min(total, config_.max_steps) : total;

  while (step_ < stop_at) {
    const TwoViewBatch b = loader_->next();
    StepStats s;
    try {
      s = train_step(b);
    } catch (const TrainingDiverged&) {
      if (bar) std::fprintf(stderr, "\n");
      throw;  // checkpoint.pt still holds the last good state
    }
    interval.add(s);
    result.last_loss = s.loss;
    const bool epoch_end = step_ % per_epoch == 0;
    bool stop = hooks.stop_requested != nullptr && hooks.stop_requested->load();
    if (group_) {
      // A signal may reach one rank only: they stop together, at the same step.
      std::vector<torch::Tensor> flag = {torch::full({1}, stop ? 1.0f : 0.0f, device_)};
      group_->all_reduce_sum(flag);
      stop = flag[0].item<float>() > 0;
    }
    if (is_main() && (step_ % config_.log_every == 0 || epoch_end || step_ == stop_at || stop)) {
      const double dt = seconds_since(t_interval);
      const double wait = loader_->wait_seconds() - wait_at_interval;
      const double elapsed = elapsed_before_ + seconds_since(t0);
      const double k = 1.0 / static_cast<double>(interval.steps);
      const double ips = 2.0 * batch * interval.steps / std::max(dt, 1e-9);
      nlohmann::json line = {{"epoch", static_cast<double>(step_) / per_epoch},
                             {"step", step_},
                             {"lr", s.lr},
                             {"loss", interval.sum.loss * k},
                             {"invariance", interval.sum.invariance * k},
                             {"variance", interval.sum.variance * k},
                             {"covariance", interval.sum.covariance * k},
                             {"std_z", interval.sum.std_z * k},
                             {"std_z_min", interval.sum.std_z_min * k},
                             {"rankme_y", rankme(last_y_.to(torch::kCPU))},
                             {"rankme_z", rankme(last_z_.to(torch::kCPU))},
                             {"images_per_s", ips},
                             {"data_wait_fraction", wait / std::max(dt, 1e-9)},
                             {"elapsed_s", elapsed}};
      if (is_main()) metrics << line.dump() << "\n" << std::flush;
      const double eta_s = (stop_at - step_) * dt / interval.steps;
      if (bar) {
        const int width = 24;
        const int filled = static_cast<int>(width * step_ / std::max<int64_t>(total, 1));
        std::fprintf(stderr, "\r[%s%s] epoch %lld/%lld step %lld/%lld loss %.4f %.0f img/s ETA %s ",
                     std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                     static_cast<long long>((step_ - 1) / per_epoch + 1),
                     static_cast<long long>(config_.epochs), static_cast<long long>(step_),
                     static_cast<long long>(total), interval.sum.loss * k, ips,
                     iso_duration(eta_s).c_str());
      } else if (plain) {
        std::fprintf(stderr,
                     "epoch %lld/%lld step %lld/%lld lr %.4g loss %.4f (inv %.4f var %.4f cov %.4f) "
                     "std(z) %.3f %.0f img/s data wait %.1f%% elapsed %s ETA %s\n",
                     static_cast<long long>((step_ - 1) / per_epoch + 1),
                     static_cast<long long>(config_.epochs), static_cast<long long>(step_),
                     static_cast<long long>(total), s.lr, interval.sum.loss * k,
                     interval.sum.invariance * k, interval.sum.variance * k,
                     interval.sum.covariance * k, interval.sum.std_z * k, ips,
                     100.0 * wait / std::max(dt, 1e-9), iso_duration(elapsed).c_str(),
                     iso_duration(eta_s).c_str());
      }
      interval = {};
      t_interval = std::chrono::steady_clock::now();
      wait_at_interval = loader_->wait_seconds();
    }
    if (is_main() && epoch_end && config_.eval_every > 0 &&
        (step_ / per_epoch) % config_.eval_every == 0) {
      // The other ranks wait for it in the next step's collectives (within --dist-timeout).
      const nlohmann::json probe = knn_probe();
      metrics << probe.dump() << "\n" << std::flush;
      if (plain || bar) {
        std::fprintf(stderr, "%sepoch %lld kNN top-1 %.2f %% top-5 %.2f %% (bank %lld), RankMe %.1f\n",
                     bar ? "\n" : "", static_cast<long long>(step_ / per_epoch),
                     100 * probe["knn_top1"].get<double>(), 100 * probe["knn_top5"].get<double>(),
                     static_cast<long long>(probe["bank"].get<int64_t>()),
                     probe["rankme_representation"].get<double>());
      }
    }
    if (epoch_end || stop || step_ == stop_at) {
      const double session = seconds_since(t0);
      elapsed_before_ += session;
      if (is_main()) save_checkpoint();
      elapsed_before_ -= session;  // keep counting this session from t0
    }
    if (stop) {
      result.stopped = true;
      result.stop_requested = true;
      break;
    }
  }
  const double session = seconds_since(t0);
  elapsed_before_ += session;
  if (bar) std::fprintf(stderr, "\n");
  result.step = step_;
  result.epoch = step_ / per_epoch;
  result.finished = step_ >= total;
  result.stopped = result.stopped || !result.finished;
  result.data_wait_fraction = loader_->wait_seconds() / std::max(session, 1e-9);
  result.images_per_second = 2.0 * batch * (step_ - start_step) / std::max(session, 1e-9);

  if (!is_main()) return result;
  // The backbone alone, with what is needed to rebuild it.
  torch::serialize::OutputArchive out, weights;
  model_->backbone->save(weights);
  out.write("backbone", weights);
  out.write("config", c10::IValue(to_json(config_).dump()));
  out.write("in_channels", c10::IValue(data_->channels));
  out.write("image_size", c10::IValue(static_cast<int64_t>(
                              data_->is_vector() ? 0 : model_->config.encoder.image_size)));
  out.write("in_features", c10::IValue(data_->features()));
  save_atomically(out, (fs::path(config_.exp_dir) / "backbone.pt").string());
  return result;
}

}  // namespace vicreg
