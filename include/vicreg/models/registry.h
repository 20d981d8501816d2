// The backbone families: the one place that knows which encoders exist.
//
// A family (ResNet, ConvNet, MLP, ...) is one source file under src/models/ that defines a
// function returning its BackboneFamily, and one line in src/models/families.def. Everything that
// depends on the kind of backbone goes through the registry: make_encoder(), the parameter count
// of stored settings, --arch's choices and help, config validation, reading weights without
// vicreg metadata (recognise), channels_last and the CPU bf16 convolution modes (traits), the
// torchvision recipe of an export, Python's vicreg.build_backbone. docs/architecture.md walks
// through adding a family.
#pragma once

#include "vicreg/io/named_tensors.h"
#include "vicreg/models.h"

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {

/// What the rest of the system needs to know about a family's encoders.
struct BackboneTraits {
  /// Inputs are images [N, C, H, W]; false: vectors [N, F].
  bool images = true;
  /// Made of 2-D convolutions run through conv2d_forward (kernels/conv.h): channels_last, the CPU
  /// bf16 convolution modes and the start-up memory-format timing apply. False for anything else
  /// (a transformer's linear layers gain nothing from them).
  bool convolutional = true;
  /// What forward_features() gives.
  FeatureLayout features = FeatureLayout::Map;
  /// The optimizer the family's references pretrain it with (named in the --arch help).
  std::string optimizer_hint;
};

struct BackboneFamily {
  std::string name;                ///< "resnet"
  std::vector<std::string> archs;  ///< the names make_encoder() takes: "resnet18", ...
  std::string help;                ///< one phrase for --arch's help
  BackboneTraits traits;
  /// Checks the family's own settings of `config` (not the input shape): throws UsageError naming
  /// the setting and the range it must be in.
  std::function<void(const EncoderConfig& config)> check_settings;
  /// Builds the encoder; the input shape (in_channels, image_size or in_features) is checked.
  std::function<Encoder(const EncoderConfig& config)> build;
  /// The parameters build(config) has, from the settings alone (no memory is allocated: a stored
  /// setting may ask for terabytes). Tested against count_parameters of the built encoder.
  std::function<double(const EncoderConfig& config)> parameter_count;
  /// The settings of the family's encoder whose weights `weights` holds (torchvision's names for
  /// a ResNet, possibly under a prefix such as "backbone." or "module."), or nullopt when it
  /// holds none of the family's. Throws FormatError naming `source` for weights that are the
  /// family's but of a shape vicreg does not build. Unset: never recognised.
  std::function<std::optional<EncoderConfig>(const NamedTensors& weights,
                                             const std::string& source)>
      recognise;
  /// `weights` renamed to the family's own names when they are in another layout the family
  /// reads (timm's ViT names, the official ConvNeXt's), under the same prefix; nullopt when they
  /// are not. Throws FormatError naming `source` for parts of that layout the family does not
  /// build. Unset: the family reads its own names only.
  std::function<std::optional<NamedTensors>(const NamedTensors& weights, const std::string& source)>
      own_names;
  /// How to build the torchvision model the encoder's exported weights load into (Python, one
  /// line); unset or "": torchvision has none.
  std::function<std::string(const EncoderImpl& encoder)> torchvision_recipe;
};

/// Every family, in the order of src/models/families.def.
const std::vector<BackboneFamily>& backbone_families();
/// The family that builds `arch`. Throws UsageError "unknown backbone 'x': use a, b or c".
const BackboneFamily& backbone_family(const std::string& arch);
/// Every name make_encoder() takes, family by family.
const std::vector<std::string>& backbone_names();
/// backbone_family(arch).traits
const BackboneTraits& backbone_traits(const std::string& arch);
/// The families' help phrases, joined: the --arch help.
const std::string& backbone_help();

/// The settings of the encoder whose weights `weights` holds, read off the weights by the first
/// family that recognises them. Throws FormatError naming `source` when none does.
EncoderConfig infer_encoder_config(const NamedTensors& weights, const std::string& source);

/// `weights` in the names vicreg's encoders have: the first family's own_names that reads them,
/// or `weights` as they are. What every reader of foreign weights calls before
/// infer_encoder_config and load_encoder_weights.
NamedTensors weights_in_own_names(const NamedTensors& weights, const std::string& source);

/// An encoder's tensors in a state dict, looked up by the encoder's own names.
class EncoderWeights {
 public:
  EncoderWeights(std::string prefix, const NamedTensors& weights);
  /// The tensor `name` (without the prefix), or null.
  const torch::Tensor* find(const std::string& name) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string prefix_;
  std::map<std::string, torch::Tensor> by_name_;
};

/// The tensors of the encoder in `weights` whose tensor `first` (its own name) sits under a
/// prefix ("", or ending in '.': "backbone.", "module.", ...): nullopt when no name ends so;
/// FormatError naming `source` when several prefixes do and none is the encoder's
/// (io/state_dict.h's choose_encoder_prefix).
std::optional<EncoderWeights> encoder_weights(const NamedTensors& weights, const std::string& first,
                                              const std::string& source);

}  // namespace vicreg
