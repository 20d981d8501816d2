// Weights out: a run's backbone as safetensors with torchvision's names, and what PyTorch needs to
// use it (run/artifacts.h: export_backbone, torchvision_recipe, input_normalisation).
#include "vicreg/run/artifacts.h"

#include "vicreg/evaluate.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"

#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace vicreg {

std::string torchvision_recipe(const Backbone& backbone) {
  const BackboneFamily& family = backbone_family(backbone.config.model.arch);
  return family.torchvision_recipe ? family.torchvision_recipe(*backbone.encoder) : "";
}

namespace {

/// The evaluation transform of an image backbone's run; none for vectors and foreign weights.
std::optional<EvalTransform> input_transform(const Backbone& b) {
  if (b.in_channels <= 0 || b.image_size <= 0 || b.in_features > 0) return std::nullopt;
  return eval_transform_for(b.config.resolved_recipe(), static_cast<int>(b.in_channels),
                            b.image_size);
}

std::string float_list(const std::vector<float>& v) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  return o.str() + "]";
}

}  // namespace

std::string input_normalisation(const Backbone& backbone) {
  const std::optional<EvalTransform> t = input_transform(backbone);
  if (!t) return "";
  return "transforms.Normalize(mean=" + float_list(t->mean) + ", std=" + float_list(t->std) +
         ") on [0, 1] images of " + std::to_string(t->size) + " x " + std::to_string(t->size);
}

int64_t export_backbone(const Backbone& backbone, const std::string& path) {
  const NamedTensors state = module_state(*backbone.encoder);
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"vicreg.arch", backbone.config.model.arch},
      {"vicreg.config", to_json(backbone.config).dump()},
      {"vicreg.in_channels", std::to_string(backbone.in_channels)},
      {"vicreg.image_size", std::to_string(backbone.image_size)},
      {"vicreg.in_features", std::to_string(backbone.in_features)}};
  const std::string how = torchvision_recipe(backbone);
  if (!how.empty()) meta["vicreg.torchvision"] = how;
  if (const std::optional<EvalTransform> t = input_transform(backbone)) {
    meta["vicreg.mean"] = float_list(t->mean);
    meta["vicreg.std"] = float_list(t->std);
    meta["vicreg.input"] = input_normalisation(backbone);
  }
  write_safetensors(path, state, meta);
  return static_cast<int64_t>(state.size());
}

}  // namespace vicreg
