#include "vicreg/report.h"

#include "report_parts.h"

#include "vicreg/run/evaluation.h"

#include "vicreg/error.h"
#include "vicreg/evaluate.h"
#include "vicreg/io/files.h"
#include "vicreg/run/artifacts.h"

#include <torch/nn/functional/normalization.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace vicreg {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// a run's files (report_parts.h)

namespace report_parts {

using svg::escape;

Metrics read_metrics(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw FormatError("cannot read '" + path.string() + "'");
  Metrics m;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      ++m.skipped;
      continue;
    }
    const std::string event = j.contains("event") && j["event"].is_string() ? j["event"] : "";
    (event == "knn" ? m.knn : event == "online_probe" ? m.online : m.steps).push_back(std::move(j));
  }
  return m;
}

/// The series key over x key of the metrics lines that have both.
svg::Series series_of(const std::vector<nlohmann::json>& lines, const std::string& key,
                      const std::string& name, const std::string& x_key, double scale) {
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
    svg.querySelectorAll('.series, .bar, .point').forEach(function (e) {
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

/// The run's settings: config.json, else the checkpoint's; none when neither can be read.
std::optional<TrainConfig> run_config(const fs::path& dir) {
  const fs::path config = dir / "config.json", checkpoint = dir / "checkpoint.pt";
  try {
    if (fs::is_regular_file(config)) return read_run_config_file(config.string());
  } catch (const Error&) {
    // an unreadable config.json: fall back to the checkpoint's
  }
  if (fs::is_regular_file(checkpoint)) return read_checkpoint_config(checkpoint.string());
  return std::nullopt;
}

/// A line chart over epochs: the report's and the comparison's.
std::string epoch_chart(const std::string& id, const std::string& title, const std::string& y_label,
                        std::vector<svg::Series> series, bool log_y) {
  svg::LineChart c;
  c.id = id;
  c.title = title;
  c.x_label = "epoch";
  c.y_label = y_label;
  c.log_y = log_y;
  c.series = std::move(series);
  return svg::line_chart(c);
}

/// The evaluation results in a directory (its *.json files that are ones), by file name.
std::vector<EvalResult> eval_results(const fs::path& dir) {
  std::vector<fs::path> jsons;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".json") jsons.push_back(e.path());
  }
  std::sort(jsons.begin(), jsons.end());
  std::vector<EvalResult> out;
  for (const fs::path& p : jsons) {
    std::ifstream in(p);
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("protocol") || !j["protocol"].is_string() ||
        !j.contains("top1") || !j["top1"].is_number()) {
      continue;
    }
    EvalResult r;
    r.file = p;
    r.protocol = j["protocol"].get<std::string>();
    r.features = j.value("features", std::string("representation"));
    r.top1 = j["top1"].get<double>();
    if (j.contains("top5") && j["top5"].is_number()) r.top5 = j["top5"].get<double>();
    r.seconds = j.value("seconds", 0.0);
    r.train_samples = j.value("train_samples", int64_t{0});
    r.settings = j.value("settings", nlohmann::json::object());
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace report_parts

using namespace report_parts;  // NOLINT: this file's own parts

// ---------------------------------------------------------------------------------------------
// the report

namespace {

using svg::escape;
using svg::format_number;

std::string png_data_uri(const cv::Mat& image) {
  cv::Mat bgr = image;
  if (image.channels() == 3) cv::cvtColor(image, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> png;
  if (!cv::imencode(".png", bgr, png)) throw FormatError("report: PNG encoding failed");
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

/// The training curves of metrics.jsonl.
std::vector<std::string> curve_charts(const Metrics& m, const ObjectiveTerms& terms) {
  std::vector<std::string> charts;
  const auto chart = [&](const std::string& id, const std::string& t, const std::string& y_label,
                         std::vector<svg::Series> series, bool log_y = false) {
    charts.push_back(epoch_chart(id, t, y_label, std::move(series), log_y));
  };
  chart("chart-loss", "Loss", "loss", {series_of(m.steps, "loss", "loss")});
  std::vector<svg::Series> term_series;
  for (const ObjectiveTerm& term : terms)
    term_series.push_back(series_of(m.steps, term.key, term.key));
  chart("chart-terms", "Loss terms (unweighted)", "term", std::move(term_series), /*log_y=*/true);
  chart("chart-lr", "Learning rate", "lr", {series_of(m.steps, "lr", "lr")});
  chart("chart-std", "Std of the embedding Z per dimension", "std",
        {series_of(m.steps, "std_z", "mean"), series_of(m.steps, "std_z_min", "min")});
  chart("chart-rankme", "RankMe (effective rank) of a batch", "rank",
        {series_of(m.steps, "rankme_y", "representation Y"),
         series_of(m.steps, "rankme_z", "embedding Z")});
  // A chart that says "no data" and what would give it some.
  const auto empty = [&](const std::string& id, const std::string& t) {
    svg::LineChart c;
    c.id = id;
    c.title = t;
    charts.push_back(svg::line_chart(c));
  };
  if (m.knn.empty()) {
    empty("chart-knn", "kNN accuracy on the test split (train with --eval-every N)");
  } else {
    chart("chart-knn", "kNN accuracy on the test split", "%",
          {series_of(m.knn, "knn_top1", "top-1", "epoch", 100.0),
           series_of(m.knn, "knn_top5", "top-5", "epoch", 100.0)});
  }
  const svg::Series probe_train =
      series_of(m.steps, "online_probe_top1", "training batches", "epoch", 100.0);
  if (probe_train.x.empty() && m.online.empty()) {
    empty("chart-online-probe", "Online linear probe (labelled data, --online-probe)");
  } else {
    chart("chart-online-probe", "Online linear probe top-1", "%",
          {probe_train, series_of(m.online, "top1", "test split", "epoch", 100.0)});
  }
  chart("chart-throughput", "Throughput", "images/s",
        {series_of(m.steps, "images_per_s", "images/s")});
  return charts;
}

/// Queries of the neighbour grid: the first test image of each class, then the next ones.
std::vector<int64_t> grid_queries(const Dataset& test, int64_t count) {
  std::vector<int64_t> queries;
  std::map<int64_t, bool> seen;
  const torch::Tensor labels = test.labels.contiguous();
  const int64_t* lp = labels.data_ptr<int64_t>();
  const auto full = [&] { return static_cast<int64_t>(queries.size()) >= count; };
  for (int64_t i = 0; i < test.size() && !full(); ++i) {
    if (!seen[lp[i]]) {
      seen[lp[i]] = true;
      queries.push_back(i);
    }
  }
  for (int64_t i = 0; i < test.size() && !full(); ++i) {
    if (std::find(queries.begin(), queries.end(), i) == queries.end()) queries.push_back(i);
  }
  return queries;
}

/// The grid of test images and their nearest training images in representation space.
std::string neighbour_grid(const Dataset& test, const torch::Tensor& y_test, const Dataset& bank,
                           const torch::Tensor& y_bank, const ReportOptions& options,
                           int64_t& rows) {
  const std::vector<int64_t> queries = grid_queries(test, options.queries);
  namespace F = torch::nn::functional;
  const auto unit = [](const torch::Tensor& x) {
    return F::normalize(x, F::NormalizeFuncOptions().dim(1));
  };
  const torch::Tensor q = unit(y_test.index_select(0, torch::tensor(queries, torch::kLong)));
  const int64_t k = std::min(options.neighbours, bank.size());
  const auto [sim, idx] = q.mm(unit(y_bank).t()).topk(k, 1);
  std::ostringstream g;
  g << "<h2>Nearest training neighbours in representation space</h2><p class=\"sub\">Cosine "
       "similarity over the first "
    << bank.size()
    << " training images; green: same class, red: another.</p><table class=\"grid\">";
  for (size_t r = 0; r < queries.size(); ++r) {
    const int64_t qi = queries[r], ql = test.labels[qi].item<int64_t>();
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
    ++rows;
  }
  g << "</table>";
  return g.str();
}

/// The test representations on their first two principal components: one point per sampled test
/// sample (evenly spaced over the split), coloured by class.
std::string embedding_map(const Dataset& test, const torch::Tensor& y_test, int64_t points,
                          int64_t& drawn) {
  const int64_t n = y_test.size(0);
  svg::ScatterChart c;
  c.id = "chart-embedding-map";
  c.x_label = "PC 1";
  c.y_label = "PC 2";
  c.width = 560;
  if (n < 2 || y_test.size(1) < 2) {
    c.title = "Test representations: too few to map";
    return svg::scatter_chart(c);
  }
  const PrincipalComponents pc = principal_components(y_test, 2);
  const int64_t m = points > 0 ? std::min(points, n) : n;
  const torch::Tensor proj = pc.projection.to(torch::kDouble).contiguous();
  const double* p = proj.data_ptr<double>();
  const torch::Tensor labels =
      test.labels.defined() ? test.labels.contiguous() : torch::zeros({n}, torch::kLong);
  const int64_t* lp = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t at = m == n ? i : i * n / m;
    c.x.push_back(p[2 * at]);
    c.y.push_back(p[2 * at + 1]);
    c.group.push_back(lp[at]);
  }
  for (int64_t g = 0; g <= labels.max().item<int64_t>(); ++g) {
    c.group_names.push_back(class_name(test, g));
  }
  c.title = "Test representations, first two principal components (" +
            format_number(100 * pc.explained[0]) + " % and " +
            format_number(100 * pc.explained[1]) + " % of the variance; " + std::to_string(m) +
            " of " + std::to_string(n) + ")";
  drawn = m;
  return svg::scatter_chart(c);
}

/// The final model's section: diagnostics on the test split, the std histogram, the embedding
/// map, the grid.
struct ModelSection {
  std::string html, histogram, map, grid;
  int64_t grid_rows = 0, map_points = 0;
};

ModelSection model_section(const fs::path& checkpoint, const ReportOptions& options) {
  ModelSection out;
  const TrainConfig recorded = read_checkpoint_config(checkpoint.string());
  TrainConfig tc = recorded;
  if (!options.data_dir.empty()) tc.runtime.data_dir = options.data_dir;
  check_recorded_paths(recorded, tc, checkpoint.string());
  const Dataset test = load_dataset(tc.dataset_config(Split::Test));
  TrainedModel tm = read_model(checkpoint.string(), test);
  const torch::Device device(options.device);
  NumericsRequest request;
  request.precision = options.precision;
  request.trained_precision = tc.runtime.precision;
  request.trained_channels_last = tc.runtime.channels_last;
  request.trained_bf16_conv = tc.runtime.bf16_conv;
  request.convolutional = !test.is_vector() && tc.convolutional();
  const Numerics numerics = resolve_numerics(request, device);
  const Precision precision = numerics.precision.precision;
  tm.model->to(device);
  if (numerics.channels_last) to_channels_last(*tm.model->backbone);
  EvalTransform t;
  if (!test.is_vector()) {
    t = eval_transform_for(tc.resolved_recipe(), static_cast<int>(test.channels),
                           tm.model->config.encoder.image_size);
  }
  const torch::Tensor y_test =
      compute_representations(*tm.model->backbone, test, t, 512, device, precision);
  const torch::Tensor z_test = compute_embeddings(*tm.model->projector, y_test, device, precision);
  const CollapseStats sy = collapse_stats(y_test), sz = collapse_stats(z_test);
  out.html = "<h2>Final model on the test split (" + std::to_string(test.size()) +
             " samples, step " + std::to_string(tm.step) +
             ")</h2><table><tr><th></th><th>dim</th><th>std mean</th><th>std min</th>"
             "<th>covariance term c</th><th>RankMe</th></tr>" +
             stats_row("representation Y", sy) + stats_row("embedding Z", sz) + "</table>";
  const torch::Tensor std_z = z_test.std(0).to(torch::kDouble).contiguous();
  svg::Histogram h;
  h.id = "chart-std-hist";
  h.title = "Per-dimension std of Z on the test split (" + std::to_string(std_z.numel()) + " dims)";
  h.x_label = "std";
  h.values.assign(std_z.data_ptr<double>(), std_z.data_ptr<double>() + std_z.numel());
  out.histogram = svg::histogram(h);
  out.map = embedding_map(test, y_test, options.map_points, out.map_points);
  if (!test.is_vector() && test.labels.defined()) {
    const Dataset full_train = load_dataset(tc.dataset_config(Split::Train));
    const int64_t bank_n =
        options.bank > 0 ? std::min(options.bank, full_train.size()) : full_train.size();
    const Dataset bank = full_train.subset(torch::arange(bank_n));
    const torch::Tensor y_bank =
        compute_representations(*tm.model->backbone, bank, t, 512, device, precision);
    out.grid = neighbour_grid(test, y_test, bank, y_bank, options, out.grid_rows);
  }
  return out;
}

/// Every `vicreg eval --json` result in the directory, as an HTML table and as Markdown.
struct EvalSection {
  std::string html, markdown;
  int64_t results = 0;
};

EvalSection eval_section(const fs::path& dir) {
  EvalSection out;
  std::ostringstream rows, markdown;
  markdown << "| result | protocol | features | top-1 % | top-5 % | labelled samples | seconds |\n"
              "|---|---|---|---:|---:|---:|---:|\n";
  char row[512];
  for (const EvalResult& r : eval_results(dir)) {
    char top5[32] = "-";
    if (r.top5) std::snprintf(top5, sizeof top5, "%.2f", 100 * *r.top5);
    rows << "<tr><td>" << escape(r.file.filename().string()) << "</td><td>" << escape(r.protocol)
         << "</td><td>" << escape(r.features) << "</td><td>" << format_number(100 * r.top1)
         << "</td><td>" << (r.top5 ? format_number(100 * *r.top5) : "-") << "</td><td>"
         << r.train_samples << "</td><td><code>" << escape(r.settings.dump())
         << "</code></td></tr>";
    std::snprintf(row, sizeof row, "| %s | %s | %s | %.2f | %s | %lld | %.0f |\n",
                  r.file.stem().string().c_str(), r.protocol.c_str(), r.features.c_str(),
                  100 * r.top1, top5, static_cast<long long>(r.train_samples), r.seconds);
    markdown << row;
    ++out.results;
  }
  out.markdown = markdown.str();
  if (out.results > 0) {
    out.html =
        "<table id=\"eval-results\"><tr><th>file</th><th>protocol</th><th>features</th>"
        "<th>top-1 %</th><th>top-5 %</th><th>labelled train samples</th><th>settings</th>"
        "</tr>" +
        rows.str() + "</table>";
  } else {
    out.html = "<p>No results yet: run <code>vicreg eval --backbone " + escape(dir.string()) +
               "/backbone.pt --json " + escape(dir.string()) + "/linear.json</code>.</p>";
  }
  return out;
}

}  // namespace

ReportSummary write_report(const ReportOptions& options) {
  const fs::path dir(options.exp_dir);
  const fs::path metrics_path = dir / "metrics.jsonl";
  if (!fs::is_regular_file(metrics_path)) {
    throw FormatError("'" + options.exp_dir +
                      "' holds no metrics.jsonl: give the --exp-dir of a `vicreg train` run");
  }
  if (options.queries < 1 || options.neighbours < 1 || options.bank < 0 || options.map_points < 0) {
    throw UsageError(
        "report: --queries and --neighbours must be >= 1, --bank and --map-points >= 0");
  }
  ReportSummary summary;
  summary.path = options.out.empty() ? (dir / "report.html").string() : options.out;
  const Metrics m = read_metrics(metrics_path);
  summary.metrics_lines = static_cast<int64_t>(m.steps.size());
  summary.knn_points = static_cast<int64_t>(m.knn.size());
  summary.skipped_lines = m.skipped;
  const std::optional<TrainConfig> config = run_config(dir);

  std::ostringstream html;
  const std::string title = "vicreg run: " + fs::absolute(dir).lexically_normal().string();
  html << "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape(title)
       << "</title><style>" << kStyle << "</style></head><body><h1>" << escape(title) << "</h1>";
  if (!m.steps.empty()) {
    const nlohmann::json& last = m.steps.back();
    html << "<p class=\"sub\">" << escape(config ? to_string(config->data.dataset) : "?") << ", "
         << escape(config ? config->model.arch : "?") << ", step " << last.value("step", int64_t{0})
         << ", epoch " << format_number(last.value("epoch", 0.0)) << ", "
         << format_number(last.value("elapsed_s", 0.0) / 60) << " min, "
         << format_number(last.value("images_per_s", 0.0)) << " images/s, final loss "
         << format_number(last.value("loss", 0.0)) << "</p>";
  }
  if (m.skipped > 0) {
    html << "<p>" << m.skipped << " unreadable line(s) of metrics.jsonl were skipped.</p>";
  }

  // The objective's terms (a run whose settings cannot be read: the default objective's).
  std::vector<std::string> charts =
      curve_charts(m, objective_terms(config ? config->loss.objective : LossConfig().objective));
  ModelSection model;
  const fs::path checkpoint = dir / "checkpoint.pt";
  bool held_out = true;
  if (fs::is_regular_file(checkpoint)) {
    try {
      model = model_section(checkpoint, options);
    } catch (const NoHeldOutSplitError& e) {
      held_out = false;
      summary.missing = std::string(
                            "the final model's section (diagnostics, embedding map, "
                            "neighbours) needs a held-out split: ") +
                        e.what();
      model = ModelSection{};
      model.html = "<h2>Final model</h2><p>" + escape(summary.missing) + "</p>";
    }
  }
  if (fs::is_regular_file(checkpoint) && held_out) {
    charts.push_back(model.histogram);
    charts.push_back(model.map);
    summary.model = true;
    summary.map_points = model.map_points;
    summary.grid_rows = model.grid_rows;
  } else if (held_out) {
    model.html =
        "<h2>Final model</h2><p>No checkpoint.pt in the directory: no diagnostics, "
        "histogram or neighbours.</p>";
  }
  html << "<h2>Training curves</h2><div class=\"charts\">";
  for (const std::string& c : charts) html << c;
  html << "</div>";
  summary.charts = static_cast<int64_t>(charts.size());
  html << model.html;

  const EvalSection evals = eval_section(dir);
  summary.eval_results = evals.results;
  html << "<h2>Evaluation</h2>" << evals.html << model.grid;
  if (config) {
    html << "<h2>Settings</h2><details><summary>config.json</summary><pre>"
         << escape(to_json(*config).dump(2)) << "</pre></details>";
  }
  html << "<p id=\"render-check\">not rendered</p>" << kRenderCheck << "</body></html>\n";

  write_file_atomically(summary.path, html.str());
  summary.results_path = (fs::path(summary.path).parent_path() / "results.md").string();
  write_file_atomically(summary.results_path, evals.markdown);
  return summary;
}

}  // namespace vicreg
