#include "vicreg/svg.h"

#include "vicreg/error.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace vicreg {

namespace svg {

std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? "NaN" : (value > 0 ? "inf" : "-inf");
  if (value == 0) return "0";
  char buf[32];
  const double a = std::fabs(value);
  if (a >= 1e5 || a < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.3g", value);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", value);
  }
  return buf;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
    const double pad = lo == 0 ? 1.0 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  target = std::max(target, 2);
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  const double first = std::floor(lo / step) * step;
  for (double t = first; t < hi + step * 0.999; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
    if (ticks.size() > 100) break;
  }
  return ticks;
}

std::vector<int64_t> bin_counts(const std::vector<double>& values, int bins, double lo, double hi) {
  std::vector<int64_t> counts(static_cast<size_t>(std::max(bins, 1)), 0);
  const double width = (hi - lo) / counts.size();
  for (const double v : values) {
    if (!std::isfinite(v) || v < lo || v > hi) continue;
    auto b = width > 0 ? static_cast<int64_t>((v - lo) / width) : 0;
    b = std::min<int64_t>(b, static_cast<int64_t>(counts.size()) - 1);
    ++counts[static_cast<size_t>(b)];
  }
  return counts;
}

namespace {

const char* const kColors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                               "#59a14f", "#edc948", "#b07aa1", "#9c755f"};
// Tableau's 10 colours, for groups (classes).
const char* const kGroupColors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
constexpr int kLeft = 64, kRight = 16, kTop = 42, kBottom = 44;

/// The frame of a chart: title, axes with ticks and labels. Maps data to pixels.
struct Frame {
  int width, height;
  double x0, x1, y0, y1;  // data range (y in log10 units on a log axis)
  bool log_y;

  double px(double x) const { return kLeft + (x - x0) / (x1 - x0) * (width - kLeft - kRight); }
  double py(double y) const {
    return height - kBottom - (y - y0) / (y1 - y0) * (height - kTop - kBottom);
  }
};

std::string open_svg(const std::string& id, int width, int height, const std::string& title) {
  std::ostringstream s;
  s << "<svg class=\"chart\" id=\"" << escape(id) << "\" xmlns=\"http://www.w3.org/2000/svg\" "
    << "width=\"" << width << "\" height=\"" << height << "\" viewBox=\"0 0 " << width << ' '
    << height << "\" role=\"img\" aria-label=\"" << escape(title) << "\">"
    << "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>"
    << "<text x=\"" << kLeft << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">"
    << escape(title) << "</text>";
  return s.str();
}

std::string no_data(const std::string& id, int width, int height, const std::string& title,
                    const std::string& why) {
  std::ostringstream s;
  s << open_svg(id, width, height, title) << "<text class=\"no-data\" x=\"" << width / 2
    << "\" y=\"" << height / 2 << "\" text-anchor=\"middle\" fill=\"#888\">" << escape(why)
    << "</text></svg>";
  return s.str();
}

std::string axes(const Frame& f, const std::vector<double>& xt, const std::vector<double>& yt,
                 const std::string& x_label, const std::string& y_label) {
  std::ostringstream s;
  s << "<g class=\"axes\" font-size=\"11\" fill=\"#333\">";
  for (const double t : yt) {
    const double y = f.py(t);
    s << "<line x1=\"" << kLeft << "\" x2=\"" << f.width - kRight << "\" y1=\"" << y << "\" y2=\""
      << y << "\" stroke=\"#e5e5e5\"/>"
      << "<text x=\"" << kLeft - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">"
      << escape(format_number(f.log_y ? std::pow(10.0, t) : t)) << "</text>";
  }
  for (const double t : xt) {
    const double x = f.px(t);
    s << "<line x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << f.height - kBottom << "\" y2=\""
      << f.height - kBottom + 4 << "\" stroke=\"#333\"/>"
      << "<text x=\"" << x << "\" y=\"" << f.height - kBottom + 16 << "\" text-anchor=\"middle\">"
      << escape(format_number(t)) << "</text>";
  }
  s << "<line x1=\"" << kLeft << "\" x2=\"" << f.width - kRight << "\" y1=\"" << f.height - kBottom
    << "\" y2=\"" << f.height - kBottom << "\" stroke=\"#333\"/>"
    << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft << "\" y1=\"" << kTop << "\" y2=\""
    << f.height - kBottom << "\" stroke=\"#333\"/>"
    << "<text x=\"" << (kLeft + f.width - kRight) / 2 << "\" y=\"" << f.height - 8
    << "\" text-anchor=\"middle\">" << escape(x_label) << "</text>"
    << "<text transform=\"translate(14 " << (kTop + f.height - kBottom) / 2
    << ") rotate(-90)\" text-anchor=\"middle\">" << escape(y_label) << (f.log_y ? " (log)" : "")
    << "</text></g>";
  return s.str();
}

}  // namespace

