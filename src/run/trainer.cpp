#include "vicreg/run/trainer.h"

#include "vicreg/error.h"
#include "vicreg/evaluate.h"
#include "vicreg/io/files.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/io/tensorboard.h"
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

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

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
  precision_ = resolve_precision(r.precision, device_, trained_precision_);
  if (!precision_.warning.empty() && is_main()) {
    std::fprintf(stderr, "vicreg train: warning: %s\n", precision_.warning.c_str());
  }
  const bool images = config_.data.dataset != DatasetKind::Npy;
  const bool convolutional = images && is_convolutional(config_.model.arch) &&
                             (config_.model.shared_weights || !config_.model.arch_b ||
                              is_convolutional(*config_.model.arch_b));
  if (device_.is_cpu() && precision_.precision == Precision::Bf16 && convolutional) {
    r.bf16_conv = apply_cpu_bf16_conv(r.bf16_conv, trained_bf16_conv_);
  }
  channels_last_ = use_channels_last(r.channels_last, convolutional, device_, precision_.precision,
                                     trained_channels_last_);
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
                     "another --exp-dir for a new run, or --resume " + resume_ +
                     " to continue that run with its own settings");
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
    throw UsageError("--batch-size " + std::to_string(batch) + " is larger than the data set ('" +
                     data_->name + "', " + std::to_string(data_->size()) +
                     " samples): give a --batch-size of at most " + std::to_string(data_->size()) +
                     ", or more data");
  }
  if (world_ > 1 && batch / world_ < 2) {
    throw UsageError("--batch-size " + std::to_string(batch) + " over " + std::to_string(world_) +
                     " processes leaves fewer than 2 rows per process: use at least " +
                     std::to_string(2 * world_));
  }
  const bool labelled = data_->labels.defined();
  if (config_.runtime.online_probe == Toggle::On && !labelled) {
    throw UsageError("--online-probe on needs labels, and " + data_->source +
                     " has none: give labelled data, or --online-probe off");
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
    throw FormatError("--init-backbone '" + init + "': no such file");
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
  std::string model = to_string(m.arch);
  if (m.arch_b && !m.shared_weights) model += " + " + to_string(*m.arch_b);
  const std::string crops = data_->is_vector()
                                ? ""
                                : ", " + std::to_string(image_size_) + " px crops (recipe " +
                                      config_.resolved_recipe() + ")";
  const std::string classes =
      data_->classes.size() > 1 ? ", " + std::to_string(data_->classes.size()) + " classes" : "";
  return "vicreg train: " + to_string(config_.data.dataset) + ", " + std::to_string(data_->size()) +
         " samples (" + data_->source + ")" + classes + "; " + model + crops + "; precision " +
         to_string(precision_.precision) + " (" + precision_.reason + ")" +
         (precision_.precision == Precision::Bf16 && device_.is_cpu() && !data_->is_vector() &&
                  is_convolutional(m.arch)
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
  loss_options_ = config_.loss_options();
  // With loss scaling, non-finite embeddings (an fp16 overflow) make a skipped step, not an error.
  loss_options_.check_finite(!scaler_.enabled());
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
  optimizer_ = make_optimizer(model_->parameters(), config_.optimizer_config());
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
                     ": every rank must read the same checkpoint (put --exp-dir on a filesystem "
                     "all hosts share, or copy the file)");
  }
  // Same seed, same checkpoint: the ranks agree already; the broadcast makes sure of it.
  if (config_.distributed.sync_bn) convert_sync_batchnorm(*model_, group_);
  broadcast_module(*model_, *group_);
}

