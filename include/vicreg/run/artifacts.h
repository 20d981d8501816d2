// What a run leaves on disk, and reading it back.
//
// An experiment directory (--exp-dir) holds:
//   config.json     the fully resolved TrainConfig (readable again with --config)
//   metrics.jsonl   one JSON object per log interval, and one per kNN probe
//   checkpoint.pt   model, optimizer, step, epoch, RNG state, config, input shape; written
//                   atomically (write_file_atomically) every epoch, at the end, on a stop, and
//                   every --checkpoint-every steps / --checkpoint-minutes
//   checkpoint.prev.pt  the one before, kept until the next is whole: resume falls back to it
//                   when checkpoint.pt is damaged (recover_checkpoint)
//   backbone.pt     the final backbone alone with what is needed to rebuild it
//
// Checkpoints and backbones are LibTorch archives (torch::save) with a checksum (CRC-32 in the
// zip's comment, verified on reading); their config is stored as JSON, so files written by
// vicreg 0.1 (flat config keys, no checksum) read unchanged. LibTorch reads these archives with
// its TorchScript loader: they are files a run wrote, to be trusted as such. Weights from
// elsewhere belong in safetensors or torch.save state dicts, which vicreg's own restricted
// readers take (io/safetensors.h, io/torch_pickle.h).
#pragma once

#include "vicreg/evaluate.h"
#include "vicreg/io/named_tensors.h"
#include "vicreg/models.h"
#include "vicreg/models/registry.h"
#include "vicreg/run/config.h"

#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace vicreg {

/// The files of an experiment directory.
struct ExperimentDir {
  std::string root;
  std::string config() const;      ///< root/config.json
  std::string metrics() const;     ///< root/metrics.jsonl
  std::string checkpoint() const;  ///< root/checkpoint.pt
  std::string backbone() const;    ///< root/backbone.pt
};

/// Writes a LibTorch archive to `path` with write_file_atomically, its checksum added. Throws
/// FormatError.
void save_archive(torch::serialize::OutputArchive& archive, const std::string& path);

/// Loads a LibTorch archive; `what` names the file in errors ("checkpoint", "backbone"). Throws
/// FormatError when it is missing, truncated, damaged (its checksum does not match) or not such
/// an archive.
void load_archive(torch::serialize::InputArchive& archive, const std::string& path,
                  const std::string& what);

/// The checksum of a zip archive's bytes: CRC-32 of everything before its end-of-central-
/// directory comment, written there as "vicreg crc32 XXXXXXXX". add_checksum throws FormatError
/// for bytes that are no zip archive with an empty comment.
enum class ArchiveChecksum { Absent, Good, Bad };
void add_checksum(std::string& zip);
ArchiveChecksum verify_checksum(std::string_view bytes);

/// Copies the parameters and buffers of `archive` into `module` by name, checking every shape
/// (LibTorch 1.13's Module::load would take tensors of any shape). Throws FormatError naming the
/// first missing or mismatched tensor.
void load_module_checked(torch::nn::Module& module, torch::serialize::InputArchive& archive);

/// What a checkpoint holds besides the model's and the optimizer's tensors.
struct CheckpointState {
  int64_t step = 0;         ///< optimizer steps done
  int64_t epoch = 0;        ///< epochs completed (written for readers; step decides)
  double elapsed_s = 0;     ///< wall seconds of training so far, over all sessions
  torch::Tensor rng_state;  ///< the CPU generator's state
  TrainConfig config;
  /// The input shape, so that the backbone can be rebuilt without the data (export).
  int64_t in_channels = 0, image_size = 0, in_features = 0;
  /// Loss scaling: GradScaler::state() (undefined when the run has none; absent before 0.2) and
  /// the steps skipped in a row up to this one.
  torch::Tensor loss_scaler;
  int64_t skipped_in_a_row = 0;
  /// read_checkpoint: the file held an online probe's state, now in the probe given.
  bool online_probe = false;
};

/// Where the checkpoint before `path` is kept: checkpoint.pt -> checkpoint.prev.pt.
std::string previous_checkpoint(const std::string& path);

/// Writes checkpoint.pt atomically: `model`, `optimizer`, `state` and, when given, the online
/// probe (its weights, statistics and optimizer state); the checkpoint it replaces becomes
/// previous_checkpoint(path) first.
void write_checkpoint(const std::string& path, const torch::nn::Module& model,
                      const torch::optim::Optimizer& optimizer, const CheckpointState& state,
                      const OnlineProbeImpl* probe = nullptr);