std::string line_chart(const LineChart& chart) {
  // The points each series keeps, in axis units.
  std::vector<std::vector<std::pair<double, double>>> points(chart.series.size());
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const Series& s = chart.series[i];
    if (s.x.size() != s.y.size()) {
      throw UsageError("svg::line_chart: series '" + s.name + "' has " +
                       std::to_string(s.x.size()) + " x and " + std::to_string(s.y.size()) +
                       " y values");
    }
    for (size_t k = 0; k < s.x.size(); ++k) {
      double y = s.y[k];
      if (!std::isfinite(s.x[k]) || !std::isfinite(y) || (chart.log_y && y <= 0)) continue;
      if (chart.log_y) y = std::log10(y);
      points[i].emplace_back(s.x[k], y);
      x0 = std::min(x0, s.x[k]);
      x1 = std::max(x1, s.x[k]);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  }
  if (!std::isfinite(x0)) {
    return no_data(chart.id, chart.width, chart.height, chart.title, "no data");
  }
  std::vector<double> xt = nice_ticks(x0, x1, 6);
  std::vector<double> yt;
  if (chart.log_y) {
    const double lo = std::floor(y0), hi = std::max(std::ceil(y1), lo + 1);
    const double step = std::max(1.0, std::ceil((hi - lo) / 6));
    for (double t = lo; t <= hi + 1e-9; t += step) yt.push_back(t);
  } else {
    yt = nice_ticks(y0, y1, 5);
  }
  const Frame f{chart.width, chart.height, xt.front(), xt.back(),
                yt.front(),  yt.back(),    chart.log_y};
  std::ostringstream s;
  s << open_svg(chart.id, chart.width, chart.height, chart.title)
    << axes(f, xt, yt, chart.x_label, chart.y_label);
  // Legend: one row under the title.
  int legend_x = kLeft;
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const std::string& name = chart.series[i].name;
    s << "<g class=\"legend\" font-size=\"11\"><rect x=\"" << legend_x << "\" y=\"27\" "
      << "width=\"12\" height=\"3\" fill=\"" << kColors[i % 8] << "\"/><text x=\"" << legend_x + 16
      << "\" y=\"32\">" << escape(name) << "</text></g>";
    legend_x += 28 + 6 * static_cast<int>(name.size());
  }
  char buf[64];
  for (size_t i = 0; i < chart.series.size(); ++i) {
    if (points[i].empty()) continue;
    s << "<polyline class=\"series\" data-series=\"" << escape(chart.series[i].name)
      << "\" data-points=\"" << points[i].size() << "\" fill=\"none\" stroke=\"" << kColors[i % 8]
      << "\" stroke-width=\"1.6\" stroke-linejoin=\"round\" points=\"";
    for (const auto& [x, y] : points[i]) {
      std::snprintf(buf, sizeof buf, "%.1f,%.1f ", f.px(x), f.py(y));
      s << buf;
    }
    s << "\"/>";
    if (points[i].size() == 1) {  // a lone point: a dot, so that it shows
      s << "<circle class=\"dot\" cx=\"" << f.px(points[i][0].first) << "\" cy=\""
        << f.py(points[i][0].second) << "\" r=\"3\" fill=\"" << kColors[i % 8] << "\"/>";
    }
  }
  s << "</svg>";
  return s.str();
}