void Trainer::init_backbone() {
  const std::string& path = config_.model.init_backbone;
  const WeightsFile file = read_weights(path);
  const std::string source = "--init-backbone '" + path + "'";
  WeightsLoadReport r = load_encoder_weights(*model_->backbone, file.tensors, source);
  // Without shared weights, the second branch starts from the same weights when it has the same
  // architecture.
  if (model_->backbone_b && model_->config.encoder_b.arch == model_->config.encoder.arch) {
    load_encoder_weights(*model_->backbone_b, file.tensors, source);
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

// ---------------------------------------------------------------------------------------------
// Files

Backbone Trainer::backbone() const {
  Backbone b;
  b.encoder = model_->backbone;
  b.config = config_;
  b.in_channels = data_->channels;
  b.image_size = data_->is_vector() ? 0 : model_->config.encoder.image_size;
  b.in_features = data_->features();
  return b;
}

void Trainer::save_checkpoint() const {
  CheckpointState s;
  s.step = step_;
  s.epoch = step_ / loader_->batches_per_epoch();
  s.elapsed_s = elapsed_before_;
  s.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  s.config = config_;
  const Backbone b = backbone();
  s.in_channels = b.in_channels;
  s.image_size = b.image_size;
  s.in_features = b.in_features;
  if (scaler_.enabled()) {
    s.loss_scaler = scaler_.state();
    s.skipped_in_a_row = skipped_in_a_row_;
  }
  write_checkpoint(ExperimentDir{config_.runtime.exp_dir}.checkpoint(), *model_, *optimizer_, s,
                   probe_ ? probe_.get() : nullptr);
}

// ---------------------------------------------------------------------------------------------
// One step

StepStats Trainer::train_step(const TwoViewBatch& batch) {
  StepStats s;
  s.lr = schedule_.lr_at(step_);
  set_learning_rate(*optimizer_, s.lr);
  const torch::Tensor x_a = batch.view_a.to(device_, /*non_blocking=*/true);
  const torch::Tensor x_b = batch.view_b.to(device_, /*non_blocking=*/true);
  // The gradients dropped rather than zeroed (PyTorch's zero_grad(set_to_none=True)): backward
  // then hands each parameter its gradient instead of adding it to zeros, a write and a
  // read-modify-write of every gradient fewer. Every parameter gets a gradient each step.
  for (auto& group : optimizer_->param_groups()) {
    for (auto& p : group.params()) p.mutable_grad() = torch::Tensor();
  }
  VICRegOutput out;
  {
    // The encoders and expanders under autocast; the loss outside it, in fp32 (the fused loss
    // accumulates bf16/fp16 embeddings in fp32 and returns their gradients in their dtype).
    const AutocastGuard autocast(device_, precision_.precision);
    out = model_->forward(x_a, x_b);
  }
  VICRegLossTerms terms;
  try {
    terms = group_ ? vicreg_loss_sharded(out.z_a, out.z_b, *group_, loss_options_)
                   : vicreg_loss(out.z_a, out.z_b, loss_options_);
  } catch (const c10::Error& e) {
    throw DivergedError(step_, "training diverged at step " + std::to_string(step_) + ": " +
                                   e.what_without_backtrace());
  }
  scaler_.scale(terms.total).backward();
  if (group_) all_reduce_gradients(model_->parameters(), *group_);
  if (probe_ && batch.labels.defined()) {
    // On both views' detached representations (with separate branches, the first backbone's:
    // the one evaluated), in fp32 outside autocast; distributed, its gradients averaged too.
    const bool both = model_->config.shared_weights;
    const torch::Tensor y = both ? torch::cat({out.y_a, out.y_b}) : out.y_a;
    const torch::Tensor labels = both ? torch::cat({batch.labels, batch.labels}) : batch.labels;
    std::function<void(const std::vector<torch::Tensor>&)> reduce;
    if (group_) {
      reduce = [this](const std::vector<torch::Tensor>& p) { all_reduce_gradients(p, *group_); };
    }
    const OnlineProbeStep p = probe_->train_step(y, labels.to(device_), reduce);
    s.probe_loss = p.loss;
    s.probe_correct = p.correct;
    s.probe_count = p.count;
  }
  const torch::Tensor& std_per_dim = terms.std_a;  // over the global batch
  last_y_ = out.y_a.detach();
  last_z_ = out.z_a.detach();
  const auto d = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble); };
  const torch::Tensor numbers =
      torch::stack({d(terms.total), d(terms.invariance), d(terms.variance), d(terms.covariance),
                    d(std_per_dim.mean()), d(std_per_dim.min())})
          .cpu();
  const double* n = numbers.data_ptr<double>();
  s.loss = n[0];
  s.invariance = n[1];
  s.variance = n[2];
  s.covariance = n[3];
  s.std_z = n[4];
  s.std_z_min = n[5];
  if (scaler_.enabled()) {
    // Gradients are the same on every rank after the all-reduce: so is the decision.
    s.skipped = scaler_.unscale(model_->parameters()) || !std::isfinite(s.loss);
    if (!s.skipped) optimizer_->step();
    scaler_.update(s.skipped);
    skipped_in_a_row_ = s.skipped ? skipped_in_a_row_ + 1 : 0;
    if (skipped_in_a_row_ >= config_.runtime.max_skipped_steps) {
      throw DivergedError(step_, "training diverged at step " + std::to_string(step_) + ": " +
                                     std::to_string(skipped_in_a_row_) +
                                     " steps in a row had non-finite gradients (loss scale now " +
                                     std::to_string(scaler_.scale()) + ", loss " +
                                     std::to_string(s.loss) + ")");
    }
  } else {
    if (!std::isfinite(s.loss)) {
      throw DivergedError(step_, "training diverged at step " + std::to_string(step_) +
                                     ": the loss is " + std::to_string(s.loss));
    }
    optimizer_->step();
  }
  ++step_;
  return s;
}

