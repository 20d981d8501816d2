// The configuration of a pretraining run: one tree of sections, each a plain struct, and one
// table of settings (for_each_setting) from which the JSON file, the CLI flags and resuming are
// all derived.
//
//   TrainConfig
//     data         what is learned from         dataset, recipe, image_size, channels
//     model        what is trained              arch, width, stages, encoder_mlp, mlp, ...
//     optim        how                          optimizer, epochs, batch_size, base_lr, wd, ...
//     loss         the objective                sim_coeff, std_coeff, cov_coeff, loss_preset
//     seed         initialisation, data order and augmentations
//     runtime      where and how fast it runs   data_dir, device, threads, workers, exp_dir, ...
//     distributed  the process group            sync_bn, dist_backend, dist_timeout
//
// Resuming is decided by the sections, not by a list of fields (config_for_resume): the checkpoint
// decides data, model, optim, loss and seed; the command line decides runtime and distributed.
// A new setting is resumed right by being put in the section it belongs to.
//
// config.json holds the tree, one object per section; a --config file may also give settings as
// flat keys (the flag's name with '_' for '-': "base_lr" for --base-lr), which is also how
// vicreg 0.1 wrote it, so its files read unchanged.
#pragma once

#include "vicreg/augment.h"
#include "vicreg/data.h"
#include "vicreg/distributed.h"
#include "vicreg/loader.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"
#include "vicreg/models/registry.h"
#include "vicreg/names.h"
#include "vicreg/objective.h"
#include "vicreg/optim.h"
#include "vicreg/precision.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

/// What is learned from.
struct DataConfig {
  DatasetKind dataset = DatasetKind::FashionMnist;
  std::string recipe;      ///< augment.h's recipe names; empty: the data set's natural one
  int64_t image_size = 0;  ///< crop size; 0: the recipe's
  /// Overrides of the recipe's view settings (augment.h's override_recipe), e.g.
  /// "crop_scale=0.4,solarize=0/0.2"; pretraining's views only. A new run records all of them
  /// (recipe_override_spec), the recipe's values included.
  std::string recipe_overrides;
  int64_t channels = 3;  ///< image-folder only: 3 (RGB) or 1
  /// In (0, 1): hold out this fraction of the training data (class-stratified, seeded) as the
  /// evaluation split; pretraining never sees it. 0: the data set's own held-out split.
  double holdout = 0;
  std::string classes;  ///< image-folder: a class list file (--classes); empty: every class folder
};

/// What is trained: the backbone(s) and the expander.
struct ModelConfig {
  std::string arch = "convnet";           ///< a backbone name (models/registry.h)
  int64_t width = 32;                     ///< convnet
  int64_t stages = 4;                     ///< convnet
  int64_t final_conv = 1024;              ///< convnet: channels of a last 1x1 conv (0: none)
  std::string encoder_mlp = "1024-1024";  ///< mlp encoder's hidden layers
  int64_t patch_size = 0;                 ///< vit: patch side (0: the arch's)
  int64_t depth = 0;                      ///< vit: blocks (0: the arch's)
  bool class_token = true;                ///< vit
  bool mean_pool = false;                 ///< vit: represent by the patch tokens' mean
  double drop_path = 0;                   ///< vit, convnext: stochastic depth of the last block
  std::string mlp = "1024-1024-1024";     ///< expander (--mlp)
  std::string expander_norm = "batch";    ///< batch | layer (expander_norm_choices)
  bool shared_weights = true;
  std::string arch_b;  ///< second branch without shared weights (empty: arch)
  /// Weights for the backbone at the start of a new run (not on resume): a safetensors or
  /// torch.save file with torchvision's names (load_encoder_weights). Empty: random.
  std::string init_backbone;
};

/// How: optimizer and schedule.
struct OptimConfig {
  OptimizerKind optimizer = OptimizerKind::AdamW;
  int64_t epochs = 12;
  int64_t batch_size = 128;  ///< the global batch (split over the processes)
  double base_lr = 1e-3;     ///< lr = base_lr * batch / 256 (LARS, SGD); AdamW: lr = base_lr
  double wd = 1e-6;
  double momentum = 0.9;  ///< LARS, SGD
  double eta = 1e-3;      ///< LARS trust coefficient
  bool clip_lr = false;   ///< LARS: solo-learn's clipping
  double warmup_epochs = 1.0;
  double end_lr_ratio = 0.001;
};

