// loss_bench: forward + backward of the fused VICReg loss against the reference formulation
// (d x d covariance, off-diagonal by masking), in the same run, at the shapes of the issue.
// After Google Benchmark's own output it prints, per shape, the speed-up and the peak-memory
// ratio of the fused loss against the reference, and checks the targets.
//
//   loss_bench [--threads=N] [--device=cpu|cuda] [--dtype=float|double|half|bfloat16]
//              [--shapes=256x2048,512x8192,...] [--check-targets] [--benchmark_* flags]
#include "vicreg/profile.h"
#include "vicreg/runtime.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using vicreg::LossImplementation;
using Shape = std::pair<int64_t, int64_t>;

struct Settings {
  int threads = 0;
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat;
  std::vector<Shape> shapes = {{256, 2048}, {512, 8192}, {2048, 8192}, {2048, 512}, {4096, 256}};
  bool check_targets = false;
};

/// What one benchmark measured, kept for the summary.
struct Measured {
  double seconds = 0;
  double flops_per_second = 0;
  double peak_bytes = 0;
};
std::map<std::pair<Shape, LossImplementation>, Measured> g_measured;

void bm_loss(benchmark::State& state, LossImplementation impl, const Settings& s) {
  const Shape shape{state.range(0), state.range(1)};
  auto w = vicreg::make_loss_workload(shape.first, shape.second, impl, s.device, s.dtype);
  const auto peak = static_cast<double>(vicreg::loss_step_peak_bytes(w));  // also warms up
  for (auto _ : state) {
    benchmark::DoNotOptimize(vicreg::run_loss_step(w));
  }
  const double flops = vicreg::loss_step_flops(w);
  state.counters["FLOP/s"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["peak_MB"] = peak / 1e6;
  g_measured[{shape, impl}] = {0, 0, peak};
}

/// Console output as usual, plus the real time and FLOP/s of each run for the summary.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      for (auto& [key, m] : g_measured) {
        if (r.run_name.function_name == name_of(key.second) &&
            r.run_name.args ==
                "n:" + std::to_string(key.first.first) + "/d:" + std::to_string(key.first.second)) {
          m.seconds = r.real_accumulated_time / static_cast<double>(r.iterations);
          auto it = r.counters.find("FLOP/s");
          if (it != r.counters.end()) m.flops_per_second = it->second.value;
        }
      }
    }
  }
  static std::string name_of(LossImplementation impl) { return "loss/" + vicreg::to_string(impl); }
};

bool parse_settings(int argc, char** argv, Settings& s) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const size_t len = std::strlen(flag);
      return arg.compare(0, len, flag) == 0 ? argv[i] + len : nullptr;
    };
    if (const char* v = value("--threads=")) {
      s.threads = std::atoi(v);
    } else if (const char* dv = value("--device=")) {
      s.device = torch::Device(dv);
    } else if (const char* t = value("--dtype=")) {
      const std::string name = t;
      if (name == "float")
        s.dtype = torch::kFloat;
      else if (name == "double")
        s.dtype = torch::kDouble;
      else if (name == "half")
        s.dtype = torch::kHalf;
      else if (name == "bfloat16")
        s.dtype = torch::kBFloat16;
      else {
        std::fprintf(stderr, "loss_bench: unknown --dtype '%s'\n", t);
        return false;
      }
    } else if (const char* sh = value("--shapes=")) {
      s.shapes.clear();
      std::stringstream list(sh);
      std::string item;
      while (std::getline(list, item, ',')) {
        const auto x = item.find('x');
        if (x == std::string::npos) {
          std::fprintf(stderr, "loss_bench: --shapes wants NxD[,NxD...], got '%s'\n", sh);
          return false;
        }
        s.shapes.emplace_back(std::stoll(item.substr(0, x)), std::stoll(item.substr(x + 1)));
      }
    } else if (arg == "--check-targets") {
      s.check_targets = true;
    } else {
      std::fprintf(stderr, "loss_bench: unknown argument '%s'\n", argv[i]);
      return false;
    }
  }
  return true;
}

/// Prints the per-shape comparison as a Markdown table; returns false if a target is missed.
bool summarize(const Settings& s) {
  std::printf("\n%s\n", vicreg::describe_runtime().c_str());
  std::printf(
      "\n| n | d | reference ms | fused ms | speed-up | reference GFLOP/s | fused GFLOP/s "
      "| reference peak MB | fused peak MB | peak ratio |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  bool ok = true;
  for (const Shape& shape : s.shapes) {
    const Measured& ref = g_measured[{shape, LossImplementation::Reference}];
    const Measured& fus = g_measured[{shape, LossImplementation::Fused}];
    if (ref.seconds <= 0 || fus.seconds <= 0) continue;  // filtered out
    const double speedup = ref.seconds / fus.seconds;
    const double peak_ratio = fus.peak_bytes / ref.peak_bytes;
    std::printf("| %lld | %lld | %.2f | %.2f | %.1fx | %.1f | %.1f | %.1f | %.1f | %.3f |\n",
                static_cast<long long>(shape.first), static_cast<long long>(shape.second),
                ref.seconds * 1e3, fus.seconds * 1e3, speedup, ref.flops_per_second / 1e9,
                fus.flops_per_second / 1e9, ref.peak_bytes / 1e6, fus.peak_bytes / 1e6, peak_ratio);
    // Targets (issue: foundation): never slower; >= 20x at (512, 8192); >= 5x at (2048, 8192);
    // peak memory at most a tenth of the reference's when n < d.
    double want = 1.0;
    if (shape == Shape{512, 8192}) want = 20.0;
    if (shape == Shape{2048, 8192}) want = 5.0;
    if (speedup < want) {
      std::printf("TARGET MISSED: speed-up %.1fx < %.0fx at n=%lld d=%lld\n", speedup, want,
                  static_cast<long long>(shape.first), static_cast<long long>(shape.second));
      ok = false;
    }
    if (shape.first < shape.second && peak_ratio > 0.1) {
      std::printf("TARGET MISSED: peak memory ratio %.3f > 0.1 at n=%lld d=%lld\n", peak_ratio,
                  static_cast<long long>(shape.first), static_cast<long long>(shape.second));
      ok = false;
    }
  }
  std::printf("%s\n", ok ? "all targets met" : "some targets missed");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);  // removes the --benchmark_* flags
  Settings s;
  if (!parse_settings(argc, argv, s)) return 2;
  vicreg::set_threads(s.threads);
  vicreg::enable_memory_tracking();

  for (const Shape& shape : s.shapes) {
    for (auto impl : {LossImplementation::Reference, LossImplementation::Fused}) {
      g_measured[{shape, impl}] = {};
      benchmark::RegisterBenchmark(SummaryReporter::name_of(impl).c_str(),
                                   [impl, &s](benchmark::State& st) { bm_loss(st, impl, s); })
          ->Args({shape.first, shape.second})
          ->ArgNames({"n", "d"})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  const bool ok = summarize(s);
  return s.check_targets && !ok ? 1 : 0;
}