// ---------------------------------------------------------------------------------------------
// The loop

int64_t Trainer::stop_step() const {
  const int64_t total = schedule_.total_steps;
  return config_.runtime.max_steps > 0 ? std::min(total, config_.runtime.max_steps) : total;
}

bool Trainer::stop_requested(const TrainHooks& hooks) {
  bool stop = hooks.stop_requested != nullptr && hooks.stop_requested->load();
  if (group_) {
    // A signal may reach one rank only: they stop together, at the same step.
    std::vector<torch::Tensor> flag = {torch::full({1}, stop ? 1.0f : 0.0f, device_)};
    group_->all_reduce_sum(flag);
    stop = flag[0].item<float>() > 0;
  }
  return stop;
}

nlohmann::json Trainer::interval_line(const IntervalStats& interval, double lr, double seconds,
                                      double wait_seconds, double elapsed) const {
  const StepStats m = interval.mean(lr);
  const double dt = std::max(seconds, 1e-9);
  nlohmann::json line = {{"epoch", static_cast<double>(step_) / loader_->batches_per_epoch()},
                         {"step", step_},
                         {"lr", m.lr},
                         {"loss", m.loss},
                         {"invariance", m.invariance},
                         {"variance", m.variance},
                         {"covariance", m.covariance},
                         {"std_z", m.std_z},
                         {"std_z_min", m.std_z_min},
                         {"rankme_y", rankme(last_y_.to(torch::kCPU))},
                         {"rankme_z", rankme(last_z_.to(torch::kCPU))},
                         {"images_per_s", 2.0 * config_.optim.batch_size * interval.steps / dt},
                         {"data_wait_fraction", wait_seconds / dt},
                         {"elapsed_s", elapsed}};
  if (config_.runtime.skip_bad_images) line["bad_images"] = interval.bad_images;
  if (probe_) {
    // The interval's training batches (this process's rows), as the probe saw them before its
    // update on each.
    line["online_probe_top1"] = m.probe_count > 0
                                    ? static_cast<double>(m.probe_correct) / m.probe_count
                                    : std::numeric_limits<double>::quiet_NaN();
    line["online_probe_loss"] = m.probe_loss;
  }
  if (scaler_.enabled()) {
    line["loss_scale"] = scaler_.scale();
    line["skipped_steps"] = interval.skipped;
  }
  return line;
}

