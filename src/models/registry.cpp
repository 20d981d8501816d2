// The list of backbone families (models/registry.h), from src/models/families.def.
#include "vicreg/models/registry.h"

#include "vicreg/error.h"
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

std::vector<std::string> prefixes_of(const NamedTensors& weights, const std::string& suffix) {
  std::vector<std::string> prefixes;
  for (const auto& [name, t] : weights) {
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string p = name.substr(0, name.size() - suffix.size());
      if (p.empty() || p.back() == '.') prefixes.push_back(p);
    }
  }
  return prefixes;
}

EncoderConfig infer_encoder_config(const NamedTensors& weights, const std::string& source) {
  std::string families;
  for (const BackboneFamily& f : backbone_families()) {
    if (!f.recognise) continue;
    if (std::optional<EncoderConfig> ec = f.recognise(weights, source)) return *ec;
    families += (families.empty() ? "" : ", ") + f.name;
  }
  throw FormatError(source + ": holds the weights of no backbone vicreg knows (" + families +
                    ": for a ResNet, torchvision's names such as layer1.0.conv1.weight) and no "
                    "vicreg metadata; name the architecture instead (the arch setting, "
                    "--arch on the command line)");
}

}  // namespace vicreg
