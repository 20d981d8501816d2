#include "vicreg/run/config.h"

#include "vicreg/augment.h"
#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <type_traits>

namespace vicreg {

template <>
const NameTable<OnOff>& name_table<OnOff>() {
  static const NameTable<OnOff> t{"value", {{OnOff::On, "on"}, {OnOff::Off, "off"}}};
  return t;
}

template <>
const NameTable<Section>& name_table<Section>() {
  static const NameTable<Section> t{"config section",
                                    {{Section::Data, "data"},
                                     {Section::Model, "model"},
                                     {Section::Optim, "optim"},
                                     {Section::Loss, "loss"},
                                     {Section::Seed, "seed"},
                                     {Section::Runtime, "runtime"},
                                     {Section::Distributed, "distributed"}}};
  return t;
}

const std::vector<std::string>& expander_norm_choices() {
  static const std::vector<std::string> names = {"batch", "layer"};
  return names;
}

const std::vector<std::string>& recipe_choices() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n = recipe_names();
    n.push_back("vector");
    return n;
  }();
  return names;
}

// ---------------------------------------------------------------------------------------------
// Checks and derived settings

bool TrainConfig::convolutional() const {
  const std::string& b = model.shared_weights || model.arch_b.empty() ? model.arch : model.arch_b;
  return data.dataset != DatasetKind::Npy && backbone_traits(model.arch).convolutional &&
         backbone_traits(b).convolutional;
}

std::string TrainConfig::resolved_recipe() const {
  switch (data.dataset) {
    case DatasetKind::Npy:
      return data.recipe;
    case DatasetKind::FashionMnist:
    case DatasetKind::Mnist:
      return data.recipe.empty() ? "fashion-mnist" : data.recipe;
    case DatasetKind::Cifar10:
    case DatasetKind::Cifar100:
      return data.recipe.empty() ? "cifar" : data.recipe;
    case DatasetKind::ImageFolder:
      break;
  }
  return data.recipe.empty() ? "imagenet" : data.recipe;
}

std::string TrainConfig::default_exp_dir() const {
  namespace fs = std::filesystem;
  std::string name = to_string(data.dataset);
  if (data.dataset == DatasetKind::ImageFolder || data.dataset == DatasetKind::Npy) {
    fs::path p = fs::absolute(runtime.data_dir).lexically_normal();
    if (!p.has_filename()) p = p.parent_path();  // "photos/" -> "photos"
    if (p.extension() == ".npy") p.replace_extension();
    std::string base = p.filename().string();
    if (base == "train" || base == "val" || base == "test") {
      base = p.parent_path().filename().string();
    }
    if (!runtime.data_dir.empty() && !base.empty()) name = base;
  }
  return (fs::path("runs") / name).string();
}

void TrainConfig::resolve_paths() {
  namespace fs = std::filesystem;
  const auto absolute = [](std::string& path) {
    if (!path.empty()) path = fs::absolute(path).lexically_normal().string();
  };
  if (runtime.exp_dir.empty()) runtime.exp_dir = default_exp_dir();
  for (std::string* p : {&runtime.data_dir, &runtime.val_dir, &runtime.exp_dir, &data.classes,
                         &model.init_backbone}) {
    absolute(*p);
  }
}

