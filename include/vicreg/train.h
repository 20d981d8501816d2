// Pretraining: the configuration of a run, its experiment directory, and the training loop.
//
// An experiment directory (--exp-dir) holds:
//   config.json     the fully resolved TrainConfig (readable again with --config)
//   metrics.jsonl   one JSON object per log interval
//   checkpoint.pt   model, optimizer, step, epoch, RNG state, config, input shape; written atomically
//                   (temporary file, fsync, rename) every epoch, at the end, and on a stop request
//   backbone.pt     the final backbone alone (torch::save of the encoder module), for downstream use
#pragma once

#include "vicreg/distributed.h"
#include "vicreg/loader.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"
#include "vicreg/optim.h"
#include "vicreg/weights.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace vicreg {

/// Everything a run depends on. JSON keys are the CLI flags with '_' for '-' (base_lr for
/// --base-lr); defaults are the default Fashion-MNIST configuration (README).
struct TrainConfig {
  // data
  std::string dataset = "fashion-mnist";
  std::string data_dir;          ///< empty: the data set's default
  std::string recipe;            ///< empty: the data set's natural recipe
  int64_t image_size = 0;        ///< crop size; 0: the recipe's
  int64_t channels = 3;          ///< image-folder only: 3 (RGB) or 1
  // model
  std::string arch = "convnet";
  int64_t width = 32;            ///< convnet
  int64_t stages = 4;            ///< convnet
  std::string encoder_mlp = "1024-1024";  ///< mlp encoder
  std::string mlp = "1024-1024-1024";     ///< expander (--mlp)
  bool shared_weights = true;
  std::string arch_b;            ///< second branch's arch without shared weights (empty: arch)
  /// Weights for the backbone at the start of a new run (not on resume): a safetensors or
  /// torch.save file with torchvision's names (weights.h: load_encoder_weights). Empty: random.
  std::string init_backbone;
  // optimisation
  int64_t epochs = 12;
  int64_t batch_size = 128;
  double base_lr = 1e-3;          ///< lr = base_lr * batch / 256 (LARS, SGD); AdamW: lr = base_lr
  double wd = 1e-6;
  std::string optimizer = "adamw";
  double momentum = 0.9;
  double eta = 1e-3;
  bool clip_lr = false;
  double warmup_epochs = 1.0;
  double end_lr_ratio = 0.001;
  // loss
  double sim_coeff = 25.0, std_coeff = 25.0, cov_coeff = 1.0;
  std::string loss_preset = "official";
  // runtime
  std::string device = "cpu";
  int threads = 0;               ///< 0: all cores
  int workers = 2;
  int prefetch = 6;
  uint64_t seed = 0;
  std::string exp_dir = "runs/fashion-mnist";
  int64_t log_every = 20;        ///< steps per metrics line
  int64_t max_steps = 0;         ///< stop after this many steps in all (0: no limit)
  int64_t eval_every = 0;        ///< kNN probe on the test split every N epochs (0: never)
  int64_t eval_bank = 10000;     ///< training samples in the kNN bank (the first ones; 0: all)
  // distributed (WORLD_SIZE > 1; distributed.h)
  bool sync_bn = true;           ///< BatchNorm statistics over all ranks (the reference's)
  std::string dist_backend = "auto";  ///< auto (NCCL on CUDA, else Gloo), gloo, nccl
  double dist_timeout = 300;     ///< seconds a rank waits for the others before giving up

  /// Throws std::invalid_argument naming the field for impossible values (unknown names,
  /// batch < 2, epochs < 1, negative rates, ...). Data-dependent checks happen in Trainer.
  void validate() const;
  /// The recipe used: `recipe`, or the data set's natural one.
  std::string resolved_recipe() const;
};

nlohmann::json to_json(const TrainConfig& config);
/// Reads the keys present in `json` over `config`. Throws std::invalid_argument for an unknown
/// key or a value of the wrong type, naming the key.
void update_from_json(TrainConfig& config, const nlohmann::json& json);

/// Thrown when the loss stops being finite; carries the step. The last good checkpoint is kept.
class TrainingDiverged : public std::runtime_error {
 public:
  TrainingDiverged(int64_t at_step, const std::string& what)
      : std::runtime_error(what), step(at_step) {}
  int64_t step;
};

/// One optimizer step's numbers.
struct StepStats {
  double loss = 0, invariance = 0, variance = 0, covariance = 0, lr = 0;
  double std_z = 0, std_z_min = 0;  ///< mean and min over dimensions of the std of z_a
};

struct TrainResult {
  int64_t step = 0;         ///< optimizer steps done in all
  int64_t epoch = 0;        ///< epochs completed
  bool finished = false;    ///< all epochs done
  bool stopped = false;     ///< stopped on request (signal) or by max_steps
  bool stop_requested = false;  ///< stopped on request, here or, distributed, on another rank
  double last_loss = 0;
  double data_wait_fraction = 0;  ///< of this session's wall time spent waiting for batches
  double images_per_second = 0;   ///< this session, two views counted as two images
};

/// Where progress goes: "auto" (a bar on a terminal, log lines otherwise), "bar", "plain", "none".
struct TrainHooks {
  std::string progress = "auto";
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
  /// Throws for a bad config, missing/corrupt data, a checkpoint that does not match, or a batch
  /// that W ranks cannot split into equal parts of at least 2 rows.
  Trainer(TrainConfig config, std::string resume = "",
          std::shared_ptr<ProcessGroup> group = nullptr);
  TrainResult run(const TrainHooks& hooks = {});

