// vicreg report: report.html and results.md of an experiment directory, or several runs side by
// side (report.h).
#include "commands.h"

#include "vicreg/report.h"
#include "vicreg/runtime.h"

#include <chrono>
#include <cstdio>
#include <memory>

namespace vicreg::cli {

namespace {

struct ReportArgs {
  ReportOptions options;
  std::vector<std::string> exp_dirs;
  int threads = 0;
};

int run_report(ReportArgs& a) {
  set_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  if (a.exp_dirs.size() > 1) {
    const ComparisonSummary c = write_comparison({a.exp_dirs, a.options.out});
    std::printf("wrote %s: %lld runs side by side, %lld charts, %lld evaluation results; %.1f s\n",
                c.path.c_str(), static_cast<long long>(c.runs), static_cast<long long>(c.charts),
                static_cast<long long>(c.eval_results),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }
  a.options.exp_dir = a.exp_dirs.front();
  usable_device(a.options.device);
  const ReportSummary r = write_report(a.options);
  if (!r.missing.empty()) std::fprintf(stderr, "vicreg report: note: %s\n", r.missing.c_str());
  std::printf(
      "wrote %s (and %s): %lld charts, %lld metrics lines, %lld kNN points, %lld "
      "evaluation results, %s; %.1f s\n",
      r.path.c_str(), r.results_path.c_str(), static_cast<long long>(r.charts),
      static_cast<long long>(r.metrics_lines), static_cast<long long>(r.knn_points),
      static_cast<long long>(r.eval_results),
      r.model
          ? ("final model diagnostics, " + std::to_string(r.map_points) +
             " points in the embedding map and " + std::to_string(r.grid_rows) + " neighbour rows")
                .c_str()
          : "no checkpoint.pt (curves only)",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

}  // namespace

Run setup_report(CLI::App& cmd, const std::vector<std::string>&) {
  auto a = std::make_shared<ReportArgs>();
  ReportOptions& o = a->options;
  cmd.add_option("--exp-dir", a->exp_dirs,
                 "The run's experiment directory; given several times, the runs side by side "
                 "(their curves overlaid, their settings and results in one table)")
      ->required()
      ->take_all();
  cmd.add_option("--out", o.out,
                 "Output file (default: EXP_DIR/report.html; several runs: compare.html beside "
                 "the first one's directory)");
  cmd.add_option("--data-dir", o.data_dir, "Where the data are (default: the run's)");
  cmd.add_option("--queries", o.queries, "Test images in the neighbour grid")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--neighbours", o.neighbours, "Neighbours shown per test image")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--bank", o.bank,
                 "Training images searched for neighbours (the first ones; 0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--map-points", o.map_points,
                 "Test samples drawn in the embedding map (evenly spaced; 0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--threads", a->threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_choice_flag(cmd, "--precision", o.precision,
                  "Extract features under autocast: auto (as vicreg train chooses), fp32, bf16 or "
                  "fp16");
  return [a] { return run_report(*a); };
}

}  // namespace vicreg::cli