void TrainConfig::validate() const {
  // Messages name settings by their keys (the CLI says them as its flags: with_flag_names).
  const auto check = [](bool ok, std::vector<std::string> settings, const std::string& what) {
    if (!ok) throw SettingError(std::move(settings), what);
  };
  const bool vectors = data.dataset == DatasetKind::Npy;
  const auto& recipes = recipe_names();
  check(vectors || data.recipe.empty() ||
            std::find(recipes.begin(), recipes.end(), data.recipe) != recipes.end(),
        {"recipe"}, "unknown recipe '" + data.recipe + "': use " + join_names(recipes));
  check(!vectors || data.recipe.empty() || data.recipe == "vector", {"dataset", "recipe"},
        "dataset npy uses the vector augmentations: leave recipe out (or say vector)");
  check(data.image_size >= 0 && data.image_size <= 4096, {"image_size"},
        "image_size must be in [0, 4096]");
  check(!vectors || data.recipe_overrides.empty(), {"recipe_overrides", "dataset"},
        "recipe_overrides changes image views; vector data (dataset npy) have their own "
        "augmentations");
  if (!vectors && !data.recipe_overrides.empty()) {
    try {
      recipe(1);  // recipe_overrides's syntax and ranges; the channels do not matter for them
    } catch (const UsageError& e) {
      const std::string what = e.what();
      throw UsageError(what.find("recipe_overrides") != std::string::npos
                           ? what
                           : what + " (in recipe_overrides '" + data.recipe_overrides + "')",
                       {"recipe_overrides"});
    }
  }
  check(data.channels == 1 || data.channels == 3, {"channels"}, "channels must be 1 or 3");
  check(data.holdout >= 0 && data.holdout < 1, {"holdout"}, "holdout must be in [0, 1) (0: none)");
  check(data.holdout == 0 || runtime.val_dir.empty(), {"holdout", "val_dir"},
        "holdout and val_dir both name a held-out split: give one of them");
  check(data.classes.empty() || data.dataset == DatasetKind::ImageFolder, {"classes", "dataset"},
        "classes selects class folders: it is for dataset image-folder");
  check(model.arch_b.empty() || !model.shared_weights, {"arch_b", "shared_weights"},
        "arch_b needs shared_weights off");
  const std::string& arch_b = model.arch_b.empty() ? model.arch : model.arch_b;
  const bool images_a = backbone_traits(model.arch).images,  // unknown names throw here
      images_b = backbone_traits(arch_b).images;
  check(images_a != vectors && images_b != vectors, {"arch", "dataset"},
        "arch mlp is for vector data (dataset npy), and vector data need arch mlp");
  objective_terms(loss.objective);  // an unknown objective throws, naming the known ones
  parse_layer_spec(model.mlp);      // throws with the spec in the message
  parse_layer_spec(model.encoder_mlp);
  check(model.expander_norm == "batch" || model.expander_norm == "layer", {"expander_norm"},
        "expander_norm must be batch or layer, got '" + model.expander_norm + "'");
  for (const std::string* arch : {&model.arch, &arch_b}) {
    backbone_family(*arch).check_settings(encoder_config(*arch, 0, 0, 0));  // the family's own
  }
  check(optim.epochs >= 1, {"epochs"}, "epochs must be at least 1");
  check(optim.batch_size >= 2, {"batch_size"},
        "batch_size must be at least 2 (the variance and covariance terms need two samples), "
        "got " +
            std::to_string(optim.batch_size));
  check(std::isfinite(optim.base_lr) && optim.base_lr > 0, {"base_lr"}, "base_lr must be > 0");
  check(std::isfinite(optim.wd) && optim.wd >= 0, {"wd"}, "wd must be >= 0");
  check(optim.momentum >= 0 && optim.momentum < 1, {"momentum"}, "momentum must be in [0, 1)");
  check(optim.eta > 0, {"eta"}, "eta must be > 0");
  check(optim.warmup_epochs >= 0 && optim.warmup_epochs <= static_cast<double>(optim.epochs),
        {"warmup_epochs", "epochs"}, "warmup_epochs must be in [0, epochs]");
  check(optim.end_lr_ratio >= 0 && optim.end_lr_ratio <= 1, {"end_lr_ratio"},
        "end_lr_ratio must be in [0, 1]");
  check(loss.sim_coeff >= 0 && loss.std_coeff >= 0 && loss.cov_coeff >= 0 &&
            std::isfinite(loss.sim_coeff + loss.std_coeff + loss.cov_coeff),
        {"sim_coeff", "std_coeff", "cov_coeff"},
        "sim_coeff, std_coeff and cov_coeff must be finite and >= 0");
  const std::string& device = runtime.device;
  check(device == "cpu" || device.rfind("cuda", 0) == 0, {"device"},
        "device must be cpu or cuda[:N]");
  check(runtime.threads >= 0, {"threads"}, "threads must be >= 0 (0: all cores)");
  check(runtime.workers >= 1 && runtime.workers <= 256, {"workers"}, "workers must be in [1, 256]");
  check(runtime.prefetch >= 1, {"prefetch"}, "prefetch must be at least 1");
  check(runtime.log_every >= 1, {"log_every"}, "log_every must be at least 1");
  check(runtime.max_steps >= 0, {"max_steps"}, "max_steps must be >= 0");
  check(runtime.checkpoint_every >= 0, {"checkpoint_every"},
        "checkpoint_every must be >= 0 (0: off)");
  check(std::isfinite(runtime.checkpoint_minutes) && runtime.checkpoint_minutes >= 0,
        {"checkpoint_minutes"}, "checkpoint_minutes must be a number >= 0 (0: off)");
  check(runtime.eval_every >= 0, {"eval_every"}, "eval_every must be >= 0 (0: never)");
  check(runtime.eval_bank >= 0, {"eval_bank"},
        "eval_bank must be >= 0 (0: the whole training split)");
  check(runtime.max_skipped_steps >= 1, {"max_skipped_steps"},
        "max_skipped_steps must be at least 1");
  check(std::isfinite(distributed.dist_timeout) && distributed.dist_timeout >= 1, {"dist_timeout"},
        "dist_timeout must be at least 1 second");
}

