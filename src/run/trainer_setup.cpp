// The Trainer's construction: settings, resuming, numerics, data, model, optimizer, probe and
// process group (run/trainer.h).
#include "vicreg/run/trainer.h"

#include "vicreg/error.h"
#include "vicreg/evaluate.h"
#include "vicreg/io/files.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/io/tensorboard.h"
#include "vicreg/models/registry.h"
#include "vicreg/runtime.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>

namespace vicreg {

namespace fs = std::filesystem;

namespace {

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += " " + s;
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction

Trainer::Trainer(TrainConfig config, std::string resume, std::shared_ptr<ProcessGroup> group,
                 std::optional<std::vector<std::string>> given, ProgressStyle notes)
    : notes_(notes),
      config_(std::move(config)),
      given_keys_(std::move(given)),
      device_(torch::kCPU),
      group_(std::move(group)) {
  config_.validate();
  config_.resolve_paths();
  given_ = config_;
  if (group_ && group_->world_size() > 1) {
    rank_ = group_->rank();
    world_ = group_->world_size();
  } else {
    group_ = nullptr;
  }
  device_ = usable_device(config_.runtime.device);
  set_threads(config_.runtime.threads);

  resume_config(resume);
  choose_numerics();
  load_data();
  ProgressReporter(notes_, is_main()).note(plan_line());
  choose_memory_format();
  make_loader();
  build_model(/*fresh=*/resume_.empty());
  build_optimizer();
  build_probe();
  if (!resume_.empty()) {
    const CheckpointState s =
        read_checkpoint(resume_, *model_, *optimizer_, probe_ ? probe_.get() : nullptr);
    if (probe_ && !s.online_probe && is_main()) {
      std::fprintf(stderr,
                   "vicreg train: the checkpoint has no online probe: it starts from scratch\n");
    }
    step_ = s.step;
    elapsed_before_ = s.elapsed_s;
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(s.rng_state);
    if (scaler_.enabled() && s.loss_scaler.defined()) {
      scaler_.load_state(s.loss_scaler);
      skipped_in_a_row_ = s.skipped_in_a_row;
    }
    model_->to(device_);
    if (probe_) probe_->to(device_);
  }
  join_group();
}

void Trainer::choose_numerics() {
  RuntimeConfig& r = config_.runtime;
  NumericsRequest request;
  request.precision = r.precision;
  request.trained_precision = trained_precision_;
  request.channels_last = r.channels_last;
  request.trained_channels_last = trained_channels_last_;
  request.bf16_conv = r.bf16_conv;
  request.trained_bf16_conv = trained_bf16_conv_;
  request.convolutional = config_.convolutional();
  const Numerics numerics = resolve_numerics(request, device_);
  precision_ = numerics.precision;
  if (!precision_.warning.empty() && is_main()) {
    std::fprintf(stderr, "vicreg train: warning: %s\n", precision_.warning.c_str());
  }
  if (numerics.bf16_conv != CpuBf16Conv::Auto) r.bf16_conv = numerics.bf16_conv;
  channels_last_ = numerics.channels_last;
  const bool convolutional = request.convolutional;
  // CPUs of one model were measured to differ on which format is faster (docs/decisions.md):
  // a new run measures it (choose_memory_format) rather than going by the CPU.
  measure_memory_format_ = convolutional && device_.is_cpu() && r.channels_last == Toggle::Auto &&
                           trained_channels_last_ == Toggle::Auto;
  const bool scaling = r.loss_scale == Toggle::On ||
                       (r.loss_scale == Toggle::Auto && precision_.precision == Precision::Fp16);
  scaler_ = GradScaler(scaling);
  // config.json (and the checkpoint) record what was chosen: a resumed run keeps it.
  r.precision = precision_.precision;
  r.channels_last = channels_last_ ? Toggle::On : Toggle::Off;
}

void Trainer::resume_config(const std::string& resume) {
  const ExperimentDir dir{config_.runtime.exp_dir};
  resume_ = resume;
  if (resume_.empty() && fs::is_directory(dir.root)) {
    // A run goes on from its own directory: hold it before reading the checkpoint (and going back
    // to the previous one when the latest is damaged, which renames it).
    if (is_main()) lock_.emplace(dir.root, "experiment directory");
    std::string warning;
    resume_ = recover_checkpoint(dir.checkpoint(), &warning);
    if (!warning.empty() && is_main()) {
      std::fprintf(stderr, "vicreg train: warning: %s\n", warning.c_str());
    }
  }
  if (resume_.empty()) {
    if (config_.runtime.data_dir.empty()) {
      config_.runtime.data_dir = default_data_dir(config_.data.dataset);
    }
    return;
  }
  // The checkpoint decides what shapes the run; the command line where and how it runs
  // (config_for_resume: by section).
  const TrainConfig stored = read_checkpoint_config(resume_);
  // A run found in the directory goes on only if it is the run asked for (an explicit --resume
  // goes on with the checkpoint's settings).
  const std::vector<std::string> conflicts =
      resume.empty() ? resume_conflicts(stored, given_) : std::vector<std::string>{};
  if (!conflicts.empty()) {
    throw UsageError("the experiment directory '" + dir.root + "' holds a run of other " +
                         "settings than this command's (it has" + joined(conflicts) + "): give " +
                         "another exp_dir for a new run, or resume " + resume_ +
                         " to continue that run with its own settings",
                     {"exp_dir", "resume"});
  }
  trained_precision_ = stored.runtime.precision;
  trained_channels_last_ = stored.runtime.channels_last;
  trained_bf16_conv_ = stored.runtime.bf16_conv;
  config_ = config_for_resume(stored, given_);
  if (config_.runtime.data_dir.empty()) {
    config_.runtime.data_dir = default_data_dir(config_.data.dataset);
  }
  // Left to the recipe (its crop size), the settings are the run's whatever it recorded.
  TrainConfig asked = given_;
  if (asked.data.recipe.empty()) asked.data.recipe = stored.data.recipe;
  if (asked.data.image_size == 0) asked.data.image_size = stored.data.image_size;
  const std::vector<std::string> ignored =
      differing_settings(asked, config_, given_keys_ ? &*given_keys_ : nullptr);
  if (!ignored.empty() && is_main()) {
    std::fprintf(stderr, "vicreg train: resuming from '%s', whose settings are kept; ignoring%s\n",
                 resume_.c_str(), joined(ignored).c_str());
  }
}

Recipe Trainer::recipe() const { return config_.recipe(data_->channels); }

void Trainer::load_data() {
  data_ = std::make_shared<Dataset>(load_dataset(config_.dataset_config(Split::Train)));
  const int64_t batch = config_.optim.batch_size;
  if (batch > data_->size()) {
    throw UsageError("batch_size " + std::to_string(batch) + " is larger than the data set ('" +
                         data_->name + "', " + std::to_string(data_->size()) +
                         " samples): give a batch_size of at most " +
                         std::to_string(data_->size()) + ", or more data",
                     {"batch_size"});
  }
  if (world_ > 1 && batch / world_ < 2) {
    throw UsageError("batch_size " + std::to_string(batch) + " over " + std::to_string(world_) +
                         " processes leaves fewer than 2 rows per process: use at least " +
                         std::to_string(2 * world_),
                     {"batch_size"});
  }
  const bool labelled = data_->labels.defined();
  if (config_.runtime.online_probe == Toggle::On && !labelled) {
    throw UsageError("online_probe on needs labels, and " + data_->source +
                         " has none: give labelled data, or online_probe off",
                     {"online_probe"});
  }
  if (labelled && is_main() && data_->size() > 0 &&
      data_->labels.min().item<int64_t>() == data_->labels.max().item<int64_t>()) {
    std::fprintf(stderr,
                 "vicreg train: warning: every sample of %s has the same label: pretraining "
                 "needs no labels, but evaluation needs at least two classes\n",
                 data_->source.c_str());
  }
  const std::string& init = config_.model.init_backbone;
  if (resume_.empty() && !init.empty() && !fs::is_regular_file(init)) {
    throw FormatError("init_backbone '" + init + "': no such file", {"init_backbone"});
  }
  if (!data_->is_vector()) {
    const Recipe views = recipe();
    image_size_ = views.view_a.crop.size;
    if (resume_.empty()) {
      // A new run records the recipe and crop size it resolved and every view setting, so that
      // it resumes with them even if the recipe's values change (docs/decisions.md).
      config_.data.recipe_overrides = recipe_override_spec(views);
      config_.data.recipe = config_.resolved_recipe();
      config_.data.image_size = image_size_;
      const int64_t side = is_main() ? typical_image_side(*data_) : 0;
      if (side > 0 && image_size_ > 2 * side) {
        std::fprintf(stderr,
                     "vicreg train: warning: %lld px crops upscale the images (median shorter "
                     "side %lld px) %.1fx: give --image-size %lld (or a recipe of that size) "
                     "unless that is meant\n",
                     static_cast<long long>(image_size_), static_cast<long long>(side),
                     static_cast<double>(image_size_) / side, static_cast<long long>(side));
      }
    }
  }
  // The probe's held-out split, checked before the first step rather than at the first probe.
  if (config_.runtime.eval_every > 0) load_test_data();
}

std::string Trainer::plan_line() const {
  const ModelConfig& m = config_.model;
  std::string model = m.arch;
  if (!m.arch_b.empty() && !m.shared_weights) model += " + " + m.arch_b;
  const std::string crops = data_->is_vector()
                                ? ""
                                : ", " + std::to_string(image_size_) + " px crops (recipe " +
                                      config_.resolved_recipe() + ")";
  const std::string classes =
      data_->classes.size() > 1 ? ", " + std::to_string(data_->classes.size()) + " classes" : "";
  return "vicreg train: " + to_string(config_.data.dataset) + ", " + std::to_string(data_->size()) +
         " samples (" + data_->source + ")" + classes + "; " + model + crops + "; precision " +
         to_string(precision_.precision) + " (" + precision_.reason + ")" +
         (precision_.precision == Precision::Bf16 && device_.is_cpu() && config_.convolutional()
              ? ", convolutions " + to_string(cpu_bf16_conv())
              : "") +
         (scaler_.enabled() ? ", loss scaling" : "") + "; " + describe_runtime();
}

void Trainer::make_loader() {
  std::shared_ptr<TwoViewTransform> transform;
  if (data_->is_vector()) {
    transform = std::make_shared<VectorTwoViewTransform>(VectorAugment{});
  } else {
    transform = std::make_shared<ImageTwoViewTransform>(recipe(), channels_last_);
  }
  loader_ =
      std::make_unique<TwoViewLoader>(data_, transform, config_.loader_options(rank_, world_));
  schedule_ = config_.schedule(loader_->batches_per_epoch());
  // With loss scaling, non-finite embeddings (an fp16 overflow) make a skipped step, not an error.
  objective_ = config_.objective(/*check_finite=*/!scaler_.enabled());
}

void Trainer::build_model(bool fresh) {
  torch::manual_seed(config_.seed);
  model_ = VICReg(config_.model_config(*data_));
  if (fresh && !config_.model.init_backbone.empty()) init_backbone();
  model_->to(device_);
  // Before the optimizer exists and before a checkpoint is copied in (copy_ keeps the format).
  if (channels_last_) to_channels_last(*model_);
}

void Trainer::build_optimizer() {
  std::vector<torch::Tensor> no_decay = model_->backbone->no_weight_decay();
  if (model_->backbone_b) {
    for (auto& t : model_->backbone_b->no_weight_decay()) no_decay.push_back(t);
  }
  optimizer_ = make_optimizer(model_->parameters(), config_.optimizer_config(), no_decay);
}

void Trainer::build_probe() {
  const Toggle t = config_.runtime.online_probe;
  const bool labelled = data_->labels.defined();  // on without labels: refused by load_data
  if (t == Toggle::Off || !labelled) return;
  // Its own draws: the global generator, which the model's initialisation has used, is left
  // where it was.
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  const torch::Tensor state = generator.get_state();
  generator.set_current_seed(config_.seed + 0x9E3779B9u);
  const int64_t classes = std::max<int64_t>(data_->labels.max().item<int64_t>() + 1, 2);
  probe_ = OnlineProbe(model_->backbone->output_dim(), classes);
  generator.set_state(state);
  probe_->to(device_);
}

void Trainer::join_group() {
  if (!group_) return;
  // Every rank must have resumed from the same step (a checkpoint on a filesystem every host
  // sees), or their optimizers and data would part ways.
  std::vector<torch::Tensor> step0 = {torch::full(
      {1}, static_cast<double>(step_), torch::TensorOptions(device_).dtype(torch::kDouble))};
  group_->broadcast(step0, 0);
  const auto main_step = static_cast<int64_t>(step0[0].item<double>());
  if (main_step != step_) {
    throw UsageError("rank " + std::to_string(rank_) + " starts at step " + std::to_string(step_) +
                         " but rank 0 resumes at step " + std::to_string(main_step) + " from " +
                         ExperimentDir{config_.runtime.exp_dir}.checkpoint() +
                         ": every rank must read the same checkpoint (put exp_dir on a filesystem "
                         "all hosts share, or copy the file)",
                     {"exp_dir"});
  }
  // Same seed, same checkpoint: the ranks agree already; the broadcast makes sure of it.
  if (config_.distributed.sync_bn) convert_sync_batchnorm(*model_, group_);
  broadcast_module(*model_, *group_);
}

void Trainer::init_backbone() {
  const std::string& path = config_.model.init_backbone;
  const std::string source = "--init-backbone '" + path + "'";
  const NamedTensors weights = weights_in_own_names(read_weights(path).tensors, source);
  WeightsLoadReport r = load_encoder_weights(*model_->backbone, weights, source);
  // Without shared weights, the second branch starts from the same weights when it has the same
  // architecture.
  if (model_->backbone_b && model_->config.encoder_b.arch == model_->config.encoder.arch) {
    load_encoder_weights(*model_->backbone_b, weights, source);
  }
  if (!is_main()) return;
  std::string skipped;
  for (const auto& k : r.head) skipped += " " + k;
  std::fprintf(stderr, "vicreg train: backbone initialised from %s: %lld tensors%s%s%s\n",
               path.c_str(), static_cast<long long>(r.loaded),
               r.prefix.empty() ? "" : (" under '" + r.prefix + "'").c_str(),
               skipped.empty() ? "" : ("; skipped the classifier" + skipped).c_str(),
               r.other ? ("; ignored " + std::to_string(r.other) + " other entries").c_str() : "");
}

}  // namespace vicreg
