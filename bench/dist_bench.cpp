// dist_bench: one rank's cost of the VICReg loss on a global batch of N rows spread over W ranks.
//
//   sharded/W    vicreg_loss_sharded on this rank's N / W rows (forward + backward), the gather
//                simulated by SimulatedGroup (its copy of the rows stands in for the all-gather;
//                the network itself is not timed): O((N / W) N d) in the Gram form.
//   reference    what facebookresearch/vicreg does on every rank whatever W: gather, then the whole
//                loss of the N rows with the d x d covariance (vicreg_loss_reference), O(N d^2).
//   fused-full   the same recomputation with our fused loss (vicreg_loss on all N rows).
// All in the same run; the summary prints each as a ratio against the reference.
//
//   dist_bench [--threads=N] [--n=2048] [--d=8192] [--worlds=1,2,4,8] [--benchmark_* flags]
#include "vicreg/distributed.h"
#include "vicreg/loss.h"
#include "vicreg/runtime.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Settings {
  int threads = 0;
  int64_t n = 2048, d = 8192;
  std::vector<int> worlds = {1, 2, 4, 8};
};

std::map<std::string, double> g_seconds;  // benchmark name -> real seconds per iteration

struct Inputs {
  torch::Tensor za, zb;
};

Inputs make_inputs(int64_t rows, int64_t d) {
  torch::manual_seed(0);
  Inputs in;
  in.za = torch::randn({rows, d}).requires_grad_(true);
  in.zb = (in.za.detach() + 0.5 * torch::randn({rows, d})).requires_grad_(true);
  return in;
}

void step(const vicreg::VICRegLossTerms& t, Inputs& in) {
  t.total.backward();
  in.za.mutable_grad() = torch::Tensor();
  in.zb.mutable_grad() = torch::Tensor();
}

void bm_sharded(benchmark::State& state, const Settings& s, int world) {
  Inputs in = make_inputs(s.n / world, s.d);
  vicreg::SimulatedGroup group(0, world);
  for (auto _ : state) step(vicreg::vicreg_loss_sharded(in.za, in.zb, group), in);
}

void bm_reference(benchmark::State& state, const Settings& s) {
  Inputs in = make_inputs(s.n, s.d);
  for (auto _ : state) step(vicreg::vicreg_loss_reference(in.za, in.zb), in);
}

void bm_fused(benchmark::State& state, const Settings& s) {
  Inputs in = make_inputs(s.n, s.d);
  for (auto _ : state) step(vicreg::vicreg_loss(in.za, in.zb), in);
}

class Recorder : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type == Run::RT_Iteration && r.iterations > 0) {
        std::string name = r.benchmark_name();
        const std::string suffix = "/real_time";
        if (name.size() > suffix.size() &&
            name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
          name.resize(name.size() - suffix.size());
        }
        g_seconds[name] = r.real_accumulated_time / static_cast<double>(r.iterations);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

std::vector<int> parse_worlds(const std::string& s) {
  std::vector<int> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    const int w = std::stoi(part);
    if (w < 1) throw std::invalid_argument("--worlds: each W must be >= 1, got " + part);
    out.push_back(w);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  std::vector<char*> rest = {argv[0]};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--threads=", 0) == 0) {
        s.threads = std::stoi(a.substr(10));
      } else if (a.rfind("--n=", 0) == 0) {
        s.n = std::stoll(a.substr(4));
      } else if (a.rfind("--d=", 0) == 0) {
        s.d = std::stoll(a.substr(4));
      } else if (a.rfind("--worlds=", 0) == 0) {
        s.worlds = parse_worlds(a.substr(9));
      } else {
        rest.push_back(argv[i]);
      }
    }
    for (int w : s.worlds) {
      if (s.n % w != 0 || s.n / w < 1) {
        throw std::invalid_argument("--n " + std::to_string(s.n) +
                                    " is not divisible by W = " + std::to_string(w));
      }
    }
    if (s.n < 2 || s.d < 1) throw std::invalid_argument("need --n >= 2 and --d >= 1");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dist_bench: %s\n", e.what());
    return 2;
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  const int threads = vicreg::set_threads(s.threads);
  std::printf("dist_bench: global batch N = %lld, d = %lld, %d intra-op thread(s), float32\n",
              static_cast<long long>(s.n), static_cast<long long>(s.d), threads);

  const std::string shape = std::to_string(s.n) + "x" + std::to_string(s.d);
  benchmark::RegisterBenchmark(("reference/" + shape).c_str(), bm_reference, s)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark(("fused-full/" + shape).c_str(), bm_fused, s)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (int w : s.worlds) {
    benchmark::RegisterBenchmark(("sharded/" + shape + "/W" + std::to_string(w)).c_str(),
                                 bm_sharded, s, w)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  Recorder reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  const auto ref = g_seconds.find("reference/" + shape);
  if (ref == g_seconds.end()) return 0;  // filtered out
  std::printf("\nper-rank cost against the reference's gathered-and-recomputed loss (%s):\n",
              shape.c_str());
  std::printf("  %-26s %10.1f ms  1.00x\n", ("reference/" + shape).c_str(), 1e3 * ref->second);
  for (const auto& [name, sec] : g_seconds) {
    if (name == ref->first) continue;
    std::printf("  %-26s %10.1f ms  %.2fx faster\n", name.c_str(), 1e3 * sec, ref->second / sec);
  }
  benchmark::Shutdown();
  return 0;
}
