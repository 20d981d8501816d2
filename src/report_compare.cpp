// Several runs side by side: one page of their curves, settings and results (report.h's
// write_comparison).
#include "vicreg/report.h"

#include "report_parts.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace vicreg {

using namespace report_parts;  // NOLINT: the report's shared parts
using svg::escape;
using svg::format_number;

ComparisonSummary write_comparison(const ComparisonOptions& options) {
  if (options.exp_dirs.size() < 2) {
    throw UsageError("report: a comparison needs at least two --exp-dir (one gives its report)");
  }
  struct Run {
    std::string label;
    fs::path dir;
    Metrics metrics;
    std::optional<TrainConfig> config;
    std::vector<EvalResult> evals;
  };
  std::vector<Run> runs;
  std::vector<std::string> protocols;  // every protocol evaluated, in first-seen order
  for (const std::string& d : options.exp_dirs) {
    const fs::path dir(d);
    if (!fs::is_regular_file(dir / "metrics.jsonl")) {
      throw FormatError("'" + d +
                        "' holds no metrics.jsonl: give the --exp-dir of a `vicreg train` run");
    }
    Run r{d, dir, read_metrics(dir / "metrics.jsonl"), std::nullopt, eval_results(dir)};
    try {
      r.config = run_config(dir);
    } catch (const Error&) {
      // settings unreadable: the table says "?"
    }
    for (const EvalResult& e : r.evals) {
      if (std::find(protocols.begin(), protocols.end(), e.protocol) == protocols.end()) {
        protocols.push_back(e.protocol);
      }
    }
    runs.push_back(std::move(r));
  }
  ComparisonSummary summary;
  summary.runs = static_cast<int64_t>(runs.size());
  fs::path first = fs::absolute(runs.front().dir).lexically_normal();
  if (first.filename().empty()) first = first.parent_path();  // "runs/a/"
  summary.path =
      options.out.empty() ? (first.parent_path() / "compare.html").string() : options.out;

  std::vector<std::string> charts;
  const auto chart = [&](const std::string& id, const std::string& title,
                         const std::string& y_label,
                         const std::function<svg::Series(const Run&)>& of) {
    std::vector<svg::Series> series;
    for (const Run& r : runs) series.push_back(of(r));
    charts.push_back(epoch_chart(id, title, y_label, std::move(series)));
  };
  chart("compare-loss", "Loss", "loss",
        [](const Run& r) { return series_of(r.metrics.steps, "loss", r.label); });
  chart("compare-knn", "kNN top-1 on the test split (--eval-every)", "%",
        [](const Run& r) { return series_of(r.metrics.knn, "knn_top1", r.label, "epoch", 100.0); });
  chart("compare-online-probe", "Online linear probe top-1 on the test split", "%",
        [](const Run& r) { return series_of(r.metrics.online, "top1", r.label, "epoch", 100.0); });
  chart("compare-std", "Mean std of Z per dimension", "std",
        [](const Run& r) { return series_of(r.metrics.steps, "std_z", r.label); });
  chart("compare-rankme", "RankMe of the representation Y (a batch)", "rank",
        [](const Run& r) { return series_of(r.metrics.steps, "rankme_y", r.label); });
  chart("compare-throughput", "Throughput", "images/s",
        [](const Run& r) { return series_of(r.metrics.steps, "images_per_s", r.label); });
  summary.charts = static_cast<int64_t>(charts.size());

  // The table: settings, last numbers, the last result of each protocol.
  const auto last_number = [](const std::vector<nlohmann::json>& lines, const std::string& key,
                              double scale) -> std::string {
    for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
      if (it->contains(key) && (*it)[key].is_number()) {
        return format_number(scale * (*it)[key].get<double>());
      }
    }
    return "";
  };
  std::ostringstream table;
  table << "<table id=\"compare-runs\"><tr><th>run</th><th>data set</th><th>arch</th>"
           "<th>expander</th><th>batch</th><th>optimizer</th><th>base lr</th><th>epochs</th>"
           "<th>step</th><th>final loss</th><th>kNN top-1 % (last probe)</th>"
           "<th>online probe top-1 %</th>";
  for (const std::string& p : protocols) table << "<th>" << escape(p) << " top-1 %</th>";
  table << "</tr>";
  for (const Run& r : runs) {
    const auto cell = [](const std::string& v) { return "<td>" + escape(v) + "</td>"; };
    const TrainConfig* c = r.config ? &*r.config : nullptr;
    table << "<tr class=\"run\">" << cell(r.label) << cell(c ? to_string(c->data.dataset) : "?")
          << cell(c ? c->model.arch : "?") << cell(c ? c->model.mlp : "?")
          << cell(c ? std::to_string(c->optim.batch_size) : "?")
          << cell(c ? to_string(c->optim.optimizer) : "?")
          << cell(c ? format_number(c->optim.base_lr) : "?")
          << cell(c ? std::to_string(c->optim.epochs) : "?")
          << cell(last_number(r.metrics.steps, "step", 1.0))
          << cell(last_number(r.metrics.steps, "loss", 1.0))
          << cell(last_number(r.metrics.knn, "knn_top1", 100.0))
          << cell(last_number(r.metrics.online, "top1", 100.0));
    for (const std::string& p : protocols) {
      std::string v;
      for (const EvalResult& e : r.evals) {
        if (e.protocol == p) v = format_number(100 * e.top1);  // the last file of it, by name
      }
      table << cell(v);
    }
    table << "</tr>";
    summary.eval_results += static_cast<int64_t>(r.evals.size());
  }
  table << "</table>";

  std::ostringstream html;
  const std::string title = "vicreg: " + std::to_string(runs.size()) + " runs side by side";
  html << "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape(title)
       << "</title><style>" << kStyle << "</style></head><body><h1>" << escape(title) << "</h1>"
       << "<h2>Runs</h2>" << table.str() << "<h2>Curves</h2><div class=\"charts\">";
  for (const std::string& c : charts) html << c;
  html << "</div><p id=\"render-check\">not rendered</p>" << kRenderCheck << "</body></html>\n";
  write_file_atomically(summary.path, html.str());
  return summary;
}

}  // namespace vicreg
