#include "vicreg/report.h"

#include "vicreg/evaluate.h"
#include "vicreg/train.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/nn/functional/normalization.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

namespace vicreg {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// svg

namespace svg {

std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
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
constexpr int kLeft = 64, kRight = 16, kTop = 42, kBottom = 44;

/// The frame of a chart: title, axes with ticks and labels. Maps data to pixels.
struct Frame {
  int width, height;
  double x0, x1, y0, y1;  // data range (y in log10 units on a log axis)
  bool log_y;

  double px(double x) const {
    return kLeft + (x - x0) / (x1 - x0) * (width - kLeft - kRight);
  }
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
    s << "<line x1=\"" << kLeft << "\" x2=\"" << f.width - kRight << "\" y1=\"" << y
      << "\" y2=\"" << y << "\" stroke=\"#e5e5e5\"/>"
      << "<text x=\"" << kLeft - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">"
      << escape(format_number(f.log_y ? std::pow(10.0, t) : t)) << "</text>";
  }
  for (const double t : xt) {
    const double x = f.px(t);
    s << "<line x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << f.height - kBottom << "\" y2=\""
      << f.height - kBottom + 4 << "\" stroke=\"#333\"/>"
      << "<text x=\"" << x << "\" y=\"" << f.height - kBottom + 16
      << "\" text-anchor=\"middle\">" << escape(format_number(t)) << "</text>";
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
      throw std::invalid_argument("svg::line_chart: series '" + s.name + "' has " +
                                  std::to_string(s.x.size()) + " x and " +
                                  std::to_string(s.y.size()) + " y values");
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
  const Frame f{chart.width, chart.height, xt.front(), xt.back(), yt.front(), yt.back(),
                chart.log_y};
  std::ostringstream s;
  s << open_svg(chart.id, chart.width, chart.height, chart.title)
    << axes(f, xt, yt, chart.x_label, chart.y_label);
  // Legend: one row under the title.
  int legend_x = kLeft;
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const std::string& name = chart.series[i].name;
    s << "<g class=\"legend\" font-size=\"11\"><rect x=\"" << legend_x << "\" y=\"27\" "
      << "width=\"12\" height=\"3\" fill=\"" << kColors[i % 8] << "\"/><text x=\""
      << legend_x + 16 << "\" y=\"32\">" << escape(name) << "</text></g>";
    legend_x += 28 + 6 * static_cast<int>(name.size());
  }
  char buf[64];
  for (size_t i = 0; i < chart.series.size(); ++i) {
    if (points[i].empty()) continue;
    s << "<polyline class=\"series\" data-series=\"" << escape(chart.series[i].name)
      << "\" data-points=\"" << points[i].size() << "\" fill=\"none\" stroke=\""
      << kColors[i % 8] << "\" stroke-width=\"1.6\" stroke-linejoin=\"round\" points=\"";
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
  const Frame f{chart.width, chart.height, std::min(xt.front(), lo), std::max(xt.back(), hi),
                0.0, yt.back(), false};
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

}  // namespace svg

std::string base64(const std::string& bytes) {
  static const char* const kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                       (static_cast<uint8_t>(bytes[i + 1]) << 8) | static_cast<uint8_t>(bytes[i + 2]);
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

// ---------------------------------------------------------------------------------------------
// the report

namespace {

using svg::escape;
using svg::format_number;

struct Metrics {
  std::vector<nlohmann::json> steps, knn;
  int64_t skipped = 0;
};

Metrics read_metrics(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read '" + path.string() + "'");
  Metrics m;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      ++m.skipped;
      continue;
    }
    (j.value("event", "") == "knn" ? m.knn : m.steps).push_back(std::move(j));
  }
  return m;
}

/// The series key over x key of the metrics lines that have both.
svg::Series series_of(const std::vector<nlohmann::json>& lines, const std::string& key,
                      const std::string& name, const std::string& x_key = "epoch",
                      double scale = 1.0) {
  svg::Series s{name, {}, {}};
  for (const auto& j : lines) {
    if (!j.contains(key) || !j.contains(x_key) || !j[key].is_number() || !j[x_key].is_number()) {
      continue;
    }
    s.x.push_back(j[x_key].get<double>());
    s.y.push_back(scale * j[key].get<double>());
  }
  return s;
}

std::string png_data_uri(const cv::Mat& image) {
  cv::Mat bgr = image;
  if (image.channels() == 3) cv::cvtColor(image, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> png;
  if (!cv::imencode(".png", bgr, png)) throw std::runtime_error("report: PNG encoding failed");
  return "data:image/png;base64," + base64(std::string(png.begin(), png.end()));
}

std::string class_name(const Dataset& data, int64_t label) {
  if (label >= 0 && label < static_cast<int64_t>(data.classes.size())) {
    return data.classes[static_cast<size_t>(label)];
  }
  return std::to_string(label);
}

std::string stats_row(const std::string& what, const CollapseStats& c) {
  std::ostringstream s;
  s << "<tr><td>" << what << "</td><td>" << c.dim << "</td><td>" << format_number(c.std_mean)
    << "</td><td>" << format_number(c.std_min) << "</td><td>" << format_number(c.covariance)
    << "</td><td>" << format_number(c.rankme) << "</td></tr>";
  return s.str();
}

const char* const kStyle = R"(
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222;
       background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.sub { color: #666; margin-top: 0; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.charts svg { border: 1px solid #ddd; background: #fff; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
.grid td { border: none; padding: 2px; text-align: center; font-size: 10px; vertical-align: top; }
.grid img { width: 56px; height: 56px; image-rendering: pixelated; display: block;
            border: 3px solid transparent; }
.grid img.query { border-color: #333; }
.grid img.same { border-color: #59a14f; } .grid img.other { border-color: #e15759; }
details { font-size: 13px; } pre { font-size: 12px; }
#render-check { color: #999; font-size: 11px; }
)";

// After layout: for each chart, how many series/bars have a non-empty box; and how many images
// decoded. The headless-Chromium test reads this back from the DOM.
const char* const kRenderCheck = R"(<script>
window.addEventListener('load', function () {
  var parts = [];
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    var drawn = 0;
    svg.querySelectorAll('.series, .bar').forEach(function (e) {
      var b = e.getBBox();
      if (b.width > 0 || b.height > 0) drawn++;
    });
    parts.push(svg.id + '=' + drawn);
  });
  var images = 0;
  document.querySelectorAll('img').forEach(function (i) {
    if (i.complete && i.naturalWidth > 0) images++;
  });
  parts.push('images=' + images);
  document.getElementById('render-check').textContent = 'rendered: ' + parts.join(' ');
});
</script>)";

}  // namespace

ReportSummary write_report(const ReportOptions& options) {
  const fs::path dir(options.exp_dir);
  const fs::path metrics_path = dir / "metrics.jsonl";
  if (!fs::is_regular_file(metrics_path)) {
    throw std::runtime_error("'" + options.exp_dir + "' holds no metrics.jsonl: give the "
                             "--exp-dir of a `vicreg train` run");
  }
  if (options.queries < 1 || options.neighbours < 1 || options.bank < 0) {
    throw std::invalid_argument("report: --queries and --neighbours must be >= 1, --bank >= 0");
  }
  ReportSummary summary;
  summary.path = options.out.empty() ? (dir / "report.html").string() : options.out;
  const Metrics m = read_metrics(metrics_path);
  summary.metrics_lines = static_cast<int64_t>(m.steps.size());
  summary.knn_points = static_cast<int64_t>(m.knn.size());
  summary.skipped_lines = m.skipped;

  // The run's settings: config.json, else the checkpoint's.
  const fs::path checkpoint = dir / "checkpoint.pt";
  nlohmann::json config;
  {
    std::ifstream in(dir / "config.json");
    if (in) config = nlohmann::json::parse(in, nullptr, false);
    if (!config.is_object() && fs::exists(checkpoint)) {
      config = to_json(read_checkpoint_config(checkpoint.string()));
    }
  }

  std::ostringstream html;
  const std::string title = "vicreg run: " + fs::absolute(dir).lexically_normal().string();
  html << "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
       << escape(title) << "</title><style>" << kStyle << "</style></head><body><h1>"
       << escape(title) << "</h1>";
  if (!m.steps.empty()) {
    const nlohmann::json& last = m.steps.back();
    html << "<p class=\"sub\">" << escape(config.value("dataset", std::string("?"))) << ", "
         << escape(config.value("arch", std::string("?"))) << ", step "
         << last.value("step", int64_t{0}) << ", epoch " << format_number(last.value("epoch", 0.0))
         << ", " << format_number(last.value("elapsed_s", 0.0) / 60) << " min, "
         << format_number(last.value("images_per_s", 0.0)) << " images/s, final loss "
         << format_number(last.value("loss", 0.0)) << "</p>";
  }
  if (m.skipped > 0) {
    html << "<p>" << m.skipped << " unreadable line(s) of metrics.jsonl were skipped.</p>";
  }

  // Curves.
  std::vector<std::string> charts;
  const auto chart = [&](const std::string& id, const std::string& t, const std::string& y_label,
                         std::vector<svg::Series> series, bool log_y = false) {
    svg::LineChart c;
    c.id = id;
    c.title = t;
    c.x_label = "epoch";
    c.y_label = y_label;
    c.log_y = log_y;
    c.series = std::move(series);
    charts.push_back(svg::line_chart(c));
  };
  chart("chart-loss", "Loss", "loss", {series_of(m.steps, "loss", "loss")});
  chart("chart-terms", "Loss terms (unweighted)", "term",
        {series_of(m.steps, "invariance", "invariance"),
         series_of(m.steps, "variance", "variance"),
         series_of(m.steps, "covariance", "covariance")},
        /*log_y=*/true);
  chart("chart-lr", "Learning rate", "lr", {series_of(m.steps, "lr", "lr")});
  chart("chart-std", "Std of the embedding Z per dimension", "std",
        {series_of(m.steps, "std_z", "mean"), series_of(m.steps, "std_z_min", "min")});
  chart("chart-rankme", "RankMe (effective rank) of a batch", "rank",
        {series_of(m.steps, "rankme_y", "representation Y"),
         series_of(m.steps, "rankme_z", "embedding Z")});
  if (m.knn.empty()) {
    svg::LineChart c;
    c.id = "chart-knn";
    c.title = "kNN accuracy on the test split (train with --eval-every N)";
    charts.push_back(svg::line_chart(c));
  } else {
    chart("chart-knn", "kNN accuracy on the test split", "%",
          {series_of(m.knn, "knn_top1", "top-1", "epoch", 100.0),
           series_of(m.knn, "knn_top5", "top-5", "epoch", 100.0)});
  }
  chart("chart-throughput", "Throughput", "images/s",
        {series_of(m.steps, "images_per_s", "images/s")});

  // The final model: diagnostics on the test split, the std histogram, the neighbour grid.
  std::string model_html, grid_html;
  if (fs::is_regular_file(checkpoint)) {
    const TrainConfig tc = read_checkpoint_config(checkpoint.string());
    DatasetConfig dc;
    dc.name = tc.dataset;
    dc.data_dir = options.data_dir.empty() ? tc.data_dir : options.data_dir;
    dc.channels = tc.channels;
    dc.split = "test";
    const Dataset test = load_dataset(dc);
    dc.split = "train";
    const Dataset full_train = load_dataset(dc);
    const int64_t bank_n =
        options.bank > 0 ? std::min(options.bank, full_train.size()) : full_train.size();
    const Dataset bank = full_train.subset(torch::arange(bank_n));
    TrainedModel tm = read_model(checkpoint.string(), test);
    const torch::Device device(options.device);
    tm.model->to(device);
    EvalTransform t;
    if (!test.is_vector()) {
      t = eval_transform_for(tc.resolved_recipe(), static_cast<int>(test.channels),
                             tm.model->config.encoder.image_size);
    }
    const torch::Tensor y_test = compute_representations(*tm.model->backbone, test, t, 512, device);
    torch::Tensor z_test;
    {
      torch::NoGradGuard no_grad;
      z_test = tm.model->projector->forward(y_test.to(device)).to(torch::kCPU, torch::kFloat);
    }
    const CollapseStats sy = collapse_stats(y_test), sz = collapse_stats(z_test);
    model_html += "<h2>Final model on the test split (" + std::to_string(test.size()) +
                  " samples, step " + std::to_string(tm.step) + ")</h2>"
                  "<table><tr><th></th><th>dim</th><th>std mean</th><th>std min</th>"
                  "<th>covariance term c</th><th>RankMe</th></tr>" +
                  stats_row("representation Y", sy) + stats_row("embedding Z", sz) + "</table>";
    const torch::Tensor std_z = z_test.std(0).to(torch::kDouble).contiguous();
    svg::Histogram h;
    h.id = "chart-std-hist";
    h.title = "Per-dimension std of Z on the test split (" + std::to_string(std_z.numel()) +
              " dims)";
    h.x_label = "std";
    h.values.assign(std_z.data_ptr<double>(), std_z.data_ptr<double>() + std_z.numel());
    charts.push_back(svg::histogram(h));
    summary.model = true;

    if (!test.is_vector() && test.labels.defined()) {
      // Queries: the first test image of each class, then the next ones in order.
      std::vector<int64_t> queries;
      std::map<int64_t, bool> seen;
      const torch::Tensor labels = test.labels.contiguous();
      const int64_t* lp = labels.data_ptr<int64_t>();
      for (int64_t i = 0; i < test.size() && static_cast<int64_t>(queries.size()) < options.queries; ++i) {
        if (!seen[lp[i]]) {
          seen[lp[i]] = true;
          queries.push_back(i);
        }
      }
      for (int64_t i = 0; i < test.size() && static_cast<int64_t>(queries.size()) < options.queries; ++i) {
        if (std::find(queries.begin(), queries.end(), i) == queries.end()) queries.push_back(i);
      }
      const torch::Tensor y_bank = compute_representations(*tm.model->backbone, bank, t, 512, device);
      namespace F = torch::nn::functional;
      const auto unit = [](const torch::Tensor& x) {
        return F::normalize(x, F::NormalizeFuncOptions().dim(1));
      };
      const torch::Tensor q = unit(y_test.index_select(0, torch::tensor(queries, torch::kLong)));
      const int64_t k = std::min(options.neighbours, bank_n);
      const auto [sim, idx] = q.mm(unit(y_bank).t()).topk(k, 1);
      std::ostringstream g;
      g << "<h2>Nearest training neighbours in representation space</h2><p class=\"sub\">Cosine "
           "similarity over the first "
        << bank_n << " training images; green: same class, red: another.</p><table class=\"grid\">";
      for (size_t r = 0; r < queries.size(); ++r) {
        const int64_t qi = queries[r], ql = lp[qi];
        g << "<tr><td><img class=\"query\" src=\"" << png_data_uri(test.image(qi)) << "\" alt=\"test "
          << qi << "\">" << escape(class_name(test, ql)) << "</td>";
        for (int64_t j = 0; j < k; ++j) {
          const int64_t bi = idx[static_cast<int64_t>(r)][j].item<int64_t>();
          const int64_t bl = bank.labels[bi].item<int64_t>();
          g << "<td><img class=\"" << (bl == ql ? "same" : "other") << "\" src=\""
            << png_data_uri(bank.image(bi)) << "\" alt=\"train " << bi << "\" title=\"similarity "
            << format_number(sim[static_cast<int64_t>(r)][j].item<double>()) << "\">"
            << escape(class_name(bank, bl)) << "</td>";
        }
        g << "</tr>";
        ++summary.grid_rows;
      }
      g << "</table>";
      grid_html = g.str();
    }
  } else {
    model_html = "<h2>Final model</h2><p>No checkpoint.pt in the directory: no diagnostics, "
                 "histogram or neighbours.</p>";
  }

  html << "<h2>Training curves</h2><div class=\"charts\">";
  for (const std::string& c : charts) html << c;
  html << "</div>";
  summary.charts = static_cast<int64_t>(charts.size());
  html << model_html;

  // Evaluation results: every JSON file in the directory that `vicreg eval --json` wrote.
  std::vector<fs::path> jsons;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".json") jsons.push_back(e.path());
  }
  std::sort(jsons.begin(), jsons.end());
  std::ostringstream evals, markdown;
  markdown << "| result | protocol | features | top-1 % | top-5 % | labelled samples | seconds |\n"
              "|---|---|---|---:|---:|---:|---:|\n";
  char row[512];
  for (const fs::path& p : jsons) {
    std::ifstream in(p);
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("protocol") || !j.contains("top1")) continue;
    evals << "<tr><td>" << escape(p.filename().string()) << "</td><td>"
          << escape(j["protocol"].get<std::string>()) << "</td><td>"
          << escape(j.value("features", std::string("representation"))) << "</td><td>"
          << format_number(100 * j["top1"].get<double>()) << "</td><td>"
          << format_number(100 * j.value("top5", 0.0)) << "</td><td>"
          << j.value("train_samples", int64_t{0}) << "</td><td><code>"
          << escape(j.value("settings", nlohmann::json::object()).dump()) << "</code></td></tr>";
    std::snprintf(row, sizeof row, "| %s | %s | %s | %.2f | %.2f | %lld | %.0f |\n",
                  p.stem().string().c_str(), j["protocol"].get<std::string>().c_str(),
                  j.value("features", std::string("representation")).c_str(),
                  100 * j["top1"].get<double>(), 100 * j.value("top5", 0.0),
                  static_cast<long long>(j.value("train_samples", int64_t{0})),
                  j.value("seconds", 0.0));
    markdown << row;
    ++summary.eval_results;
  }
  html << "<h2>Evaluation</h2>";
  if (summary.eval_results > 0) {
    html << "<table id=\"eval-results\"><tr><th>file</th><th>protocol</th><th>features</th>"
            "<th>top-1 %</th><th>top-5 %</th><th>labelled train samples</th><th>settings</th>"
            "</tr>"
         << evals.str() << "</table>";
  } else {
    html << "<p>No results yet: run <code>vicreg eval --backbone " << escape(dir.string())
         << "/backbone.pt --json " << escape(dir.string()) << "/linear.json</code>.</p>";
  }
  html << grid_html;
  if (config.is_object()) {
    html << "<h2>Settings</h2><details><summary>config.json</summary><pre>"
         << escape(config.dump(2)) << "</pre></details>";
  }
  html << "<p id=\"render-check\">not rendered</p>" << kRenderCheck << "</body></html>\n";

  const auto write = [](const fs::path& out, const std::string& text) {
    const fs::path tmp = out.string() + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary);
      if (!f || !(f << text) || !f.flush()) {
        throw std::runtime_error("cannot write '" + tmp.string() + "'");
      }
    }
    fs::rename(tmp, out);
  };
  write(summary.path, html.str());
  summary.results_path = (fs::path(summary.path).parent_path() / "results.md").string();
  write(summary.results_path, markdown.str());
  return summary;
}

}  // namespace vicreg
