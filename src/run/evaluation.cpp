#include "vicreg/run/evaluation.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/models/registry.h"
#include "vicreg/run/artifacts.h"
#include "vicreg/runtime.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>

namespace vicreg {

template <>
const NameTable<Baseline>& name_table<Baseline>() {
  static const NameTable<Baseline> t{
      "--baseline", {{Baseline::Pixels, "pixels"}, {Baseline::RandomInit, "random-init"}}};
  return t;
}

namespace {

std::string input_text(bool vector, int64_t features, int64_t channels) {
  return vector ? std::to_string(features) + " features" : std::to_string(channels) + " channels";
}

/// The expander's output for representations y: [N, D] float32 on the CPU.
torch::Tensor project(Subject& s, const torch::Tensor& y) {
  return compute_embeddings(*s.projector, y, s.device, s.precision.precision);
}

nlohmann::json stats_json(const CollapseStats& c) {
  return {{"std_mean", c.std_mean},
          {"std_min", c.std_min},
          {"covariance", c.covariance},
          {"rankme", c.rankme},
          {"dim", c.dim}};
}

/// Embeddings need the expander, which only a checkpoint has.
void require_expander(const Subject& s) {
  if (!s.projector) {
    throw UsageError(
        "--embedding needs the expander: give --checkpoint EXP_DIR/checkpoint.pt "
        "instead of --backbone");
  }
}

/// The data settings of `spec` over `c` (SubjectSpec's rules).
void apply_data_settings(const SubjectSpec& spec, TrainConfig& c) {
  if (spec.dataset && *spec.dataset != c.data.dataset) {
    c.data = DataConfig{};
    c.data.dataset = *spec.dataset;
    c.runtime.data_dir.clear();
    c.runtime.val_dir.clear();
  }
  if (spec.recipe) c.data.recipe = *spec.recipe;
  if (spec.image_size) c.data.image_size = *spec.image_size;
  if (spec.channels) c.data.channels = *spec.channels;
  if (spec.classes) c.data.classes = *spec.classes;
  if (!spec.data_dir.empty()) c.runtime.data_dir = spec.data_dir;
  // The command line's held-out split replaces the run's.
  if (spec.holdout) {
    c.data.holdout = *spec.holdout;
    if (*spec.holdout > 0) c.runtime.val_dir.clear();
  }
  if (!spec.val_dir.empty()) {
    c.runtime.val_dir = spec.val_dir;
    if (!spec.holdout) c.data.holdout = 0;
  }
  c.validate();
}

/// "3 channels" / "12 features" of a split.
std::string shape_text(const Dataset& d) {
  return input_text(d.is_vector(), d.features(), d.channels);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string data_dir_of(const TrainConfig& c) {
  return c.runtime.data_dir.empty() ? default_data_dir(c.data.dataset) : c.runtime.data_dir;
}

/// "--holdout 0.2": a fraction as the flag takes it.
std::string holdout_text(double fraction) {
  std::ostringstream o;
  o << "--holdout " << fraction;
  return o.str();
}

/// The held-out split `used` measures on, and whether the pretraining of a run of `recorded`
/// saw it (Subject::held_out). Throws UsageError for a split it saw, unless `declared_unseen`.
nlohmann::json held_out_record(const TrainConfig& recorded, const TrainConfig& used, bool from_run,
                               bool declared_unseen, const std::string& subject) {
  nlohmann::json h;
  if (used.data.holdout > 0) {
    h = {{"kind", "holdout"}, {"fraction", used.data.holdout}};
  } else if (!used.runtime.val_dir.empty()) {
    h = {{"kind", "val_dir"}, {"path", used.runtime.val_dir}};
  } else {
    h = {{"kind", "files"}};
  }
  const std::string data = data_dir_of(used);
  const bool same_data = from_run && recorded.data.dataset == used.data.dataset && !data.empty() &&
                         same_path(data_dir_of(recorded), data);
  if (!same_data) {
    h["seen_in_pretraining"] = nullptr;
    return h;
  }
  const double run_holdout = recorded.data.holdout;
  const bool other_holdout = used.data.holdout > 0 && used.data.holdout != run_holdout;
  const bool training_folder =
      !used.runtime.val_dir.empty() && same_path(used.runtime.val_dir, data);
  const bool seen = other_holdout || training_folder;
  h["seen_in_pretraining"] = seen;
  if (!seen) return h;
  if (declared_unseen) {
    h["declared_unseen"] = true;
    return h;
  }
  const std::string what =
      other_holdout ? holdout_text(used.data.holdout) : "--val-dir '" + used.runtime.val_dir + "'";
  const std::string run_split = run_holdout > 0 ? "held out " + holdout_text(run_holdout) + " only"
                                                : "held out nothing of it (--holdout 0)";
  throw UsageError(what + " would measure on samples of '" + data + "' that '" + subject +
                   "' was pretrained on: its run " + run_split +
                   ". Pretrain with --holdout F to keep a part of the data from pretraining and "
                   "evaluate on it (leave --holdout out: the run's own split is used), or give "
                   "--pretrained-elsewhere if these weights never saw these data");
}

}  // namespace

void check_recorded_paths(const TrainConfig& recorded, const TrainConfig& used,
                          const std::string& run) {
  namespace fs = std::filesystem;
  struct Path {
    const std::string& recorded;
    const std::string& used;
    const char* what;
    const char* flag;
  };
  const Path paths[] = {
      {recorded.runtime.data_dir, used.runtime.data_dir, "data folder", "--data-dir"},
      {recorded.runtime.val_dir, used.runtime.val_dir, "held-out split", "--val-dir"},
      {recorded.data.classes, used.data.classes, "class list", "--classes"},
  };
  for (const Path& p : paths) {
    // The data set's own default speaks for itself (load_dataset says how to install it).
    if (p.used.empty() || p.used != p.recorded || p.used == default_data_dir(used.data.dataset)) {
      continue;
    }
    std::error_code ec;
    if (!fs::exists(p.used, ec)) {
      throw FormatError(std::string("the ") + p.what + " '" + p.used +
                        "' recorded in the settings of '" + run +
                        "' does not exist (moved, deleted, or relative to another folder): give " +
                        p.flag + " where it is now");
    }
  }
}

void write_sample_list(const std::string& path, const Dataset& data) {
  std::ostringstream out;
  out << "row\tsample\tlabel\tclass\n";
  const torch::Tensor rows =
      data.rows.defined() ? data.rows.contiguous() : torch::arange(data.size(), torch::kLong);
  const torch::Tensor labels =
      data.labels.defined() ? data.labels.to(torch::kLong).contiguous() : torch::Tensor();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* y = labels.defined() ? labels.data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; i < data.size(); ++i) {
    out << i << '\t';
    if (!data.files.empty()) {
      out << data.files[static_cast<size_t>(i)];
    } else {
      out << r[i];
    }
    if (y != nullptr) {
      const int64_t l = y[i];
      const bool named = l >= 0 && l < static_cast<int64_t>(data.classes.size());
      out << '\t' << l << '\t' << (named ? data.classes[static_cast<size_t>(l)] : "");
    } else {
      out << "\t\t";
    }
    out << '\n';
  }
  write_file_atomically(path, out.str());
}

Subject load_subject(const SubjectSpec& spec, const std::vector<Split>& splits) {
  const int given = !spec.backbone.empty() + !spec.checkpoint.empty() + spec.baseline.has_value() +
                    !spec.init_backbone.empty();
  if (given != 1) {
    throw UsageError(
        "give exactly one of --backbone (a run's backbone.pt), --checkpoint (its "
        "checkpoint.pt), --init-backbone FILE or --baseline pixels|random-init");
  }
  if (spec.config && !spec.baseline && spec.init_backbone.empty()) {
    throw UsageError(
        "--config applies to --baseline and --init-backbone only (a backbone or "
        "checkpoint carries its own settings)");
  }
  if (splits.empty()) throw UsageError("load_subject: no split asked for");
  Subject s;
  s.device = usable_device(spec.device);
  Backbone b;
  if (!spec.backbone.empty()) {
    b = read_backbone(spec.backbone);
    s.config = b.config;
    s.name = spec.backbone;
  } else if (!spec.checkpoint.empty()) {
    s.config = read_checkpoint_config(spec.checkpoint);
    s.name = spec.checkpoint;
  } else {
    s.config = spec.config.value_or(TrainConfig{});
    s.name = spec.baseline ? "baseline:" + to_string(*spec.baseline) : spec.init_backbone;
  }
  // Foreign weights carry no data settings: the default run's data set is a guess that a
  // --data-dir of other data would contradict.
  const bool foreign = !spec.backbone.empty() && b.image_size == 0;
  if (foreign && !spec.dataset && !spec.data_dir.empty()) {
    throw UsageError("'" + spec.backbone +
                     "' holds weights without a run's settings: name the data with --dataset (" +
                     join_names(names_of<DatasetKind>()) +
                     ") beside --data-dir, and --image-size for crops other than its recipe's");
  }
  // A run's own backbone.pt or checkpoint.pt carries the settings it was pretrained with.
  s.from_run = !spec.checkpoint.empty() ||
               (!spec.backbone.empty() && (b.image_size > 0 || b.in_features > 0));
  const TrainConfig recorded = s.config;
  apply_data_settings(spec, s.config);
  if (s.from_run) check_recorded_paths(recorded, s.config, s.name);
  if (std::find(splits.begin(), splits.end(), Split::Test) != splits.end()) {
    s.held_out = held_out_record(recorded, s.config, s.from_run, spec.pretrained_elsewhere, s.name);
  }
  for (const Split split : splits) {
    (split == Split::Train ? s.train : s.test) = load_dataset(s.config.dataset_config(split));
  }
  const Dataset& shape = splits.front() == Split::Train ? s.train : s.test;
  if (splits.size() > 1 && (shape_text(s.train) != shape_text(s.test))) {
    throw FormatError("the held-out split '" + s.test.source + "' has " + shape_text(s.test) +
                      ", the training split '" + s.train.source + "' " + shape_text(s.train) +
                      ": they must be of the same data");
  }
  const VICRegModelConfig mc = s.config.model_config(shape);
  int64_t image_size = mc.encoder.image_size;
  if (!spec.backbone.empty()) {
    const bool vector = shape.is_vector();
    if (vector ? shape.features() != b.in_features : shape.channels != b.in_channels) {
      throw UsageError("backbone '" + spec.backbone + "' takes " +
                       (vector ? "vectors of " : "images of ") +
                       input_text(vector, b.in_features, b.in_channels) + ", the data have " +
                       input_text(vector, shape.features(), shape.channels) +
                       " (for other data, give --init-backbone FILE with --config SETTINGS.json)");
    }
    s.encoder = b.encoder;
    // The crop size it was trained at (0: not recorded, foreign weights), unless asked otherwise.
    if (b.image_size > 0 && !spec.image_size) image_size = b.image_size;
  } else if (!spec.checkpoint.empty()) {
    const TrainedModel m = read_model(spec.checkpoint, shape);
    s.encoder = m.model->backbone;
    s.projector = m.model->projector;
  } else if (!spec.init_backbone.empty()) {
    s.encoder = VICReg(mc)->backbone;  // the model of the config, weights from the file
    const std::string source = "--init-backbone '" + spec.init_backbone + "'";
    load_encoder_weights(
        *s.encoder, weights_in_own_names(read_weights(spec.init_backbone).tensors, source), source);
  } else if (*spec.baseline == Baseline::RandomInit) {
    torch::manual_seed(s.config.seed);  // the run's model before its first step
    s.encoder = VICReg(mc)->backbone;
  } else {
    const int64_t dim =
        shape.is_vector() ? shape.features() : shape.channels * image_size * image_size;
    s.encoder = std::make_shared<PixelEncoderImpl>(dim);
  }
  if (!shape.is_vector()) {
    s.transform = eval_transform_for(s.config.resolved_recipe(), static_cast<int>(shape.channels),
                                     image_size);
  }
  s.encoder->to(s.device);
  s.encoder->eval();
  // A run's files record the numerics it was trained in; auto evaluates in them.
  const bool trained_here = !spec.backbone.empty() || !spec.checkpoint.empty();
  NumericsRequest request;
  request.precision = spec.precision;
  request.channels_last = spec.channels_last;
  request.bf16_conv = spec.bf16_conv;
  if (trained_here) {
    request.trained_precision = s.config.runtime.precision;
    request.trained_channels_last = s.config.runtime.channels_last;
    request.trained_bf16_conv = s.config.runtime.bf16_conv;
  }
  request.convolutional =
      !shape.is_vector() && !spec.baseline.has_value() && s.config.convolutional();
  const Numerics numerics = resolve_numerics(request, s.device);
  s.precision = numerics.precision;
  if (!s.precision.warning.empty()) {
    std::fprintf(stderr, "vicreg: warning: %s\n", s.precision.warning.c_str());
  }
  if (numerics.bf16_conv != CpuBf16Conv::Auto) s.bf16_conv = to_string(numerics.bf16_conv);
  if (numerics.channels_last) to_channels_last(*s.encoder);
  if (s.projector) {
    s.projector->to(s.device);
    s.projector->eval();
  }
  return s;
}

torch::Tensor subject_features(Subject& s, const Dataset& data, bool embedding) {
  if (embedding) require_expander(s);
  const torch::Tensor y =
      compute_representations(*s.encoder, data, s.transform, 512, s.device, s.precision.precision);
  return embedding ? project(s, y) : y;
}

nlohmann::json evaluate_subject(Subject& s, const EvalRequest& r) {
  const bool finetune = r.protocol == Protocol::Finetune;
  if (r.embedding && (finetune || r.augment)) {
    throw UsageError(
        "--embedding evaluates fixed embeddings: use it with --protocol knn or "
        "linear without --augment");
  }
  if (r.embedding) require_expander(s);
  if (!r.train_subset.empty() && r.label_fraction) {
    throw UsageError(
        "--train-subset and --label-fraction both choose the labelled training images: give one");
  }
  const auto t0 = std::chrono::steady_clock::now();
  // The training split, or the images of --train-subset.
  Dataset subset;
  if (!r.train_subset.empty()) {
    subset = s.train.subset(subset_by_file_names(s.train, r.train_subset));
    subset.source += " (the " + std::to_string(subset.size()) + " images of --train-subset '" +
                     r.train_subset + "')";
  }
  const Dataset& train_split = r.train_subset.empty() ? s.train : subset;
  const torch::Tensor ytr = train_split.require_labels(), yte = s.test.require_labels();
  if (ytr.min().item<int64_t>() < 0 || yte.min().item<int64_t>() < 0) {
    throw UsageError("the labels of '" + to_string(s.config.data.dataset) + "' must be >= 0");
  }
  const int64_t classes = !train_split.classes.empty()
                              ? static_cast<int64_t>(train_split.classes.size())
                              : std::max(ytr.max().item<int64_t>(), yte.max().item<int64_t>()) + 1;
  if (ytr.numel() == 0 || ytr.min().item<int64_t>() == ytr.max().item<int64_t>()) {
    throw UsageError("the training split (" + train_split.source +
                     ") has one class: evaluation needs at least two (a classifier of one class "
                     "is always right)");
  }
  const bool image_data = !train_split.is_vector();
  Accuracy acc;
  nlohmann::json settings, diagnostics;
  double feature_s = 0;
  int64_t train_used = train_split.size();
  // Collapse diagnostics of the test split's representations and (with an expander) embeddings.
  const auto diagnose = [&](const torch::Tensor& test_y) {
    diagnostics["representation"] = stats_json(collapse_stats(test_y));
    if (s.projector) diagnostics["embedding"] = stats_json(collapse_stats(project(s, test_y)));
  };
  if (finetune || r.augment) {
    ClassifierOptions co =
        finetune ? ProtocolDefaults::finetune() : ProtocolDefaults::linear_augmented();
    co.batch_size = r.batch_size;
    co.seed = r.seed;
    co.epochs = r.epochs.value_or(co.epochs);
    co.lr_head = r.lr.value_or(co.lr_head);
    if (finetune) co.lr_backbone = r.lr_backbone.value_or(co.lr_backbone);
    co.weight_decay = r.wd.value_or(co.weight_decay);
    co.precision = s.precision.precision;
    const double fraction = r.label_fraction.value_or(0.1);
    Dataset fraction_subset;
    if (finetune && r.train_subset.empty()) {
      fraction_subset = train_split.subset(balanced_subset(ytr, fraction, r.seed));
      train_used = fraction_subset.size();
    }
    const Dataset& train = fraction_subset.size() > 0 ? fraction_subset : train_split;
    const ViewConfig augment =
        image_data
            ? classifier_augmentation(s.config.resolved_recipe(),
                                      static_cast<int>(train_split.channels), s.transform.size)
            : ViewConfig{};
    diagnose(subject_features(s, s.test, false));  // of the model as given, before any training
    acc = train_classifier(*s.encoder, train, s.test, augment, s.transform, co, s.device);
    settings = {{"epochs", co.epochs},   {"batch_size", co.batch_size},
                {"lr_head", co.lr_head}, {"lr_backbone", co.lr_backbone},
                {"wd", co.weight_decay}, {"augment", image_data},
                {"seed", co.seed}};
    if (finetune && r.train_subset.empty()) settings["label_fraction"] = fraction;
  } else {
    const torch::Tensor ftr = subject_features(s, train_split, r.embedding);
    const torch::Tensor rep_te = subject_features(s, s.test, false);
    const torch::Tensor fte = r.embedding ? project(s, rep_te) : rep_te;
    feature_s = seconds_since(t0);
    if (r.protocol == Protocol::Knn) {
      const int64_t labels = std::max(ytr.max().item<int64_t>(), yte.max().item<int64_t>()) + 1;
      acc = accuracy(knn_scores(ftr, ytr, fte, r.knn.k, r.knn.temperature, labels), yte);
      settings = {{"k", r.knn.k}, {"temperature", r.knn.temperature}};
    } else {
      LinearProbeOptions o = ProtocolDefaults::linear();
      o.epochs = r.epochs.value_or(o.epochs);
      o.batch_size = r.batch_size;
      o.lr = r.lr.value_or(o.lr);
      o.weight_decay = r.wd.value_or(o.weight_decay);
      o.seed = r.seed;
      acc = linear_probe(ftr, ytr, fte, yte, o);
      settings = {{"epochs", o.epochs},   {"batch_size", o.batch_size},   {"lr", o.lr},
                  {"wd", o.weight_decay}, {"standardize", o.standardize}, {"augment", false},
                  {"seed", o.seed}};
    }
    diagnose(rep_te);
  }
  if (!r.train_subset.empty()) settings["train_subset"] = r.train_subset;
  nlohmann::json test = {{"source", s.test.source}, {"samples", s.test.size()}};
  if (!s.held_out.is_null()) test["held_out"] = s.held_out;
  const nlohmann::json splits = {
      {"train", {{"source", train_split.source}, {"samples", train_used}}},
      {"test", test},
      {"classes", classes}};
  nlohmann::json out = {{"protocol", to_string(r.protocol)},
                        {"top1", acc.top1},
                        {"features", r.embedding ? "embedding" : "representation"},
                        {"subject", s.name},
                        {"dataset", to_string(s.config.data.dataset)},
                        {"settings", settings},
                        {"diagnostics", diagnostics},
                        {"rankme", diagnostics["representation"]["rankme"]},
                        {"seconds", seconds_since(t0)},
                        {"feature_seconds", feature_s},
                        {"threads", at::get_num_threads()},
                        {"precision", to_string(s.precision.precision)},
                        {"train_samples", train_used},
                        {"test_samples", s.test.size()},
                        {"splits", splits}};
  if (classes > 5) out["top5"] = acc.top5;  // with 5 classes or fewer it is 100 %
  if (!s.bf16_conv.empty()) out["bf16_conv"] = s.bf16_conv;
  return out;
}

}  // namespace vicreg