/// The objective (objective.h) and its weights (VICRegLossOptions).
struct LossConfig {
  std::string objective = "vicreg";  ///< one of objective_names()
  double sim_coeff = 25.0, std_coeff = 25.0, cov_coeff = 1.0;
  LossPreset loss_preset = LossPreset::Official;
};

/// A plain switch: on or off (--tensorboard on|off).
enum class OnOff { On, Off };
template <>
const NameTable<OnOff>& name_table<OnOff>();

/// Where and how fast the run goes; never changes what it computes.
struct RuntimeConfig {
  /// Where the data are: empty means, on resume, where the run found them, else the data set's
  /// default (fashion-mnist: Debian's /usr/share/datasets/fashion-mnist).
  std::string data_dir;
  /// Where the held-out split is (DatasetConfig::val_dir); empty means, on resume, where the run
  /// found it, else beside the training data.
  std::string val_dir;
  std::string device = "cpu";  ///< cpu, cuda, cuda:N
  int threads = 0;             ///< intra-op threads; 0: one per core
  int workers = 2;             ///< loader threads
  int prefetch = 6;            ///< batches prepared ahead
  /// Empty: runs/NAME, NAME the data's (TrainConfig::default_exp_dir).
  std::string exp_dir;
  int64_t log_every = 20;  ///< steps per metrics line
  int64_t max_steps = 0;   ///< stop after this many steps in all (0: no limit)
  /// Checkpoints besides those at epoch ends and at the end: every N steps (0: no), and after M
  /// minutes of work since the last one (0: no), so that a kill -9 loses at most that much.
  int64_t checkpoint_every = 0;
  double checkpoint_minutes = 10;
  int64_t eval_every = 0;     ///< kNN probe on the test split every N epochs (0: never)
  int64_t eval_bank = 10000;  ///< training samples in the kNN bank (the first ones; 0: all)
  /// The forward passes' precision (precision.h); a run records the one auto chose.
  Precision precision = Precision::Auto;
  Toggle channels_last = Toggle::Auto;  ///< convolutional backbones in channels_last
  /// How the convolutions run under CPU bf16 (precision.h); a run records the one it used.
  CpuBf16Conv bf16_conv = CpuBf16Conv::Auto;
  Toggle loss_scale = Toggle::Auto;  ///< dynamic loss scaling; auto: with fp16
  int64_t max_skipped_steps = 20;    ///< loss scaling: skipped steps in a row before stopping
  /// Unreadable image files during training are counted, logged and skipped (LoaderOptions)
  /// instead of stopping the run.
  bool skip_bad_images = false;
  /// TensorBoard event files of metrics.jsonl's numbers in the experiment directory (rank 0).
  OnOff tensorboard = OnOff::On;
  /// The online linear probe (evaluate.h: OnlineProbe): auto is on when the data have labels.
  Toggle online_probe = Toggle::Auto;
};

/// The process group (WORLD_SIZE > 1; distributed.h).
struct DistributedConfig {
  bool sync_bn = true;  ///< BatchNorm statistics over all ranks (the reference's)
  DistBackend dist_backend = DistBackend::Auto;
  double dist_timeout = 300;  ///< seconds a rank waits for the others before giving up
};

/// Everything a run depends on. The defaults are the default Fashion-MNIST run (docs/training.md).
struct TrainConfig {
  DataConfig data;
  ModelConfig model;
  OptimConfig optim;
  LossConfig loss;
  uint64_t seed = 0;
  RuntimeConfig runtime;
  DistributedConfig distributed;

  /// Throws UsageError (SettingError, naming the settings by key) for impossible values (batch
  /// < 2, epochs < 1, negative rates, an unknown backbone or objective, a backbone that does not
  /// fit the data kind, its family's own ranges, ...). Data-dependent checks happen later.
  void validate() const;
  /// Whether the model's backbones (both, without shared weights) are convolutional (their
  /// families' traits) and the data images: channels_last and the CPU bf16 convolution modes
  /// apply.
  bool convolutional() const;
  /// The recipe used: data.recipe, or the data set's natural one ("" for vector data).
  std::string resolved_recipe() const;
  /// The experiment directory of a run without --exp-dir: runs/NAME, NAME the data set's name
  /// for the built-in ones, the folder's (or .npy file's) name for image-folder and npy; a
  /// folder called train, val or test is named by its parent.
  std::string default_exp_dir() const;
  /// runtime.exp_dir (its default when empty) and every path setting (data_dir, val_dir,
  /// classes, init_backbone) made absolute, so that config.json is read the same from anywhere.
  void resolve_paths();

