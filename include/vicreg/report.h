// The run report: one self-contained HTML file (no network needed to view it) with the curves of
// a run's metrics.jsonl, the collapse diagnostics and the per-dimension std histogram of its final
// model, the evaluation results found in the experiment directory, and a grid of test images with
// their nearest training neighbours in representation space.
//
// Charts are SVG written by the small module below (vicreg::svg), which the tests check on its
// own; the page carries no script but a render check that records, after layout, how many series
// and bars each chart drew (what the headless-Chromium test reads back).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vicreg {

namespace svg {

/// Text for SVG/HTML content and attribute values: & < > " ' escaped.
std::string escape(const std::string& text);

/// Compact number text: up to 4 significant digits, exponent form for very small or large values.
std::string format_number(double value);

/// "Nice" tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]: the first tick is
/// <= lo, the last >= hi, about `target` of them. lo == hi gives ticks around the value.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

struct Series {
  std::string name;
  std::vector<double> x, y;  ///< same length; non-finite points (and <= 0 on a log axis) skipped
};

struct LineChart {
  std::string id;     ///< the svg element's id
  std::string title, x_label, y_label;
  bool log_y = false;
  int width = 520, height = 280;
  std::vector<Series> series;
};

/// An <svg class="chart"> with axes, ticks, a legend, and one
/// <polyline class="series" data-series=NAME data-points=N> per series that has points. A chart
/// without any point says "no data" instead.
std::string line_chart(const LineChart& chart);

struct Histogram {
  std::string id, title, x_label, y_label = "count";
  int bins = 30;
  int width = 520, height = 280;
  std::vector<double> values;  ///< non-finite values skipped
};

/// An <svg class="chart"> with one <rect class="bar" data-count=C> per bin (bins over
/// [min, max] of the values; the last bin includes max).
std::string histogram(const Histogram& chart);

/// Counts of `values` in `bins` equal bins over [lo, hi] (the last includes hi; values outside are
/// dropped).
std::vector<int64_t> bin_counts(const std::vector<double>& values, int bins, double lo, double hi);

}  // namespace svg

/// Standard base64 (RFC 4648, with padding).
std::string base64(const std::string& bytes);

struct ReportOptions {
  std::string exp_dir;
  std::string out;       ///< empty: EXP_DIR/report.html
  std::string data_dir;  ///< empty: the run's
  std::string device = "cpu";
  int64_t queries = 10;     ///< test images in the neighbour grid (one per class first)
  int64_t neighbours = 8;   ///< training neighbours shown per test image
  int64_t bank = 10000;     ///< training images searched (the first ones; 0: all)
};

struct ReportSummary {
  std::string path;
  std::string results_path;  ///< results.md next to the report: the evaluation results as a table
  int64_t metrics_lines = 0, knn_points = 0, skipped_lines = 0;
  int64_t charts = 0, eval_results = 0, grid_rows = 0;
  bool model = false;  ///< checkpoint.pt was found and its model evaluated
};

/// Writes the report of the experiment directory, and next to it results.md (the evaluation
/// results as a Markdown table). Throws naming the directory when it holds no
/// metrics.jsonl (not a `vicreg train` experiment directory), or naming the file for a checkpoint
/// that cannot be read. Unparseable metrics lines (a run killed mid-write) are skipped and counted.
ReportSummary write_report(const ReportOptions& options);

}  // namespace vicreg
