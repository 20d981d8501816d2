// The list of backbone families (models/registry.h), from src/models/families.def.
#include "vicreg/models/registry.h"

#include "vicreg/error.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/names.h"

namespace vicreg {

#define VICREG_FAMILY(name) BackboneFamily name##_family();
#include "families.def"
#undef VICREG_FAMILY

const std::vector<BackboneFamily>& backbone_families() {
  static const std::vector<BackboneFamily> families = {
#define VICREG_FAMILY(name) name##_family(),
#include "families.def"
#undef VICREG_FAMILY
  };
  return families;
}

const std::vector<std::string>& backbone_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> all;
    for (const BackboneFamily& f : backbone_families()) {
      all.insert(all.end(), f.archs.begin(), f.archs.end());
    }
    return all;
  }();
  return names;
}

const BackboneFamily& backbone_family(const std::string& arch) {
  for (const BackboneFamily& f : backbone_families()) {
    for (const std::string& a : f.archs) {
      if (a == arch) return f;
    }
  }
  throw UsageError("unknown backbone '" + arch + "': use " + join_names(backbone_names()));
}

const BackboneTraits& backbone_traits(const std::string& arch) {
  return backbone_family(arch).traits;
}

const std::string& backbone_help() {
  static const std::string help = [] {
    std::string h = "Backbone: ";
    for (const BackboneFamily& f : backbone_families()) {
      h += (&f == &backbone_families().front() ? "" : "; ") + f.help;
      if (!f.traits.optimizer_hint.empty()) h += ", usually with " + f.traits.optimizer_hint;
    }
    return h;
  }();
  return help;
}

EncoderWeights::EncoderWeights(std::string prefix, const NamedTensors& weights)
    : prefix_(std::move(prefix)) {
  for (const auto& [name, t] : weights) {
    if (name.compare(0, prefix_.size(), prefix_) == 0) by_name_.emplace(name, t);
  }
}

const torch::Tensor* EncoderWeights::find(const std::string& name) const {
  const auto it = by_name_.find(prefix_ + name);
  return it == by_name_.end() ? nullptr : &it->second;
}

std::optional<EncoderWeights> encoder_weights(const NamedTensors& weights, const std::string& first,
                                              const std::string& source) {
  std::vector<std::string> prefixes;
  for (const auto& [name, t] : weights) {
    if (name.size() >= first.size() &&
        name.compare(name.size() - first.size(), first.size(), first) == 0) {
      const std::string p = name.substr(0, name.size() - first.size());
      if (p.empty() || p.back() == '.') prefixes.push_back(p);
    }
  }
  if (prefixes.empty()) return std::nullopt;
  return EncoderWeights(choose_encoder_prefix(prefixes, source), weights);
}

NamedTensors weights_in_own_names(const NamedTensors& weights, const std::string& source) {
  for (const BackboneFamily& f : backbone_families()) {
    if (!f.own_names) continue;
    if (std::optional<NamedTensors> renamed = f.own_names(weights, source)) return *renamed;
  }
  return weights;
}

EncoderConfig infer_encoder_config(const NamedTensors& weights, const std::string& source) {
  std::string families;
  for (const BackboneFamily& f : backbone_families()) {
    if (!f.recognise) continue;
    if (std::optional<EncoderConfig> ec = f.recognise(weights, source)) return *ec;
    families += (families.empty() ? "" : ", ") + f.name;
  }
  throw FormatError(source + ": holds the weights of no backbone vicreg knows (" + families +
                    ": torchvision's names such as layer1.0.conv1.weight, timm's for a ViT, the "
                    "official ConvNeXt's) and no "
                    "vicreg metadata; name the architecture instead (the arch setting, "
                    "--arch on the command line)");
}

}  // namespace vicreg