void Trainer::load_test_data() {
  test_data_ = std::make_shared<Dataset>(load_dataset(config_.dataset_config(Split::Test)));
  test_data_->require_labels();
  data_->require_labels();
}

std::vector<nlohmann::json> Trainer::held_out_probes() {
  if (!test_data_) load_test_data();
  // The bank: the first eval_bank training samples.
  const int64_t bank_size = config_.runtime.eval_bank;
  const int64_t n = bank_size > 0 ? std::min(bank_size, data_->size()) : data_->size();
  const Dataset bank = data_->subset(torch::arange(n));
  EvalTransform t;
  if (!data_->is_vector()) {
    t = eval_transform_for(config_.resolved_recipe(), static_cast<int>(data_->channels),
                           image_size_);
  }
  const KnnOptions k = ProtocolDefaults::knn();
  const Precision p = precision_.precision;
  const torch::Tensor xb = compute_representations(*model_->backbone, bank, t, 512, device_, p);
  const torch::Tensor xq =
      compute_representations(*model_->backbone, *test_data_, t, 512, device_, p);
  const int64_t classes =
      std::max(bank.labels.max().item<int64_t>(), test_data_->labels.max().item<int64_t>()) + 1;
  const Accuracy a =
      accuracy(knn_scores(xb, bank.labels, xq, k.k, k.temperature, classes), test_data_->labels);
  const double epoch = static_cast<double>(step_) / loader_->batches_per_epoch();
  // Top-5 only where it says something: with 5 classes or fewer it is 100 %.
  const bool top5 = classes > 5;
  std::vector<nlohmann::json> lines = {{{"event", "knn"},
                                        {"step", step_},
                                        {"epoch", epoch},
                                        {"knn_top1", a.top1},
                                        {"bank", n},
                                        {"rankme_representation", rankme(xq)}}};
  if (top5) lines[0]["knn_top5"] = a.top5;
  if (probe_) {
    const Accuracy o = probe_->evaluate(xq.to(device_), test_data_->labels.to(device_));
    lines.push_back(
        {{"event", "online_probe"}, {"step", step_}, {"epoch", epoch}, {"top1", o.top1}});
    if (top5) lines.back()["top5"] = o.top5;
  }
  return lines;
}