  const TrainConfig& config() const { return config_; }
  VICReg model() const { return model_; }
  int64_t step() const { return step_; }
  int64_t steps_per_epoch() const { return loader_->batches_per_epoch(); }
  int64_t total_steps() const { return schedule_.total_steps; }
  /// One optimizer step on a batch; returns its numbers. Throws TrainingDiverged.
  StepStats train_step(const TwoViewBatch& batch);
  /// Writes checkpoint.pt atomically.
  void save_checkpoint() const;

 private:
  void load_checkpoint(const std::string& path);
  /// Copies config_.init_backbone's weights into the backbone(s) (a new run only).
  void init_backbone();
  bool is_main() const { return rank_ == 0; }
  /// The kNN probe of the current backbone (bank: eval_bank training samples; queries: the test
  /// split); returns the metrics line.
  nlohmann::json knn_probe();

  TrainConfig config_;
  torch::Device device_;
  std::shared_ptr<Dataset> data_;
  std::unique_ptr<TwoViewLoader> loader_;
  VICReg model_{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  WarmupCosineSchedule schedule_;
  VICRegLossOptions loss_options_;
  int64_t step_ = 0;
  double elapsed_before_ = 0;  ///< wall seconds of earlier sessions (resume)
  int64_t image_size_ = 0;
  torch::Tensor last_y_, last_z_;  ///< the last step's representations and embeddings (view a)
  std::shared_ptr<Dataset> test_data_;  ///< loaded on the first kNN probe
  std::shared_ptr<ProcessGroup> group_;  ///< null: a single process
  int rank_ = 0, world_ = 1;
};

/// Writes `archive` to `path` atomically: path.tmp, fsync, rename, fsync of the directory.
void save_atomically(torch::serialize::OutputArchive& archive, const std::string& path);

/// Reads the config stored in a checkpoint.
TrainConfig read_checkpoint_config(const std::string& path);

/// The encoder settings of a run on data of this shape (channels, crop size, features).
EncoderConfig encoder_config(const TrainConfig& config, const std::string& arch,
                             int64_t in_channels, int64_t image_size, int64_t in_features);

/// The model of `config` on data shaped like `data` (channels, the recipe's crop size, features).
VICRegModelConfig model_config(const TrainConfig& config, const Dataset& data);

/// A checkpoint.pt's whole model (backbones and expanders), rebuilt from the config stored with it
/// (read_checkpoint_config) and the shape of `data`, weights loaded with their shapes checked, in
/// eval mode. Throws naming the file if it is missing, corrupt or does not fit.
struct TrainedModel {
  VICReg model{nullptr};
  TrainConfig config;
  int64_t step = 0;
};
TrainedModel read_model(const std::string& checkpoint, const Dataset& data);

/// A backbone: the encoder rebuilt from the settings stored with it, weights loaded, in eval
/// mode, with the run's config and the input shape it was trained on. Reads
///   - a run's backbone.pt;
///   - a safetensors file written by export_backbone() (its metadata carries the settings);
///   - any other safetensors or torch.save state dict of a ResNet with torchvision's names
///     (torchvision's, the official VICReg release): the architecture is read off the weights
///     (infer_encoder_config); config is the default one with that arch, image_size 0 (unknown).
/// Throws naming the file if it is missing, not a backbone, or its weights do not fit.
struct Backbone {
  Encoder encoder;
  TrainConfig config;
  int64_t in_channels = 0, image_size = 0, in_features = 0;
};
Backbone read_backbone(const std::string& path);
/// read_backbone(path).encoder
Encoder load_backbone(const std::string& path);

/// The backbone of a checkpoint.pt (written by vicreg 0.1 since the input shape is stored in it).
Backbone read_checkpoint_backbone(const std::string& path);

/// The settings of a ResNet encoder from its weights (torchvision names, possibly under a prefix
/// such as "backbone." or "module."): depth from the blocks per stage (18, 34: BasicBlock
/// [2,2,2,2], [3,4,6,3]; 50: Bottleneck [3,4,6,3]), in_channels and the stem (7x7: torchvision's,
/// 3x3: the small-image one) from conv1.weight. Throws std::runtime_error naming `source` when
/// the weights are no ResNet vicreg builds.
EncoderConfig infer_encoder_config(const NamedTensors& weights, const std::string& source);

/// How to build the torchvision model that a ResNet backbone's weights load into (Python, one
/// line); empty for the other encoders.
std::string torchvision_recipe(const Backbone& backbone);

/// Writes a backbone as safetensors with torchvision's names (a ResNet loads into
/// torchvision.models.resnetNN with strict=False, only fc.* missing; the small-image stem needs
/// conv1 = Conv2d(C, 64, 3, 1, 1, bias=False) and maxpool = Identity()). The metadata records
/// the settings (vicreg.config, vicreg.arch, vicreg.in_channels, vicreg.image_size,
/// vicreg.in_features) and, in vicreg.torchvision, how to build the torchvision model.
/// Returns the number of tensors written.
int64_t export_backbone(const Backbone& backbone, const std::string& path);

}  // namespace vicreg