  // The modules' own option structs, each built here and nowhere else.
  DatasetConfig dataset_config(Split split) const;
  /// The pretraining views of images of `channels` channels: the resolved recipe with
  /// --image-size and --recipe-overrides applied.
  Recipe recipe(int64_t channels) const;
  /// The crop size the recipe gives images of `channels` channels (0 for vector data).
  int64_t crop_size(const Dataset& data) const;
  EncoderConfig encoder_config(const std::string& arch, int64_t in_channels, int64_t image_size,
                               int64_t in_features) const;
  /// The model on data shaped like `data` (channels, the recipe's crop size, features).
  VICRegModelConfig model_config(const Dataset& data) const;
  OptimizerConfig optimizer_config() const;
  /// The learning-rate schedule for this many steps per epoch.
  WarmupCosineSchedule schedule(int64_t steps_per_epoch) const;
  VICRegLossOptions loss_options() const;
  /// The objective of loss.objective with its settings; `check_finite`: reject NaN or Inf
  /// embeddings with a clear error (off under loss scaling, which skips such steps).
  std::unique_ptr<Objective> objective(bool check_finite = true) const;
  /// Rank `rank` of `world` processes.
  LoaderOptions loader_options(int rank, int world) const;
  DistributedOptions distributed_options() const;
};

/// The objectives a run trains with ("vicreg"), listed in src/run/objectives.cpp.
const std::vector<std::string>& objective_names();
/// The terms of the objective `name`, as its metrics lines hold them. Throws UsageError for an
/// unknown name.
const ObjectiveTerms& objective_terms(const std::string& name);

/// What expander_norm takes: batch, layer.
const std::vector<std::string>& expander_norm_choices();

/// What --recipe takes: the image recipes (recipe_names) and "vector" (vector data's own).
const std::vector<std::string>& recipe_choices();

/// The sections of TrainConfig.
enum class Section { Data, Model, Optim, Loss, Seed, Runtime, Distributed };
template <>
const NameTable<Section>& name_table<Section>();

/// True for the sections the command line decides on resume (runtime, distributed).
inline bool decided_by_command_line(Section s) {
  return s == Section::Runtime || s == Section::Distributed;
}

/// One setting of the table: its section, its key (the flag without "--", '_' for '-'), the
/// help text of its flag, and another name of the flag (or nullptr).
struct Setting {
  Section section;
  const char* key;
  const char* help;
  const char* alias = nullptr;
  /// The names a text setting takes (the CLI checks and lists them); null: any text.
  const std::vector<std::string>& (*choices)() = nullptr;
};

