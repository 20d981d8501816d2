// The parts of the report that the single-run page (report.cpp) and the comparison of runs
// (report_compare.cpp) share: reading a run's files, charts over epochs, the page style.
// Internal to the library.
#pragma once

#include "vicreg/run/config.h"
#include "vicreg/svg.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace vicreg {
namespace report_parts {

namespace fs = std::filesystem;

/// metrics.jsonl's lines, by kind.
struct Metrics {
  std::vector<nlohmann::json> steps, knn, online;  ///< intervals; kNN and online probe lines
  int64_t skipped = 0;
};

/// Reads metrics.jsonl (lines that are not JSON objects are counted in `skipped`). Throws
/// FormatError when the file cannot be read.
Metrics read_metrics(const fs::path& path);

/// The series `key` over `x_key` of the metrics lines that have both, times `scale`.
svg::Series series_of(const std::vector<nlohmann::json>& lines, const std::string& key,
                      const std::string& name, const std::string& x_key = "epoch",
                      double scale = 1.0);

/// The run's settings: config.json, else the checkpoint's; none when neither can be read.
std::optional<TrainConfig> run_config(const fs::path& dir);

/// A line chart over epochs (svg.h).
std::string epoch_chart(const std::string& id, const std::string& title, const std::string& y_label,
                        std::vector<svg::Series> series, bool log_y = false);

/// One `vicreg eval --json` result.
struct EvalResult {
  fs::path file;
  std::string protocol, features;
  double top1 = 0, seconds = 0;
  std::optional<double> top5;  ///< none with 5 classes or fewer
  int64_t train_samples = 0;
  nlohmann::json settings;
};

/// The evaluation results in a directory (its *.json files that are ones), by file name.
std::vector<EvalResult> eval_results(const fs::path& dir);

/// The pages' CSS.
extern const char* const kStyle;
/// The pages' last script: after layout, counts what rendered (read back by the browser test).
extern const char* const kRenderCheck;

}  // namespace report_parts
}  // namespace vicreg
