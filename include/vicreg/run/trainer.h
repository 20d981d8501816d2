// The training loop: builds the data, model and optimizer of a TrainConfig, resumes, and trains,
// writing the experiment directory (run/artifacts.h) and reporting progress (run/progress.h).
#pragma once

#include "vicreg/distributed.h"
#include "vicreg/evaluate.h"
#include "vicreg/io/files.h"
#include "vicreg/loader.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"
#include "vicreg/objective.h"
#include "vicreg/optim.h"
#include "vicreg/precision.h"
#include "vicreg/run/artifacts.h"
#include "vicreg/run/config.h"
#include "vicreg/run/progress.h"

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace vicreg {

struct TrainResult {
  int64_t step = 0;               ///< optimizer steps done in all
  int64_t epoch = 0;              ///< epochs completed
  bool finished = false;          ///< all epochs done
  bool stopped = false;           ///< stopped on request (signal) or by max_steps
  bool stop_requested = false;    ///< stopped on request, here or, distributed, on another rank
  bool already_finished = false;  ///< the checkpoint was of a finished run: nothing to do
  int64_t session_steps = 0;      ///< steps taken by this run() (0: nothing was left to do)
  double last_loss = 0;           ///< the last step's loss (NaN when no step ran)
  double data_wait_fraction = 0;  ///< of this session's wall time spent waiting for batches
  double images_per_second = 0;   ///< this session, two views counted as two images
};

/// The start-up measurement behind `--channels-last auto` on a CPU: a training step's forward,
/// loss and backward passes on a batch of random views of the run's shape, timed in both memory
/// formats, interleaved, after one warm-up step of each (Trainer::memory_format_timing()).
struct MemoryFormatTiming {
  double contiguous_s = 0;     ///< the fastest timed step, contiguous
  double channels_last_s = 0;  ///< the fastest timed step, channels_last
  int rounds = 0;              ///< timed steps of each format
  bool channels_last() const { return channels_last_s < contiguous_s; }
};

/// Times `config`'s forward, loss and backward passes on `rows` random views of `channels` x
/// `size` x `size` in both memory formats: one warm-up step of each (oneDNN builds its kernels
/// then), then rounds of one step of each, in alternating order, until 3 rounds or `budget_s`
/// seconds of them. The global generator is left as it was.
MemoryFormatTiming time_memory_formats(const VICRegModelConfig& config, int64_t rows,
                                       int64_t channels, int64_t size, Precision precision,
                                       const Objective& objective, double budget_s);

/// The median shorter side of the images of `data`: in-memory images' side, or that of up to
/// `samples` evenly spaced files decoded (unreadable ones left out); 0 for vectors or when none
/// could be read.
int64_t typical_image_side(const Dataset& data, int samples = 8);

struct TrainHooks {
  ProgressStyle progress = ProgressStyle::Auto;
  /// Checked after every step; when it becomes true the run writes a checkpoint and returns.
  const std::atomic<bool>* stop_requested = nullptr;
};

/// Builds the model, data and optimizer of `config`, resumes from `resume` (a checkpoint path)
/// or from exp_dir/checkpoint.pt when it exists, and trains.
///
/// With a process group of W > 1 ranks (distributed.h), every rank runs a Trainer: each gets its
/// B / W rows of every global batch of B = batch_size, the loss is that of the global batch
/// (vicreg_loss_sharded), BatchNorm is synchronised (sync_bn), gradients are averaged in buckets,
/// and rank 0's weights are broadcast at the start. Only rank 0 writes config.json,
/// metrics.jsonl, checkpoints and backbone.pt, and runs the kNN probe. A checkpoint resumes with
/// any W: the data stream depends on the global step only.
class Trainer {
 public:
  /// Throws UsageError for a bad config or a batch that W ranks cannot split into equal parts of
  /// at least 2 rows, FormatError for missing/corrupt data or a checkpoint that does not match.
  /// `given`: the keys of the settings the user gave (flags, --config); on resume, those the
  /// checkpoint overrides are named (none: every setting that differs from the checkpoint's).
  /// Without `resume`, a checkpoint in exp_dir is resumed only if its data set, data folder and
  /// model are those `config` asks for (resume_conflicts); otherwise a UsageError names them.
  /// Every check that needs no model (data, labels, batch size, held-out split, resume) comes
  /// before the model is built; `notes` (rank 0) then gets the run's first line, and a line
  /// before the memory-format timing.
  Trainer(TrainConfig config, std::string resume = "",
          std::shared_ptr<ProcessGroup> group = nullptr,
          std::optional<std::vector<std::string>> given = std::nullopt,
          ProgressStyle notes = ProgressStyle::Auto);
  TrainResult run(const TrainHooks& hooks = {});

  const TrainConfig& config() const { return config_; }
  VICReg model() const { return model_; }
  int64_t step() const { return step_; }
  int64_t steps_per_epoch() const { return loader_->batches_per_epoch(); }
  int64_t total_steps() const { return schedule_.total_steps; }
  /// The precision the forward passes run in (auto resolved), and whether the convolutional
  /// backbone and its batches are in channels_last memory format.
  const PrecisionChoice& precision() const { return precision_; }
  bool channels_last() const { return channels_last_; }
  /// The measurement that chose the memory format: a new run of a convolutional backbone on a
  /// CPU with `--channels-last auto` (on every rank, distributed: rank 0's). None otherwise
  /// (asked for, resumed, GPUs, models without convolutions).
  const std::optional<MemoryFormatTiming>& memory_format_timing() const {
    return memory_format_timing_;
  }
  const GradScaler& scaler() const { return scaler_; }
  /// The online linear probe (evaluate.h), or null when the run has none (online_probe off, or
  /// auto on data without labels).
  OnlineProbe online_probe() const { return probe_; }
  /// One optimizer step on a batch (forward passes under autocast in precision(), the loss in
  /// fp32); returns its numbers. With loss scaling, a step whose gradients are not finite is
  /// skipped (StepStats::skipped). Throws DivergedError on a non-finite loss without loss scaling,
  /// or after max_skipped_steps skipped steps in a row with it.
  StepStats train_step(const TwoViewBatch& batch);
  /// Writes checkpoint.pt atomically (the one before becomes checkpoint.prev.pt).
  void save_checkpoint() const;

 private:
  // Construction, in order.
  void resume_config(const std::string& resume);
  /// Resolves precision, channels_last and loss scaling for the device and the model, and
  /// records the choices in config_.
  void choose_numerics();
  /// The datasets (the probe's held-out split too) and the crop's size; checks the batch.
  void load_data();
  /// The start-up line: data, model, crop size, numerics, runtime.
  std::string plan_line() const;
  /// channels_last auto on a CPU, for a new run of a convolutional backbone: times both memory
  /// formats (MemoryFormatTiming) and takes the faster. Distributed, rank 0 measures and every
  /// rank takes its choice (every rank calls it). Records the choice in config_.
  void choose_memory_format();
  /// The two-view loader, in the chosen memory format, and what depends on its length.
  void make_loader();
  void build_model(bool fresh);
  void build_optimizer();
  /// The online linear probe, when config_.runtime.online_probe asks for one; its weights are
  /// drawn without touching the global generator, so that the backbone trains the same with it
  /// or without it.
  void build_probe();
  void join_group();
  /// Copies config_.model.init_backbone's weights into the backbone(s) (a new run only).
  void init_backbone();

  // The loop's parts.
  bool is_main() const { return rank_ == 0; }
  int64_t stop_step() const;
  /// The first line's word on the memory format: ", channels_last", or with a measurement the
  /// chosen format and both times; "" for contiguous without one.
  std::string memory_format_note() const;
  /// Whether a stop was asked for here or, distributed, on any rank (all ranks call it).
  bool stop_requested(const TrainHooks& hooks);
  /// The metrics line of an interval that ended at this step.
  nlohmann::json interval_line(const IntervalStats& interval, double lr, double seconds,
                               double wait_seconds, double elapsed) const;
  /// The probes of the current backbone on the test split: kNN (bank: eval_bank training
  /// samples) and, with one, the online linear probe; returns their metrics lines.
  std::vector<nlohmann::json> held_out_probes();
  /// Loads the probe's held-out split (throws when there is none) and checks both have labels.
  void load_test_data();
  Backbone backbone() const;
  /// The augmentation recipe of the run's image data (make_recipe).
  Recipe recipe() const;

  /// Rank 0's hold on the experiment directory: from before the checkpoint is read (a resume),
  /// else from the start of run(), to the end.
  std::optional<DirectoryLock> lock_;
  std::set<std::string> warned_bad_;  ///< skipped files already reported (--skip-bad-images)
  ProgressStyle notes_ = ProgressStyle::Auto;
  TrainConfig config_;
  TrainConfig given_;  ///< the config as asked for (differs from config_ on resume)
  std::optional<std::vector<std::string>> given_keys_;  ///< the settings given explicitly
  std::string resume_;  ///< the checkpoint resumed from ("" for a new run)
  torch::Device device_;
  std::shared_ptr<Dataset> data_;
  std::unique_ptr<TwoViewLoader> loader_;
  VICReg model_{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  WarmupCosineSchedule schedule_;
  std::unique_ptr<Objective> objective_;
  Precision trained_precision_ = Precision::Auto;      ///< the checkpoint's (resume)
  Toggle trained_channels_last_ = Toggle::Auto;        ///< the checkpoint's (resume)
  CpuBf16Conv trained_bf16_conv_ = CpuBf16Conv::Auto;  ///< the checkpoint's (resume)
  PrecisionChoice precision_;
  bool channels_last_ = false;
  bool measure_memory_format_ = false;  ///< choose_numerics() left channels_last to measure
  std::optional<MemoryFormatTiming> memory_format_timing_;
  GradScaler scaler_;
  OnlineProbe probe_{nullptr};
  int64_t skipped_in_a_row_ = 0;  ///< loss scaling: steps skipped since the last good one
  int64_t step_ = 0;
  double elapsed_before_ = 0;  ///< wall seconds of earlier sessions (resume)
  int64_t image_size_ = 0;
  torch::Tensor last_y_, last_z_;       ///< the last step's representations and embeddings (view a)
  std::shared_ptr<Dataset> test_data_;  ///< loaded on the first kNN probe
  std::shared_ptr<ProcessGroup> group_;  ///< null: a single process
  int rank_ = 0, world_ = 1;
};

}  // namespace vicreg