/// Calls visit(const Setting&, field&) for every setting of `config`, in the order of the
/// sections. The one list of settings: JSON, flags and resume all go through it.
template <class Config, class Visit>
void for_each_setting(Config& c, Visit&& visit) {
  using S = Section;
  // data
  visit(Setting{S::Data, "dataset", "fashion-mnist, mnist, cifar10, cifar100, image-folder, npy"},
        c.data.dataset);
  visit(Setting{S::Data, "recipe", "Augmentation recipe (default: the data set's)", nullptr,
                recipe_choices},
        c.data.recipe);
  visit(Setting{S::Data, "image_size", "Crop size (0: the recipe's)"}, c.data.image_size);
  visit(Setting{S::Data, "recipe_overrides",
                "Change the recipe's pretraining views: key=value items separated by commas, one "
                "value for both views or a/b for the first and second; keys crop_scale (smallest "
                "crop's area fraction), brightness, contrast, saturation, hue (jitter strengths), "
                "and the probabilities flip, jitter, grayscale, blur, solarize. E.g. "
                "crop_scale=0.4,solarize=0/0.2"},
        c.data.recipe_overrides);
  visit(Setting{S::Data, "channels", "image-folder: decode to 3 (RGB) or 1 channel"},
        c.data.channels);
  visit(Setting{S::Data, "holdout",
                "Hold out this fraction of the training data (class-stratified, the same samples "
                "for every run) as the evaluation split; pretraining never sees it (0: the data "
                "set's own test/validation split)"},
        c.data.holdout);
  visit(Setting{S::Data, "classes",
                "image-folder: a file of class folder names, one per line (e.g. ImageNet-100's "
                "list); only those classes are used, in both splits"},
        c.data.classes);
  // model
  visit(Setting{S::Model, "arch", backbone_help().c_str(), nullptr, backbone_names}, c.model.arch);
  visit(Setting{S::Model, "width", "convnet: channels of the first stage"}, c.model.width);
  visit(Setting{S::Model, "stages", "convnet: stages"}, c.model.stages);
  visit(Setting{S::Model, "final_conv",
                "convnet: channels of a last 1x1 conv + BatchNorm + ReLU before the pooling, "
                "the representation's size (0: none; the representation is the last stage's)"},
        c.model.final_conv);
  visit(Setting{S::Model, "encoder_mlp", "mlp backbone: hidden layers"}, c.model.encoder_mlp);
  visit(Setting{S::Model, "patch_size",
                "vit: patch side in px, dividing the image size (0: the arch's, 16; vit_b_32's "
                "32; Fashion-MNIST's 28 px: 4, 7 or 14)"},
        c.model.patch_size);
  visit(Setting{S::Model, "depth", "vit: transformer blocks (0: the arch's, 12; 24 for large)"},
        c.model.depth);
  visit(Setting{S::Model, "class_token",
                "vit: a learned class token ahead of the patch tokens (--no-class-token: none, "
                "as I-JEPA's; needs --mean-pool)"},
        c.model.class_token);
  visit(Setting{S::Model, "mean_pool",
                "vit: the representation is the mean of the patch tokens, not the class token"},
        c.model.mean_pool);
  visit(Setting{S::Model, "drop_path",
                "vit, convnext: stochastic depth, the drop rate of the last block (earlier ones "
                "linearly less; 0.1 in the ViT and ConvNeXt recipes)"},
        c.model.drop_path);
  visit(Setting{S::Model, "mlp", "Expander layer sizes, e.g. 8192-8192-8192"}, c.model.mlp);
  visit(Setting{S::Model, "expander_norm",
                "The expander's normalisation: batch (BatchNorm, the reference's) or layer "
                "(LayerNorm, as VICRegL's projectors for ConvNeXts)",
                nullptr, expander_norm_choices},
        c.model.expander_norm);
  visit(
      Setting{
          S::Model, "shared_weights",
          "Both views through the same backbone and expander, or (--no-shared-weights) one each"},
      c.model.shared_weights);
  visit(Setting{S::Model, "arch_b", "Second branch's backbone with --no-shared-weights", nullptr,
                backbone_names},
        c.model.arch_b);
  visit(Setting{S::Model, "init_backbone",
                "Start the backbone from these weights (new runs only): a safetensors or "
                "torch.save state dict with torchvision's names, e.g. torchvision's resnet50, the "
                "official VICReg resnet50.pth, or a file from vicreg export; fc.* is skipped"},
        c.model.init_backbone);
  // optim
  visit(Setting{S::Optim, "optimizer", "lars, adamw, sgd"}, c.optim.optimizer);
  visit(Setting{S::Optim, "epochs", "Epochs (the schedule's length)"}, c.optim.epochs);
  visit(Setting{S::Optim, "batch_size", "Batch size (global: split over the processes)"},
        c.optim.batch_size);
  visit(Setting{S::Optim, "base_lr",
                "Base learning rate; lars/sgd use base-lr * batch-size / 256, adamw base-lr"},
        c.optim.base_lr);
  visit(Setting{S::Optim, "wd", "Weight decay"}, c.optim.wd);
  visit(Setting{S::Optim, "momentum", "LARS/SGD momentum"}, c.optim.momentum);
  visit(Setting{S::Optim, "eta", "LARS trust coefficient"}, c.optim.eta);
  visit(Setting{S::Optim, "clip_lr", "LARS: solo-learn's lr clipping"}, c.optim.clip_lr);
  visit(Setting{S::Optim, "warmup_epochs", "Linear warm-up (epochs, per step)"},
        c.optim.warmup_epochs);
  visit(Setting{S::Optim, "end_lr_ratio", "Cosine decay ends at this fraction of the peak"},
        c.optim.end_lr_ratio);
  // loss
  visit(Setting{S::Loss, "objective",
                "What pretraining minimises: vicreg (invariance, variance and covariance of the "
                "two views' embeddings)",
                nullptr, objective_names},
        c.loss.objective);
  visit(Setting{S::Loss, "sim_coeff", "Invariance weight (lambda)"}, c.loss.sim_coeff);
  visit(Setting{S::Loss, "std_coeff", "Variance weight (mu)"}, c.loss.std_coeff);
  visit(Setting{S::Loss, "cov_coeff", "Covariance weight (nu)"}, c.loss.cov_coeff);
  visit(Setting{S::Loss, "loss_preset", "official or paper"}, c.loss.loss_preset);
  // seed
  visit(Setting{S::Seed, "seed", "Seed of initialisation, data order and augmentation"}, c.seed);
  // runtime
  visit(Setting{S::Runtime, "data_dir",
                "Folder of the data (fashion-mnist: /usr/share/datasets/fashion-mnist; "
                "image-folder: a folder with train/<class>/ and val/<class>/ (or test/), or of "
                "class folders; npy: a folder with train.npy [+ train_labels.npy] and val.npy or "
                "test.npy, or the .npy file; on resume: where the run found them)"},
        c.runtime.data_dir);
  visit(Setting{S::Runtime, "val_dir",
                "The held-out split, if not beside the training data: image-folder: a folder of "
                "the same class folders; npy: a .npy file (FILE_labels.npy beside it); "
                "fashion-mnist, mnist, cifar: the folder of the test files (default: val/ or "
                "test/ beside train/, val.npy or test.npy beside train.npy, the test files)",
                "val_data"},
        c.runtime.val_dir);
  visit(Setting{S::Runtime, "device", "cpu, cuda or cuda:N"}, c.runtime.device);
  visit(Setting{S::Runtime, "threads", "Intra-op threads (0: one per core)"}, c.runtime.threads);
  visit(Setting{S::Runtime, "workers", "Data loader threads"}, c.runtime.workers);
  visit(Setting{S::Runtime, "prefetch", "Batches prepared ahead"}, c.runtime.prefetch);
  visit(Setting{S::Runtime, "exp_dir",
                "Experiment directory (config.json, metrics.jsonl, checkpoint.pt, backbone.pt); "
                "default runs/NAME, NAME the data set's or the data folder's"},
        c.runtime.exp_dir);
  visit(Setting{S::Runtime, "log_every", "Steps per metrics line"}, c.runtime.log_every);
  visit(Setting{S::Runtime, "max_steps",
                "Stop after this many optimizer steps in all (the schedule still follows "
                "--epochs; 0: no limit)"},
        c.runtime.max_steps);
  visit(Setting{S::Runtime, "checkpoint_every",
                "Also write checkpoint.pt every N steps (0: only at epoch ends, at the end, on a "
                "stop, and after --checkpoint-minutes)"},
        c.runtime.checkpoint_every);
  visit(Setting{S::Runtime, "checkpoint_minutes",
                "Also write checkpoint.pt when this many minutes of training have passed since "
                "the last one, so that a crash or kill -9 loses at most that much work (0: no)"},
        c.runtime.checkpoint_minutes);
  visit(Setting{S::Runtime, "eval_every",
                "kNN probe (k 20, T 0.07) on the test split every N epochs, logged to "
                "metrics.jsonl (0: never)"},
        c.runtime.eval_every);
  visit(
      Setting{S::Runtime, "eval_bank", "Training samples in the kNN bank of --eval-every (0: all)"},
      c.runtime.eval_bank);
  visit(Setting{S::Runtime, "precision",
                "Forward passes in auto, fp32, bf16 or fp16 (autocast; the loss, weights and "
                "optimizer stay fp32). auto: bf16 on CPUs with bf16 instructions and on GPUs that "
                "have it, fp16 on older GPUs, else fp32"},
        c.runtime.precision);
  visit(Setting{S::Runtime, "channels_last",
                "Convolutional backbones' weights and batches in channels_last memory format: "
                "auto (on for GPUs; on a CPU, a new run times a few steps in both formats and "
                "takes the faster; a resumed run keeps the one it recorded), on or off"},
        c.runtime.channels_last);
  visit(Setting{S::Runtime, "bf16_conv",
                "How the convolutions run in bf16 on a CPU: auto (the fastest measured for the "
                "CPU: fp32-backward with AMX, fp32 on other Intel CPUs, bf16 elsewhere), bf16 "
                "(autocast's; the weight gradient of stride-2 layers with at most 64 output pixels "
                "as one matrix product of gathered patches), fp32-backward (bf16 forward; fp32 "
                "backward of the layers with at most 16 output pixels and at least 128 input "
                "channels) or fp32 (outside autocast; the linear layers stay bf16). A resumed run "
                "left on auto keeps the one it recorded"},
        c.runtime.bf16_conv);
  visit(Setting{S::Runtime, "loss_scale",
                "Dynamic loss scaling (PyTorch's GradScaler): auto (with fp16 only), on or off"},
        c.runtime.loss_scale);
  visit(Setting{S::Runtime, "max_skipped_steps",
                "With loss scaling: stop as diverged after this many skipped steps in a row"},
        c.runtime.max_skipped_steps);
  visit(Setting{S::Runtime, "skip_bad_images",
                "image-folder: skip image files that cannot be read (undecodable, vanished), "
                "each logged once and counted as bad_images in metrics.jsonl, instead of "
                "stopping with an error that names the file"},
        c.runtime.skip_bad_images);
  visit(Setting{S::Runtime, "tensorboard",
                "on: TensorBoard event files (events.out.tfevents.*) of every number in "
                "metrics.jsonl, in the experiment directory (tensorboard --logdir runs/); off"},
        c.runtime.tensorboard);
  visit(Setting{S::Runtime, "online_probe",
                "A linear classifier trained on the detached representations of the labelled "
                "training batches while pretraining (its own SGD, lr 0.1; no gradient reaches "
                "the backbone): training top-1 in every metrics line, held-out top-1 at each "
                "--eval-every. auto (on when the data have labels), on or off"},
        c.runtime.online_probe);
  // distributed
  visit(Setting{S::Distributed, "sync_bn",
                "With several processes (torchrun), BatchNorm statistics over all of them "
                "(as the reference), or (--no-sync-bn) each process's own"},
        c.distributed.sync_bn);
  visit(Setting{S::Distributed, "dist_backend",
                "With several processes: auto (NCCL on CUDA, else Gloo), gloo or nccl"},
        c.distributed.dist_backend);
  visit(Setting{S::Distributed, "dist_timeout",
                "With several processes: seconds to wait for the others (rendezvous and every "
                "collective) before reporting the missing rank and stopping"},
        c.distributed.dist_timeout);
}

