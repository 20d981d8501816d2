// vicreg bench-loss: the fused loss against the reference formulation (profile.h), as a table.
#include "commands.h"

#include "vicreg/profile.h"
#include "vicreg/runtime.h"

#include <cstdio>
#include <memory>

namespace vicreg::cli {

namespace {

/// The library's default shapes (LossComparison), as the flag writes them.
std::vector<std::string> default_shapes() {
  std::vector<std::string> out;
  for (const auto& [n, d] : LossComparison{}.shapes) {
    out.push_back(std::to_string(n) + "x" + std::to_string(d));
  }
  return out;
}

struct BenchLossArgs {
  std::vector<std::string> shapes = default_shapes();
  int threads = 0;
  std::string device = "cpu", dtype = "float", preset = "official", json;
  double min_time = 1.0;
  bool no_reference = false;
};

void print_row(const nlohmann::json& row, bool reference) {
  const auto& f = row["fused"];
  const auto n = static_cast<long long>(row["n"].get<int64_t>());
  const auto d = static_cast<long long>(row["d"].get<int64_t>());
  if (!reference) {
    std::printf("%6lld %6lld %12.2f %12s %9s %12.1f %12s %12.1f %12s\n", n, d,
                f["median_ms"].get<double>(), "-", "-", f["gflops"].get<double>(), "-",
                f["peak_bytes"].get<double>() / 1e6, "-");
  } else {
    const auto& r = row["reference"];
    std::printf("%6lld %6lld %12.2f %12.2f %8.1fx %12.1f %12.1f %12.1f %12.1f\n", n, d,
                f["median_ms"].get<double>(), r["median_ms"].get<double>(),
                row["speedup"].get<double>(), f["gflops"].get<double>(), r["gflops"].get<double>(),
                f["peak_bytes"].get<double>() / 1e6, r["peak_bytes"].get<double>() / 1e6);
  }
  std::fflush(stdout);
}

int run_bench_loss(const BenchLossArgs& a) {
  LossComparison c;
  c.shapes.clear();
  for (const auto& s : a.shapes) c.shapes.push_back(parse_loss_shape(s));
  c.device = usable_device(a.device);
  c.dtype = parse_name<torch::Dtype>(a.dtype);
  c.preset = parse_name<LossPreset>(a.preset);
  c.min_seconds = a.min_time;
  c.reference = !a.no_reference;
  set_threads(a.threads);
  std::printf("%s\n", describe_runtime().c_str());
  std::printf(
      "forward + backward of the VICReg loss, %s preset, %s on %s; reference: d x d "
      "covariance, off-diagonal by masking\n\n",
      a.preset.c_str(), a.dtype.c_str(), c.device.str().c_str());
  std::printf("%6s %6s %12s %12s %9s %12s %12s %12s %12s\n", "n", "d", "fused ms", "ref ms",
              "speed-up", "fused GF/s", "ref GF/s", "fused MB", "ref MB");
  const nlohmann::json rows = compare_loss_implementations(
      c, [&](const nlohmann::json& row) { print_row(row, c.reference); });
  if (!a.json.empty()) {
    write_json(a.json, {{"command", "bench-loss"},
                        {"runtime", describe_runtime()},
                        {"device", c.device.str()},
                        {"dtype", a.dtype},
                        {"preset", a.preset},
                        {"results", rows}});
  }
  return 0;
}

}  // namespace

Run setup_bench_loss(CLI::App& cmd, const std::vector<std::string>&) {
  auto a = std::make_shared<BenchLossArgs>();
  cmd.add_option("--shapes", a->shapes, "Shapes NxD (batch x embedding dimension)")
      ->delimiter(',')
      ->capture_default_str();
  cmd.add_option("--threads", a->threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--device", a->device, "Device: cpu, cuda or cuda:N")->capture_default_str();
  cmd.add_option("--dtype", a->dtype, "Embedding dtype")
      ->check(CLI::IsMember(names_of<torch::Dtype>()))
      ->capture_default_str();
  cmd.add_option("--preset", a->preset, "Loss preset")
      ->check(CLI::IsMember(names_of<LossPreset>()))
      ->capture_default_str();
  cmd.add_option("--min-time", a->min_time,
                 "Seconds to time each case at least (after 3 steps and one warm-up)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_flag("--no-reference", a->no_reference, "Time the fused loss only");
  cmd.add_option("--json", a->json, "Also write the results to this JSON file");
  return [a] { return run_bench_loss(*a); };
}

}  // namespace vicreg::cli
