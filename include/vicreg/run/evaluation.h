// Evaluating what a run produced (vicreg eval, vicreg embed): the subject (a trained backbone,
// a whole checkpoint, weights in the model of a config, or a baseline) with the data it belongs
// to, and a protocol of evaluate.h applied to it with the library's defaults.
#pragma once

#include "vicreg/evaluate.h"
#include "vicreg/run/config.h"

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace vicreg {

/// The baselines a pretrained model must beat: pixels (the normalised image, flattened) and
/// random-init (the untrained model of a config, initialised with its seed).
enum class Baseline { Pixels, RandomInit };
template <>
const NameTable<Baseline>& name_table<Baseline>();

/// What to evaluate: exactly one of backbone, checkpoint, init_backbone, baseline.
struct SubjectSpec {
  std::string backbone;       ///< a run's backbone.pt, an exported or torchvision state dict
  std::string checkpoint;     ///< a run's checkpoint.pt (backbone and expander)
  std::string init_backbone;  ///< weights for the backbone of `config`'s model
  std::optional<Baseline> baseline;
  /// The run settings of init_backbone and baseline (default: the default run).
  std::optional<TrainConfig> config;
  std::string data_dir;  ///< where the data are; empty: as in training
  /// Data settings over the subject's own (a run's; the default run's for foreign weights and
  /// baselines). Another --dataset starts its data settings (recipe, crop size, holdout, class
  /// list, folders) from that data set's defaults. Foreign weights (a torchvision or model-zoo
  /// state dict) with a --data-dir need --dataset.
  std::optional<DatasetKind> dataset;
  std::optional<std::string> recipe, classes;
  std::optional<int64_t> image_size, channels;
  std::optional<double> holdout;
  std::string val_dir;  ///< the held-out split (DatasetConfig::val_dir); empty: as in training
  std::string device = "cpu";  ///< cpu, cuda, cuda:N
  /// Features are extracted under autocast in this precision (auto: as training chooses it).
  Precision precision = Precision::Auto;
  Toggle channels_last = Toggle::Auto;  ///< convolutional backbones in channels_last
  /// How the convolutions run in CPU bf16 (auto: as the run recorded, else the CPU's default).
  CpuBf16Conv bf16_conv = CpuBf16Conv::Auto;
  /// The user's word that the weights never saw these data: a held-out split that the run's own
  /// pretraining data contain (another --holdout than the run's) is then measured on all the same.
  bool pretrained_elsewhere = false;
};

/// A subject loaded, in eval mode on its device, with its data.
struct Subject {
  std::string name;  ///< the file, or "baseline:NAME"
  TrainConfig config;
  Encoder encoder;
  Expander projector{nullptr};  ///< checkpoints only
  Dataset train, test;          ///< the splits asked for
  EvalTransform transform;
  torch::Device device = torch::kCPU;
  PrecisionChoice precision;  ///< of feature extraction (and of finetune's backbone)
  std::string bf16_conv;      ///< the CpuBf16Conv used in CPU bf16; empty where none applies
  /// The subject is a run's file (backbone.pt, checkpoint.pt) with the run's settings.
  bool from_run = false;
  /// The held-out split and whether pretraining saw it, as far as the run's settings tell:
  /// {"kind": "holdout" | "files" | "val_dir", "fraction" (holdout), "seen_in_pretraining": true,
  /// false, or null (other data than the run's, or no run), "declared_unseen": true when
  /// pretrained_elsewhere let a seen split through}.
  nlohmann::json held_out;
};

/// Checks that the paths `used` takes from a run's settings (`recorded`: data_dir, val_dir,
/// classes, wherever `used` has the recorded value) exist; throws FormatError naming the setting,
/// `run` (the file or folder it was recorded in) and the flag that gives another.
void check_recorded_paths(const TrainConfig& recorded, const TrainConfig& used,
                          const std::string& run);

/// Writes a TSV of `data`'s samples, one line per row after a header (row, sample, label,
/// class): the sample is the image file, or the row in the file(s) it came from (`data.rows`).
/// Throws FormatError naming the file when it cannot be written.
void write_sample_list(const std::string& path, const Dataset& data);

/// Loads the subject and the splits of its data set. Throws UsageError for a spec that does not
/// name exactly one subject, data that do not fit it, an unavailable device; FormatError for
/// missing or corrupt files.
Subject load_subject(const SubjectSpec& spec, const std::vector<Split>& splits);

/// Representations of `data` (with `embedding`, the expander's output: checkpoints only),
/// [N, D] float32 on the CPU.
torch::Tensor subject_features(Subject& subject, const Dataset& data, bool embedding);

/// A protocol and its settings; unset values take the protocol's default (ProtocolDefaults).
struct EvalRequest {
  Protocol protocol = Protocol::Linear;
  bool embedding = false;  ///< on the embedding instead of the representation (linear, knn)
  bool augment = false;    ///< linear: train the head on augmented images
  std::optional<int64_t> epochs;
  int64_t batch_size = 256;
  std::optional<double> lr, lr_backbone, wd;
  std::optional<double> label_fraction;  ///< finetune (default 0.1); not with train_subset
  /// A file of training image names, one per line (the reference's 1 % / 10 % ImageNet subsets):
  /// every protocol trains on just those (image-folder data).
  std::string train_subset;
  KnnOptions knn;
  uint64_t seed = 0;
};

/// Runs the protocol on the subject (its train and test splits). Throws UsageError when the
/// training split has fewer than two classes. Returns what `vicreg eval --json` writes:
/// protocol, top1, top5 (with more than 5 classes only), features, settings, diagnostics (the
/// collapse statistics of the test representation and, with an expander, embedding), rankme,
/// seconds, feature_seconds, threads, train_samples, test_samples, subject, dataset, and splits
/// (each split's source and samples, the test split's held_out record, and the number of classes).
nlohmann::json evaluate_subject(Subject& subject, const EvalRequest& request);

}  // namespace vicreg
