// The objectives a run can train with, by name: the one place that lists them (run/config.h).
#include "vicreg/error.h"
#include "vicreg/run/config.h"

#include <functional>

namespace vicreg {

namespace {

struct ObjectiveEntry {
  std::string name;
  const ObjectiveTerms& (*terms)();
  std::function<std::unique_ptr<Objective>(const TrainConfig& config, bool check_finite)> make;
};

const std::vector<ObjectiveEntry>& objectives() {
  static const std::vector<ObjectiveEntry> list = {
      {"vicreg", vicreg_terms,
       [](const TrainConfig& c, bool check_finite) -> std::unique_ptr<Objective> {
         return std::make_unique<VICRegObjective>(c.loss_options().check_finite(check_finite));
       }},
  };
  return list;
}

const ObjectiveEntry& entry(const std::string& name) {
  for (const ObjectiveEntry& e : objectives()) {
    if (e.name == name) return e;
  }
  throw SettingError({"objective"},
                     "unknown objective '" + name + "': use " + join_names(objective_names()));
}

}  // namespace

const std::vector<std::string>& objective_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const ObjectiveEntry& e : objectives()) n.push_back(e.name);
    return n;
  }();
  return names;
}

const ObjectiveTerms& objective_terms(const std::string& name) { return entry(name).terms(); }

std::unique_ptr<Objective> TrainConfig::objective(bool check_finite) const {
  return entry(loss.objective).make(*this, check_finite);
}

}  // namespace vicreg