TrainResult Trainer::run(const TrainHooks& hooks) {
  const ExperimentDir dir{config_.runtime.exp_dir};
  std::unique_ptr<MetricsLog> metrics;  // rank 0 alone writes files, holding the directory
  const int64_t total = schedule_.total_steps, stop_at = stop_step(), start_step = step_;
  if (is_main()) {
    fs::create_directories(dir.root);
    if (!lock_) lock_.emplace(dir.root, "experiment directory");
    std::vector<std::string> written = {"config.json", "metrics.jsonl", "checkpoint.pt",
                                        "backbone.pt"};
    for (const std::string& f : event_files(dir.root)) {
      written.push_back(fs::path(f).filename().string());
    }
    remove_stale_temporaries(dir.root, written);
    // A finished run is left as it is (nothing to do: the caller says so).
    if (start_step < stop_at) write_file_atomically(dir.config(), to_json(config_).dump(2) + "\n");
    metrics = std::make_unique<MetricsLog>(dir.metrics(), step_,
                                           config_.runtime.tensorboard == OnOff::On);
  }
  const ProgressReporter progress(hooks.progress, is_main());
  const int64_t per_epoch = loader_->batches_per_epoch();
  progress.note(
      "vicreg train: " + std::to_string(per_epoch) + " steps/epoch, " +
      std::to_string(config_.optim.epochs) + " epochs, " +
      (start_step > 0 ? "resuming at step " + std::to_string(start_step) : "from scratch") +
      memory_format_note() + "; writing " + dir.root);
  if (group_) {
    const int64_t batch = config_.optim.batch_size;
    progress.note("vicreg train: " + std::to_string(world_) + " processes (" + group_->backend() +
                  "), global batch " + std::to_string(batch) + " = " + std::to_string(world_) +
                  " x " + std::to_string(batch / world_) + ", BatchNorm " +
                  (config_.distributed.sync_bn ? "synchronised" : "per process"));
  }

  TrainResult result;
  result.already_finished = step_ >= total;
  result.last_loss = std::numeric_limits<double>::quiet_NaN();
  model_->train();
  loader_->start(step_);
  const auto t0 = std::chrono::steady_clock::now();
  auto t_interval = t0, t_checkpoint = t0;
  const int64_t checkpoint_every = config_.runtime.checkpoint_every;
  const double checkpoint_seconds = 60.0 * config_.runtime.checkpoint_minutes;
  IntervalStats interval;
  double wait_at_interval = 0.0;

  while (step_ < stop_at) {
    StepStats s;
    try {
      const TwoViewBatch batch = loader_->next();
      for (const std::string& bad : batch.skipped) {
        ++interval.bad_images;
        if (warned_bad_.insert(bad).second) {
          std::fprintf(stderr, "vicreg train: warning: skipped %s\n", bad.c_str());
        }
      }
      s = train_step(batch);
    } catch (const DivergedError&) {
      progress.finish();
      throw;  // checkpoint.pt still holds the last good state
    }
    interval.add(s);
    result.last_loss = s.loss;
    const bool epoch_end = step_ % per_epoch == 0;
    const bool stop = stop_requested(hooks);
    if (is_main() &&
        (step_ % config_.runtime.log_every == 0 || epoch_end || step_ == stop_at || stop)) {
      const double dt = seconds_since(t_interval);
      const nlohmann::json line =
          interval_line(interval, s.lr, dt, loader_->wait_seconds() - wait_at_interval,
                        elapsed_before_ + seconds_since(t0));
      metrics->write(line);
      progress.interval(line, config_.optim.epochs, per_epoch, total,
                        (stop_at - step_) * dt / interval.steps);
      interval = {};
      t_interval = std::chrono::steady_clock::now();
      wait_at_interval = loader_->wait_seconds();
    }
    const int64_t every = config_.runtime.eval_every;
    if (is_main() && epoch_end && every > 0 && (step_ / per_epoch) % every == 0) {
      // The other ranks wait for it in the next step's collectives (within --dist-timeout).
      for (const nlohmann::json& probe : held_out_probes()) {
        metrics->write(probe);
        progress.probe(probe, per_epoch);
      }
    }
    // Rank 0 alone writes (and times) checkpoints; the others go on to the next step's
    // collectives, where they wait for it.
    if (epoch_end || stop || step_ == stop_at ||
        (checkpoint_every > 0 && step_ % checkpoint_every == 0) ||
        (is_main() && checkpoint_seconds > 0 &&
         seconds_since(t_checkpoint) >= checkpoint_seconds)) {
      const double session = seconds_since(t0);
      elapsed_before_ += session;
      if (is_main()) save_checkpoint();
      elapsed_before_ -= session;  // keep counting this session from t0
      t_checkpoint = std::chrono::steady_clock::now();
    }
    if (stop) {
      result.stopped = result.stop_requested = true;
      break;
    }
  }
  const double session = seconds_since(t0);
  elapsed_before_ += session;
  progress.finish();
  result.step = step_;
  result.session_steps = step_ - start_step;
  result.epoch = step_ / per_epoch;
  result.finished = step_ >= total;
  result.stopped = result.stopped || !result.finished;
  result.data_wait_fraction = loader_->wait_seconds() / std::max(session, 1e-9);
  result.images_per_second =
      2.0 * config_.optim.batch_size * (step_ - start_step) / std::max(session, 1e-9);
  if (is_main() && (result.session_steps > 0 || !fs::exists(dir.backbone()))) {
    write_backbone(backbone(), dir.backbone());
  }
  return result;
}

}  // namespace vicreg
