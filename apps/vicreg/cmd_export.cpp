// vicreg export: a run's backbone as safetensors with torchvision's names (run/artifacts.h).
#include "commands.h"

#include "vicreg/error.h"
#include "vicreg/run/artifacts.h"

#include <cstdio>
#include <filesystem>
#include <memory>

namespace vicreg::cli {

namespace {

struct ExportArgs {
  std::string checkpoint, backbone, out;
};

int run_export(const ExportArgs& a) {
  if (a.checkpoint.empty() == a.backbone.empty()) {
    throw UsageError(
        "give exactly one of --checkpoint (a run's checkpoint.pt) or --backbone (its "
        "backbone.pt)");
  }
  const std::string from = a.checkpoint.empty() ? a.backbone : a.checkpoint;
  std::error_code ec;
  if (std::filesystem::exists(a.out, ec) && std::filesystem::equivalent(a.out, from, ec)) {
    throw UsageError("--out '" + a.out + "' is the file being exported");
  }
  const Backbone b =
      a.checkpoint.empty() ? read_backbone(a.backbone) : read_checkpoint_backbone(a.checkpoint);
  const int64_t n = export_backbone(b, a.out);
  std::printf("wrote %s: %lld tensors of the %s backbone (%lld parameters) from %s\n",
              a.out.c_str(), static_cast<long long>(n), b.config.model.arch.c_str(),
              static_cast<long long>(count_parameters(*b.encoder)), from.c_str());
  const std::string how = torchvision_recipe(b), inputs = input_normalisation(b);
  if (!how.empty()) std::printf("in PyTorch: %s\n", how.c_str());
  if (!inputs.empty()) std::printf("inputs: %s\n", inputs.c_str());
  return 0;
}

}  // namespace

Run setup_export(CLI::App& cmd, const std::vector<std::string>&) {
  auto a = std::make_shared<ExportArgs>();
  cmd.add_option("--checkpoint", a->checkpoint, "A run's checkpoint.pt");
  cmd.add_option("--backbone", a->backbone,
                 "A run's backbone.pt (or any file --backbone of eval reads)");
  cmd.add_option("--out", a->out, "Output file, e.g. backbone.safetensors")->required();
  return [a] { return run_export(*a); };
}

}  // namespace vicreg::cli