DatasetConfig TrainConfig::dataset_config(Split split) const {
  DatasetConfig dc;
  dc.dataset = data.dataset;
  dc.data_dir = runtime.data_dir;
  dc.split = split;
  dc.channels = data.channels;
  dc.val_dir = runtime.val_dir;
  dc.holdout = data.holdout;
  dc.classes_file = data.classes;
  return dc;
}

Recipe TrainConfig::recipe(int64_t channels) const {
  return make_recipe(resolved_recipe(), static_cast<int>(channels),
                     static_cast<int>(data.image_size), data.recipe_overrides);
}

int64_t TrainConfig::crop_size(const Dataset& d) const {
  return d.is_vector() ? 0 : recipe(d.channels).view_a.crop.size;
}

EncoderConfig TrainConfig::encoder_config(const std::string& arch, int64_t in_channels,
                                          int64_t image_size, int64_t in_features) const {
  EncoderConfig e;
  e.arch = arch;
  e.in_channels = in_channels;
  e.image_size = image_size;
  e.in_features = in_features;
  e.width = model.width;
  e.stages = model.stages;
  e.final_conv = model.final_conv;
  e.encoder_mlp = model.encoder_mlp;
  e.patch_size = model.patch_size;
  e.depth = model.depth;
  e.class_token = model.class_token;
  e.mean_pool = model.mean_pool;
  e.drop_path = model.drop_path;
  return e;
}

VICRegModelConfig TrainConfig::model_config(const Dataset& d) const {
  const int64_t size = crop_size(d);
  VICRegModelConfig mc;
  mc.encoder = encoder_config(model.arch, d.channels, size, d.features());
  mc.encoder_b = encoder_config(model.arch_b.empty() ? model.arch : model.arch_b, d.channels, size,
                                d.features());
  mc.mlp = model.mlp;
  mc.expander_norm = model.expander_norm;
  mc.shared_weights = model.shared_weights;
  return mc;
}

OptimizerConfig TrainConfig::optimizer_config() const {
  OptimizerConfig oc;
  oc.kind = optim.optimizer;
  oc.weight_decay = optim.wd;
  oc.momentum = optim.momentum;
  oc.eta = optim.eta;
  oc.clip_lr = optim.clip_lr;
  return oc;
}

WarmupCosineSchedule TrainConfig::schedule(int64_t steps_per_epoch) const {
  WarmupCosineSchedule s;
  s.peak_lr = optim.optimizer == OptimizerKind::AdamW ? optim.base_lr
                                                      : scaled_lr(optim.base_lr, optim.batch_size);
  s.total_steps = optim.epochs * steps_per_epoch;
  s.warmup_steps = std::min<int64_t>(
      s.total_steps, static_cast<int64_t>(std::llround(optim.warmup_epochs * steps_per_epoch)));
  s.end_ratio = optim.end_lr_ratio;
  s.validate();
  return s;
}

VICRegLossOptions TrainConfig::loss_options() const {
  return VICRegLossOptions()
      .sim_coeff(loss.sim_coeff)
      .std_coeff(loss.std_coeff)
      .cov_coeff(loss.cov_coeff)
      .preset(loss.loss_preset);
}