std::string histogram(const Histogram& chart) {
  std::vector<double> values;
  for (const double v : chart.values) {
    if (std::isfinite(v)) values.push_back(v);
  }
  if (values.empty()) return no_data(chart.id, chart.width, chart.height, chart.title, "no data");
  double lo = *std::min_element(values.begin(), values.end());
  double hi = *std::max_element(values.begin(), values.end());
  if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
    const double pad = lo == 0 ? 0.5 : std::fabs(lo) * 0.05;
    lo -= pad;
    hi += pad;
  }
  const int bins = std::max(chart.bins, 1);
  const std::vector<int64_t> counts = bin_counts(values, bins, lo, hi);
  const int64_t top = *std::max_element(counts.begin(), counts.end());
  const std::vector<double> xt = nice_ticks(lo, hi, 6);
  const std::vector<double> yt = nice_ticks(0, static_cast<double>(top), 5);
  const Frame f{chart.width, chart.height, std::min(xt.front(), lo), std::max(xt.back(), hi), 0.0,
                yt.back(),   false};
  std::ostringstream s;
  s << open_svg(chart.id, chart.width, chart.height, chart.title)
    << axes(f, xt, yt, chart.x_label, chart.y_label);
  const double w = (hi - lo) / bins;
  char buf[160];
  for (int b = 0; b < bins; ++b) {
    const double left = f.px(lo + b * w), right = f.px(lo + (b + 1) * w);
    const double y = f.py(static_cast<double>(counts[static_cast<size_t>(b)]));
    std::snprintf(buf, sizeof buf,
                  "<rect class=\"bar\" data-count=\"%lld\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                  "height=\"%.1f\" fill=\"%s\"/>",
                  static_cast<long long>(counts[static_cast<size_t>(b)]), left, y,
                  std::max(0.5, right - left - 1), f.py(0) - y, kColors[0]);
    s << buf;
  }
  s << "</svg>";
  return s.str();
}

std::string scatter_chart(const ScatterChart& chart) {
  if (chart.x.size() != chart.y.size() || chart.group.size() != chart.x.size()) {
    throw UsageError("svg::scatter_chart: " + std::to_string(chart.x.size()) + " x, " +
                     std::to_string(chart.y.size()) + " y and " +
                     std::to_string(chart.group.size()) + " groups: they must be as many");
  }
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  int64_t groups = static_cast<int64_t>(chart.group_names.size());
  for (size_t k = 0; k < chart.x.size(); ++k) {
    if (!std::isfinite(chart.x[k]) || !std::isfinite(chart.y[k])) continue;
    x0 = std::min(x0, chart.x[k]);
    x1 = std::max(x1, chart.x[k]);
    y0 = std::min(y0, chart.y[k]);
    y1 = std::max(y1, chart.y[k]);
    groups = std::max(groups, chart.group[k] + 1);
  }
  if (!std::isfinite(x0)) {
    return no_data(chart.id, chart.width, chart.height, chart.title, "no data");
  }
  const std::vector<double> xt = nice_ticks(x0, x1, 6), yt = nice_ticks(y0, y1, 5);
  const Frame f{chart.width, chart.height, xt.front(), xt.back(), yt.front(), yt.back(), false};
  std::ostringstream s;
  s << open_svg(chart.id, chart.width, chart.height, chart.title)
    << axes(f, xt, yt, chart.x_label, chart.y_label);
  int legend_x = kLeft;
  for (int64_t g = 0; g < groups; ++g) {
    const std::string name = static_cast<size_t>(g) < chart.group_names.size()
                                 ? chart.group_names[static_cast<size_t>(g)]
                                 : std::to_string(g);
    s << "<g class=\"legend\" font-size=\"10\"><circle cx=\"" << legend_x + 4
      << "\" cy=\"30\" r=\"4\" fill=\"" << kGroupColors[g % 10] << "\"/><text x=\"" << legend_x + 11
      << "\" y=\"34\">" << escape(name) << "</text></g>";
    legend_x += 20 + 5 * static_cast<int>(name.size());
  }
  char buf[160];
  for (size_t k = 0; k < chart.x.size(); ++k) {
    if (!std::isfinite(chart.x[k]) || !std::isfinite(chart.y[k])) continue;
    const int64_t g = std::max<int64_t>(chart.group[k], 0);
    std::snprintf(buf, sizeof buf,
                  "<circle class=\"point\" data-group=\"%lld\" cx=\"%.1f\" cy=\"%.1f\" r=\"2.2\" "
                  "fill=\"%s\" fill-opacity=\"0.7\"/>",
                  static_cast<long long>(g), f.px(chart.x[k]), f.py(chart.y[k]),
                  kGroupColors[g % 10]);
    s << buf;
  }
  s << "</svg>";
  return s.str();
}

}  // namespace svg

std::string base64(const std::string& bytes) {
  static const char* const kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                       (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                       static_cast<uint8_t>(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

}  // namespace vicreg
