// The run report: one self-contained HTML file (no network needed to view it) with the curves of
// a run's metrics.jsonl, the collapse diagnostics and the per-dimension std histogram of its final
// model, a map of its test representations (their first two principal components, one colour per
// class), the evaluation results found in the experiment directory, and a grid of test images
// with their nearest training neighbours in representation space. Several runs side by side:
// write_comparison.
//
// Charts are SVG written by vicreg/svg.h, which the tests check on its own; the page carries no
// script but a render check that records, after layout, how many series and bars each chart drew
// (what the headless-Chromium test reads back).
#pragma once

#include "vicreg/error.h"
#include "vicreg/precision.h"
#include "vicreg/svg.h"

#include <cstdint>
#include <string>
#include <vector>

namespace vicreg {

struct ReportOptions {
  std::string exp_dir;
  std::string out;       ///< empty: EXP_DIR/report.html
  std::string data_dir;  ///< empty: the run's
  std::string device = "cpu";
  Precision precision = Precision::Auto;  ///< of feature extraction (precision.h)
  int64_t queries = 10;       ///< test images in the neighbour grid (one per class first)
  int64_t neighbours = 8;     ///< training neighbours shown per test image
  int64_t bank = 10000;       ///< training images searched (the first ones; 0: all)
  int64_t map_points = 2000;  ///< test samples drawn in the embedding map (evenly spaced; 0: all)
};

struct ReportSummary {
  std::string path;
  std::string results_path;  ///< results.md next to the report: the evaluation results as a table
  int64_t metrics_lines = 0, knn_points = 0, skipped_lines = 0;
  int64_t charts = 0, eval_results = 0, grid_rows = 0;
  int64_t map_points = 0;  ///< points drawn in the embedding map
  bool model = false;      ///< checkpoint.pt was found and its model evaluated
  /// What the report leaves out and why (the run's data have no held-out split); empty: none.
  std::string missing;
};

/// Writes the report of the experiment directory, and next to it results.md (the evaluation
/// results as a Markdown table). Throws naming the directory when it holds no
/// metrics.jsonl (not a `vicreg train` experiment directory), or naming the file for a checkpoint
/// that cannot be read, or a data path recorded by the run that no longer exists. Data without a
/// held-out split leave out the final model's section (ReportSummary::missing says so). Unparseable
/// metrics lines (a run killed mid-write) are skipped and counted.
ReportSummary write_report(const ReportOptions& options);

/// Several runs side by side (`vicreg report --exp-dir A --exp-dir B ...`): their curves overlaid
/// (one series per run) and a table of their settings, last numbers and evaluation results.
struct ComparisonOptions {
  std::vector<std::string> exp_dirs;  ///< at least 2
  std::string out;                    ///< empty: compare.html beside the first directory
};

struct ComparisonSummary {
  std::string path;
  int64_t runs = 0, charts = 0, eval_results = 0;
};

/// Writes the comparison page. Throws naming the directory when one holds no metrics.jsonl, and a
/// UsageError for fewer than two directories.
ComparisonSummary write_comparison(const ComparisonOptions& options);

}  // namespace vicreg
