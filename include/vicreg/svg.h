// SVG charts for the run report (report.h): line charts with axes, ticks and a legend,
// histograms, and scatter plots; plain strings in, an <svg> element out, no dependencies. Each
// drawn series or bar carries a class and data- attributes that the report's render check (and the
// tests) count.
#pragma once

#include "vicreg/error.h"

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
  std::string id;  ///< the svg element's id
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

struct ScatterChart {
  std::string id, title, x_label, y_label;
  int width = 520, height = 420;
  std::vector<double> x, y;    ///< same length; points with a non-finite coordinate skipped
  std::vector<int64_t> group;  ///< each point's group (a class): its colour; same length
  std::vector<std::string> group_names;  ///< the legend, by group (a group without one: "G")
};

/// An <svg class="chart"> with axes, a legend of the groups, and one
/// <circle class="point" data-group=G> per point, coloured by group (10 colours, then again).
/// Without any point it says "no data".
std::string scatter_chart(const ScatterChart& chart);

/// Counts of `values` in `bins` equal bins over [lo, hi] (the last includes hi; values outside are
/// dropped).
std::vector<int64_t> bin_counts(const std::vector<double>& values, int bins, double lo, double hi);

}  // namespace svg

/// Standard base64 (RFC 4648, with padding).
std::string base64(const std::string& bytes);

}  // namespace vicreg