/// The flag of a setting's key: "--base-lr" for "base_lr".
std::string flag_name(const char* key);

/// An error's message as the CLI says it: each setting it names by key (Error::settings(),
/// "batch_size") said as its flag ("--batch-size"); "KEY off" for a switch as its --no- flag.
std::string with_flag_names(const Error& error);

/// The config as JSON: one object per section ("seed" at the top).
nlohmann::json to_json(const TrainConfig& config);

/// Reads the settings present in `json` over `config`: sections ({"optim": {"epochs": 3}}) or
/// flat keys ({"epochs": 3}, vicreg 0.1's config.json). Throws UsageError naming the key for an
/// unknown key or a value of the wrong type or name.
void update_from_json(TrainConfig& config, const nlohmann::json& json);

/// `config` with the settings of a JSON file (--config) read over it; with `keys`, the keys of the
/// settings the file names are appended to it. Throws FormatError when the file cannot be read or
/// is not JSON, UsageError for a bad setting; both name the file.
TrainConfig read_config_file(const std::string& path, TrainConfig config = {},
                             std::vector<std::string>* keys = nullptr);

/// The config a run resumed from a checkpoint continues with: `stored`'s data, model, optim, loss
/// and seed; `given`'s runtime and distributed sections (an empty runtime.data_dir keeps the
/// stored one).
TrainConfig config_for_resume(const TrainConfig& stored, const TrainConfig& given);

/// What keeps a run of `stored`'s settings from going on under the settings `asked` for, as
/// "--flag value-of-stored" items: another data set, another data folder (only when `asked`
/// names one) or other model settings (init_backbone aside: it only starts a new run). Empty:
/// nothing. Paths are compared as resolve_paths() makes them.
std::vector<std::string> resume_conflicts(const TrainConfig& stored, const TrainConfig& asked);

/// The settings of the sections a checkpoint decides (not runtime, not distributed) whose values
/// differ between `a` and `b`, as "--flag value" (the value of `a`, as JSON); with `only`, just
/// those whose key is in it.
std::vector<std::string> differing_settings(const TrainConfig& a, const TrainConfig& b,
                                            const std::vector<std::string>* only = nullptr);

/// The keys of the settings a JSON config names (flat or in sections).
std::vector<std::string> setting_keys(const nlohmann::json& json);

}  // namespace vicreg