/// Loads a checkpoint into `model` and `optimizer` (built from its config: read_checkpoint_config)
/// and, when both the file and the call have one, into the online `probe` (state.online_probe
/// says so); returns the rest. Throws FormatError naming the file when it is missing, corrupt or
/// does not fit the model or the probe.
CheckpointState read_checkpoint(const std::string& path, torch::nn::Module& model,
                                torch::optim::Optimizer& optimizer,
                                OnlineProbeImpl* probe = nullptr);

/// The checkpoint a run whose latest checkpoint is `path` resumes from: `path` when it reads;
/// previous_checkpoint(path) when `path` is missing or damaged (then renamed to PATH.damaged, and
/// `warning` says so); "" when there is neither. Throws FormatError when every one there is
/// damaged. Call it holding the experiment directory's lock.
std::string recover_checkpoint(const std::string& path, std::string* warning);

/// Reads the config stored in a checkpoint.
TrainConfig read_checkpoint_config(const std::string& path);

/// Reads a run's config.json as the run was trained: settings the file lacks because it was
/// written before they existed take the values of that time, not today's defaults (as the
/// checkpoint's config is read).
TrainConfig read_run_config_file(const std::string& path);

/// A checkpoint.pt's whole model (backbones and expanders), rebuilt from the config stored with it
/// and the shape of `data`, weights loaded with their shapes checked, in eval mode. Throws naming
/// the file if it is missing, corrupt or does not fit.
struct TrainedModel {
  VICReg model{nullptr};
  TrainConfig config;
  int64_t step = 0;
};
TrainedModel read_model(const std::string& checkpoint, const Dataset& data);

/// A backbone: the encoder rebuilt from the settings stored with it, weights loaded, in eval
/// mode, with the run's config and the input shape it was trained on.
struct Backbone {
  Encoder encoder;
  TrainConfig config;
  int64_t in_channels = 0, image_size = 0, in_features = 0;
};

/// Writes a run's backbone.pt: the encoder with its config and input shape.
void write_backbone(const Backbone& backbone, const std::string& path);

/// Reads
///   - a run's backbone.pt;
///   - a safetensors file written by export_backbone() (its metadata carries the settings);
///   - any other safetensors or torch.save state dict of an encoder a backbone family recognises
///     (a ResNet with torchvision's names: torchvision's, the official VICReg releases, wide ones
///     included; a ConvNet's or an mlp's own names): the architecture is read off the weights
///     (models/registry.h's infer_encoder_config); config is the default one with that
///     architecture, image_size 0 (unknown).
/// Throws naming the file if it is missing, not a backbone, or its weights do not fit.
Backbone read_backbone(const std::string& path);
/// read_backbone(path).encoder
Encoder load_backbone(const std::string& path);

/// The backbone of a checkpoint.pt (written by vicreg 0.1 since the input shape is stored in it).
Backbone read_checkpoint_backbone(const std::string& path);

/// How to build the torchvision model that a backbone's weights load into (Python, one line; its
/// family's torchvision_recipe); empty where torchvision has none (resnet200, the wide ResNets,
/// convnet, mlp).
std::string torchvision_recipe(const Backbone& backbone);

/// The inputs an image backbone expects, as torchvision writes it:
/// "transforms.Normalize(mean=[...], std=[...]) on [0, 1] images of S x S" (the evaluation
/// transform of its run's recipe); empty for vectors and for weights without a run's settings.
std::string input_normalisation(const Backbone& backbone);

/// Writes a backbone as safetensors with torchvision's names (a ResNet loads into
/// torchvision.models.resnetNN with strict=False, only fc.* missing; the small-image stem needs
/// conv1 = Conv2d(C, 64, 3, 1, 1, bias=False) and maxpool = Identity()). The metadata records
/// the settings (vicreg.config, vicreg.arch, vicreg.in_channels, vicreg.image_size,
/// vicreg.in_features), for images the normalisation (vicreg.mean, vicreg.std: JSON arrays, and
/// vicreg.input: input_normalisation) and, in vicreg.torchvision, how to build the torchvision
/// model.
/// Returns the number of tensors written.
int64_t export_backbone(const Backbone& backbone, const std::string& path);

}  // namespace vicreg
