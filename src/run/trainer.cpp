// The Trainer's files, its step and its loop (run/trainer.h).
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

}  // namespace

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
  ModelOutputs out;
  {
    // The encoders and expanders under autocast; the loss outside it, in fp32 (the fused loss
    // accumulates bf16/fp16 embeddings in fp32 and returns their gradients in their dtype).
    const AutocastGuard autocast(device_, precision_.precision);
    out = model_->forward(x_a, x_b, objective_->uses_features());
  }
  ObjectiveLoss terms;
  try {
    terms = objective_->loss(out, group_.get());
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
    const torch::Tensor& y_a = out.views[0].y;
    const torch::Tensor y = both ? torch::cat({y_a, out.views[1].y}) : y_a;
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
  const torch::Tensor& std_per_dim = terms.embedding_std;  // over the global batch
  last_y_ = out.views[0].y.detach();
  last_z_ = out.views[0].z.detach();
  // Every number of the step in one transfer: the loss, the terms, the std's mean and min.
  const auto d = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble); };
  std::vector<torch::Tensor> parts = {d(terms.total)};
  for (const torch::Tensor& term : terms.terms) parts.push_back(d(term));
  parts.push_back(d(std_per_dim.mean()));
  parts.push_back(d(std_per_dim.min()));
  const torch::Tensor numbers = torch::stack(parts).cpu();
  const double* n = numbers.data_ptr<double>();
  const size_t k = terms.terms.size();
  s.loss = n[0];
  s.terms.assign(n + 1, n + 1 + k);
  s.std_z = n[1 + k];
  s.std_z_min = n[2 + k];
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
                         {"std_z", m.std_z},
                         {"std_z_min", m.std_z_min},
                         {"rankme_y", rankme(last_y_.to(torch::kCPU))},
                         {"rankme_z", rankme(last_z_.to(torch::kCPU))},
                         {"images_per_s", 2.0 * config_.optim.batch_size * interval.steps / dt},
                         {"data_wait_fraction", wait_seconds / dt},
                         {"elapsed_s", elapsed}};
  const ObjectiveTerms& names = objective_->terms();
  for (size_t i = 0; i < names.size(); ++i) {
    line[names[i].key] = i < m.terms.size() ? m.terms[i] : std::numeric_limits<double>::quiet_NaN();
  }
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
      progress.interval(line, objective_->terms(), config_.optim.epochs, per_epoch, total,
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