LoaderOptions TrainConfig::loader_options(int rank, int world) const {
  LoaderOptions lo;
  lo.batch_size = optim.batch_size;
  lo.workers = runtime.workers;
  lo.prefetch = runtime.prefetch;
  lo.seed = seed;
  lo.shard_rank = rank;
  lo.shard_count = world;
  lo.skip_bad_images = runtime.skip_bad_images;
  return lo;
}

DistributedOptions TrainConfig::distributed_options() const {
  DistributedOptions o;
  o.backend = distributed.dist_backend;
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(distributed.dist_timeout * 1000));
  o.device = torch::Device(runtime.device);
  return o;
}

namespace {

/// Whether `key` is a setting that is a plain switch (a bool: --X / --no-X).
bool is_switch(const std::string& key) {
  bool found = false;
  TrainConfig c;
  for_each_setting(c, [&](const Setting& s, const auto& field) {
    if (key == s.key) found = std::is_same_v<std::decay_t<decltype(field)>, bool>;
  });
  return found;
}

}  // namespace

std::string with_flag_names(const Error& error) {
  std::string text = error.what();
  const auto is_word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  };
  for (const std::string& key : error.settings()) {
    const std::string flag = flag_name(key.c_str());
    std::string out;
    size_t i = 0;
    while (i < text.size()) {
      const size_t at = text.find(key, i);
      const size_t end = at == std::string::npos ? 0 : at + key.size();
      if (at == std::string::npos) {
        out += text.substr(i);
        break;
      }
      out += text.substr(i, at - i);
      if ((at > 0 && is_word(text[at - 1])) || (end < text.size() && is_word(text[end]))) {
        out += key;  // part of another word
      } else if (text.compare(end, 4, " off") == 0 && is_switch(key)) {
        out += "--no-" + flag.substr(2);  // a switch named off: its --no- flag
        i = end + 4;
        continue;
      } else {
        out += flag;
      }
      i = end;
    }
    text = out;
  }
  return text;
}

std::string flag_name(const char* key) {
  std::string flag = std::string("--") + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

// ---------------------------------------------------------------------------------------------
// JSON

namespace {

using nlohmann::json;

template <class T>
json value_json(const T& v) {
  if constexpr (std::is_enum_v<T>) {
    return to_string(v);
  } else {
    return v;
  }
}

template <class T>
void read_value(const json& j, T& out) {
  if constexpr (std::is_enum_v<T>) {
    if (!j.is_string()) throw UsageError("expected one of " + join_names(names_of<T>()));
    out = parse_name<T>(j.get<std::string>());
  } else if constexpr (std::is_same_v<T, std::string>) {
    out = j.is_null() ? std::string() : j.get<std::string>();  // vicreg 0.3 wrote null for arch_b
  } else if constexpr (std::is_same_v<T, bool>) {
    out = j.get<T>();
  } else {  // numbers: integers must be integers, and fit
    if (!j.is_number()) throw UsageError("expected a number");
    if constexpr (std::is_integral_v<T>) {
      if (!j.is_number_integer()) throw UsageError("expected an integer");
      if constexpr (std::is_unsigned_v<T>) {
        if (j.is_number_unsigned()) {
          out = j.get<T>();
        } else {
          const auto v = j.get<int64_t>();
          if (v < 0) throw UsageError("expected an integer >= 0");
          out = static_cast<T>(v);
        }
      } else {
        const auto v = j.get<int64_t>();
        if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
            v > static_cast<int64_t>(std::numeric_limits<T>::max())) {
          throw UsageError("integer out of range");
        }
        out = static_cast<T>(v);
      }
    } else {
      out = j.get<T>();
    }
  }
}

/// Sets the setting `key` (of `section` when given); false when there is none such.
bool set_setting(TrainConfig& config, const std::string& key, const Section* section,
                 const json& value) {
  bool found = false;
  for_each_setting(config, [&](const Setting& s, auto& field) {
    if (found || key != s.key || (section != nullptr && *section != s.section)) return;
    found = true;
    try {
      read_value(value, field);
      if constexpr (std::is_same_v<std::decay_t<decltype(field)>, std::string>) {
        if (s.choices != nullptr && !field.empty()) {
          const std::vector<std::string>& names = s.choices();
          if (std::find(names.begin(), names.end(), field) == names.end()) {
            throw UsageError("expected one of " + join_names(names));
          }
        }
      }
    } catch (const std::exception& e) {
      throw UsageError("config: key '" + key + "' has a wrong value (" + value.dump() +
                       "): " + e.what());
    }
  });
  return found;
}

}  // namespace

