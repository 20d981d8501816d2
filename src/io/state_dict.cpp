#include "vicreg/io/state_dict.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/torch_pickle.h"

#include <torch/torch.h>

#include <map>
#include <set>
#include <sstream>

namespace vicreg {

WeightsFile read_weights(const std::string& path) {
  const std::string head = read_file_head(path, "weights file", 9);
  switch (sniff_format(head)) {
    case FileFormat::Zip:
    case FileFormat::LegacyPickle:  // read_torch_file says what to do with it
      return read_torch_file(path);
    case FileFormat::Safetensors:
      return read_safetensors(path);
    default:
      throw FormatError("'" + path +
                        "': is neither a safetensors file (8-byte length, then a JSON "
                        "header) nor a torch.save file (a zip archive)" +
                        std::string(head.size() < 9 ? ": it is empty or truncated" : ""));
  }
}

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& m : module.named_modules("", /*include_self=*/true)) {
    const std::string prefix = m.key().empty() ? "" : m.key() + ".";
    for (const auto& p : m.value()->named_parameters(/*recurse=*/false)) {
      out.emplace_back(prefix + p.key(), p.value());
    }
    for (const auto& b : m.value()->named_buffers(/*recurse=*/false)) {
      out.emplace_back(prefix + b.key(), b.value());
    }
  }
  return out;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string list_some(const std::vector<std::string>& keys, size_t most = 6) {
  std::string out;
  for (size_t k = 0; k < keys.size() && k < most; ++k) out += (k ? ", " : "") + keys[k];
  if (keys.size() > most) out += ", ... (" + std::to_string(keys.size()) + " in all)";
  return out;
}

/// torchvision's classifiers: a ResNet's fc, a ViT's heads.head, a ConvNeXt's classifier.2.
bool is_classifier(const std::string& key) {
  static const std::set<std::string> heads = {"fc.weight",           "fc.bias",
                                              "heads.head.weight",   "heads.head.bias",
                                              "classifier.2.weight", "classifier.2.bias"};
  return heads.count(key) > 0;
}

}  // namespace

std::string choose_encoder_prefix(const std::vector<std::string>& candidates,
                                  const std::string& source) {
  if (candidates.empty()) throw FormatError(source + ": holds no encoder");
  if (candidates.size() == 1) return candidates.front();
  std::vector<std::string> backbones;
  for (const auto& p : candidates) {
    if (p.empty() || ends_with(p, "backbone.")) backbones.push_back(p);
  }
  if (backbones.size() != 1) {
    throw FormatError(source + ": holds several encoders (under " + list_some(candidates) +
                      "); keep one of them in the file");
  }
  return backbones.front();
}

WeightsLoadReport load_encoder_weights(torch::nn::Module& module, const NamedTensors& weights,
                                       const std::string& source) {
  const NamedTensors expected = module_state(module);
  if (expected.empty()) throw UsageError("load_encoder_weights: the module has no state");
  // Where the encoder's keys are: of the prefixes under which its first key occurs, those
  // under which most of its keys occur ("layer1.0." holds a conv1.weight too).
  const std::string& first = expected.front().first;
  std::set<std::string> names;
  for (const auto& w : weights) names.insert(w.first);
  std::vector<std::string> prefixes;
  size_t best = 0;
  for (const auto& [name, t] : weights) {
    if (name != first && !ends_with(name, "." + first)) continue;
    const std::string p = name.substr(0, name.size() - first.size());
    size_t score = 0;
    for (const auto& e : expected) score += names.count(p + e.first);
    if (score > best) prefixes.clear();
    if (score >= best) {
      best = score;
      prefixes.push_back(p);
    }
  }
  WeightsLoadReport report;
  if (prefixes.empty()) {
    std::vector<std::string> some;
    for (size_t k = 0; k < weights.size() && k < 4; ++k) some.push_back(weights[k].first);
    throw FormatError(source + ": no '" + first + "' under any prefix, so it holds no " +
                      "weights of this encoder (another architecture?); its keys are " +
                      list_some(some) + (weights.size() > 4 ? ", ..." : ""));
  }
  report.prefix = choose_encoder_prefix(prefixes, source);

  std::map<std::string, torch::Tensor> found;
  std::vector<std::string> unknown;
  std::set<std::string> known;
  for (const auto& e : expected) known.insert(e.first);
  for (const auto& [name, t] : weights) {
    if (name.compare(0, report.prefix.size(), report.prefix) != 0) {
      ++report.other;
      continue;
    }
    const std::string key = name.substr(report.prefix.size());
    if (known.count(key))
      found[key] = t;
    else if (is_classifier(key))
      report.head.push_back(key);
    else
      unknown.push_back(report.prefix + key);
  }
  std::vector<std::string> missing, problems;
  for (const auto& [key, target] : expected) {
    const auto it = found.find(key);
    if (it == found.end()) {
      if (ends_with(key, "num_batches_tracked"))
        report.kept.push_back(key);
      else
        missing.push_back(report.prefix + key);
      continue;
    }
    const torch::Tensor& t = it->second;
    std::ostringstream msg;
    if (t.sizes() != target.sizes()) {
      msg << report.prefix << key << " has shape " << t.sizes() << ", the model's is "
          << target.sizes();
      problems.push_back(msg.str());
    } else if (t.is_floating_point() != target.is_floating_point() ||
               t.scalar_type() == torch::kBool) {
      msg << report.prefix << key << " is " << t.scalar_type() << ", the model's is "
          << target.scalar_type();
      problems.push_back(msg.str());
    }
  }
  if (!missing.empty() || !unknown.empty() || !problems.empty()) {
    std::string msg = source + " does not fit this encoder";
    if (!problems.empty()) msg += "; " + list_some(problems, 4);
    if (!missing.empty()) msg += "; missing " + list_some(missing);
    if (!unknown.empty()) msg += "; unknown keys " + list_some(unknown);
    msg += " (another architecture, stem or input channels?)";
    throw FormatError(msg);
  }
  torch::NoGradGuard no_grad;
  for (const auto& [key, target] : expected) {
    const auto it = found.find(key);
    if (it == found.end()) continue;
    torch::Tensor dst = target;  // shares storage with the module's tensor
    dst.copy_(it->second);
    ++report.loaded;
  }
  return report;
}

}  // namespace vicreg