json to_json(const TrainConfig& config) {
  json j = json::object();
  for_each_setting(config, [&](const Setting& s, const auto& field) {
    if (s.section == Section::Seed) {
      j[s.key] = value_json(field);
    } else {
      j[to_string(s.section)][s.key] = value_json(field);
    }
  });
  return j;
}

void update_from_json(TrainConfig& config, const json& j) {
  if (!j.is_object()) throw UsageError("config: expected a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (set_setting(config, key, nullptr, value)) continue;  // a flat key
    bool is_section = false;
    for (const auto& [section, name] : name_table<Section>().entries) {
      if (name != key || section == Section::Seed) continue;
      is_section = true;
      if (!value.is_object()) {
        throw UsageError("config: section '" + key + "' must be a JSON object");
      }
      for (const auto& [k, v] : value.items()) {
        if (!set_setting(config, k, &section, v)) {
          throw UsageError("config: unknown key '" + k + "' in section '" + key + "'");
        }
      }
    }
    if (!is_section) throw UsageError("config: unknown key '" + key + "'");
  }
}

TrainConfig read_config_file(const std::string& path, TrainConfig config,
                             std::vector<std::string>* keys) {
  const std::string text = read_file(path, "--config file", 1 << 20);
  const json j = parse_json(text, "--config '" + path + "'");
  try {
    update_from_json(config, j);
  } catch (const UsageError& e) {
    throw UsageError("--config '" + path + "': " + e.what());
  }
  if (keys != nullptr) {
    const std::vector<std::string> named = setting_keys(j);
    keys->insert(keys->end(), named.begin(), named.end());
  }
  return config;
}

TrainConfig config_for_resume(const TrainConfig& stored, const TrainConfig& given) {
  TrainConfig merged = stored;
  merged.runtime = given.runtime;
  merged.distributed = given.distributed;
  if (merged.runtime.data_dir.empty()) merged.runtime.data_dir = stored.runtime.data_dir;
  if (merged.runtime.val_dir.empty()) merged.runtime.val_dir = stored.runtime.val_dir;
  return merged;
}

std::vector<std::string> resume_conflicts(const TrainConfig& stored, const TrainConfig& asked) {
  std::vector<std::string> out;
  if (stored.data.dataset != asked.data.dataset) {
    out.push_back("--dataset " + to_string(stored.data.dataset));
  }
  // An empty data_dir asks for none in particular (config_for_resume keeps the stored one).
  const std::string& asked_dir = asked.runtime.data_dir;
  if (!asked_dir.empty() && !stored.runtime.data_dir.empty() &&
      !same_path(stored.runtime.data_dir, asked_dir)) {
    out.push_back("--data-dir " + stored.runtime.data_dir);
  }
  TrainConfig a = stored, b = stored;
  b.model = asked.model;
  a.model.init_backbone = b.model.init_backbone;  // a new run's start only
  for (const std::string& d : differing_settings(a, b)) out.push_back(d);
  return out;
}

std::vector<std::string> differing_settings(const TrainConfig& a, const TrainConfig& b,
                                            const std::vector<std::string>* only) {
  std::vector<json> values;
  for_each_setting(b,
                   [&](const Setting&, const auto& field) { values.push_back(value_json(field)); });
  std::vector<std::string> out;
  size_t k = 0;
  for_each_setting(a, [&](const Setting& s, const auto& field) {
    const json v = value_json(field);
    const bool asked =
        only == nullptr || std::find(only->begin(), only->end(), s.key) != only->end();
    if (v != values[k++] && asked && !decided_by_command_line(s.section)) {
      out.push_back(flag_name(s.key) + " " + v.dump());
    }
  });
  return out;
}

std::vector<std::string> setting_keys(const json& j) {
  std::vector<std::string> out;
  if (!j.is_object()) return out;
  for (const auto& [key, value] : j.items()) {
    if (value.is_object()) {
      for (const auto& [k, v] : value.items()) out.push_back(k);
    } else {
      out.push_back(key);
    }
  }
  return out;
}

}  // namespace vicreg
