#include "vicreg/run/progress.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"
#include "vicreg/io/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

namespace vicreg {

void IntervalStats::add(const StepStats& s) {
  ++steps;
  if (s.skipped) {
    ++skipped;
    return;
  }
  sum.loss += s.loss;
  if (sum.terms.size() < s.terms.size()) sum.terms.resize(s.terms.size(), 0.0);
  for (size_t i = 0; i < s.terms.size(); ++i) sum.terms[i] += s.terms[i];
  sum.std_z += s.std_z;
  sum.std_z_min += s.std_z_min;
  sum.probe_loss += s.probe_loss * static_cast<double>(s.probe_count);
  sum.probe_correct += s.probe_correct;
  sum.probe_count += s.probe_count;
}

StepStats IntervalStats::mean(double last_lr) const {
  const int64_t counted = steps - skipped;
  const double k =
      counted > 0 ? 1.0 / static_cast<double>(counted) : std::numeric_limits<double>::quiet_NaN();
  StepStats m;
  m.loss = sum.loss * k;
  for (const double term : sum.terms) m.terms.push_back(term * k);
  m.std_z = sum.std_z * k;
  m.std_z_min = sum.std_z_min * k;
  m.lr = last_lr;
  m.probe_correct = sum.probe_correct;
  m.probe_count = sum.probe_count;
  m.probe_loss = sum.probe_count > 0 ? sum.probe_loss / static_cast<double>(sum.probe_count)
                                     : std::numeric_limits<double>::quiet_NaN();
  return m;
}

template <>
const NameTable<ProgressStyle>& name_table<ProgressStyle>() {
  static const NameTable<ProgressStyle> t{"--progress",
                                          {{ProgressStyle::Auto, "auto"},
                                           {ProgressStyle::Bar, "bar"},
                                           {ProgressStyle::Plain, "plain"},
                                           {ProgressStyle::None, "none"}}};
  return t;
}

std::string clock_time(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d:%02d", static_cast<int>(s / 3600),
                static_cast<int>((s / 60) % 60), static_cast<int>(s % 60));
  return buf;
}

namespace {

/// metrics.jsonl without the lines past `step` and without unreadable (partial) lines.
void cut_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;  // nothing logged yet
  std::string kept, line;
  bool cut = false;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool keep = j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
                      j["step"].get<int64_t>() <= step;
    if (keep) {
      kept += line + "\n";
    } else {
      cut = true;
    }
  }
  if (cut) write_file_atomically(path, kept);
}

}  // namespace

std::vector<std::pair<std::string, double>> tensorboard_scalars(const nlohmann::json& line) {
  std::vector<std::pair<std::string, double>> out;
  if (!line.is_object()) return out;
  const auto event = line.find("event");
  const std::string section =
      event != line.end() && event->is_string() ? event->get<std::string>() : "train";
  const std::string prefix = section + "_";
  for (const auto& [key, value] : line.items()) {
    if (key == "step" || !value.is_number()) continue;
    const bool prefixed = key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0;
    out.emplace_back(section + "/" + (prefixed ? key.substr(prefix.size()) : key),
                     value.get<double>());
  }
  return out;
}

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step, bool tensorboard)
    : path_(path), tensorboard_(tensorboard) {
  if (resume_step >= 0) {
    cut_metrics(path, resume_step);
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    cut_event_files(dir.empty() ? "." : dir.string(), resume_step);
  }
  out_.open(path, std::ios::app);
  if (!out_) throw FormatError("cannot write '" + path + "' (is the directory writable?)");
}

MetricsLog::~MetricsLog() = default;

void MetricsLog::write(const nlohmann::json& line) {
  out_ << line.dump() << "\n" << std::flush;
  if (!out_) throw FormatError("cannot write '" + path_ + "' (is the disk full?)");
  if (!tensorboard_) return;
  if (!events_) {
    const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
    events_ = std::make_unique<EventFileWriter>(dir.empty() ? "." : dir.string());
  }
  const auto step = line.find("step");
  events_->add_scalars(step != line.end() && step->is_number_integer() ? step->get<int64_t>() : 0,
                       tensorboard_scalars(line));
}

std::string MetricsLog::event_file() const { return events_ ? events_->path() : ""; }

ProgressReporter::ProgressReporter(ProgressStyle style, bool main_rank) {
  if (!main_rank) return;
  bar_ = style == ProgressStyle::Bar || (style == ProgressStyle::Auto && isatty(STDERR_FILENO));
  plain_ = style == ProgressStyle::Plain || (style == ProgressStyle::Auto && !bar_);
}

void ProgressReporter::note(const std::string& line) const {
  if (active()) std::fprintf(stderr, "%s\n", line.c_str());
}

void ProgressReporter::interval(const nlohmann::json& m, const ObjectiveTerms& terms,
                                int64_t epochs, int64_t per_epoch, int64_t total,
                                double eta_s) const {
  if (!active()) return;
  const auto step = m["step"].get<int64_t>();
  const auto epoch = static_cast<long long>((step - 1) / per_epoch + 1);
  const double loss = m["loss"].get<double>(), ips = m["images_per_s"].get<double>();
  if (bar_) {
    const int width = 24;
    const int filled = static_cast<int>(width * step / std::max<int64_t>(total, 1));
    std::fprintf(stderr, "\r[%s%s] epoch %lld/%lld step %lld/%lld loss %.4f %.0f img/s ETA %s ",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), epoch,
                 static_cast<long long>(epochs), static_cast<long long>(step),
                 static_cast<long long>(total), loss, ips, clock_time(eta_s).c_str());
    return;
  }
  std::string parts;  // "inv 0.1234 var 0.5678 cov 0.0012"
  for (const ObjectiveTerm& term : terms) {
    char b[64];
    const auto v = m.find(term.key);
    std::snprintf(b, sizeof b, "%s%s %.4f", parts.empty() ? "" : " ", term.abbrev.c_str(),
                  v != m.end() && v->is_number() ? v->get<double>() : std::nan(""));
    parts += b;
  }
  std::fprintf(stderr,
               "epoch %lld/%lld step %lld/%lld lr %.4g loss %.4f (%s) std(z) %.3f %.0f img/s data "
               "wait %.1f%% elapsed %s ETA %s\n",
               epoch, static_cast<long long>(epochs), static_cast<long long>(step),
               static_cast<long long>(total), m["lr"].get<double>(), loss, parts.c_str(),
               m["std_z"].get<double>(), ips, 100.0 * m["data_wait_fraction"].get<double>(),
               clock_time(m["elapsed_s"].get<double>()).c_str(), clock_time(eta_s).c_str());
}

void ProgressReporter::probe(const nlohmann::json& p, int64_t per_epoch) const {
  if (!active()) return;
  // Top-5 is left out of the line with 5 classes or fewer.
  const auto top5 = [&p](const char* key) {
    char b[32] = "";
    if (p.contains(key)) std::snprintf(b, sizeof b, " top-5 %.2f %%", 100 * p[key].get<double>());
    return std::string(b);
  };
  const auto epoch = static_cast<long long>(p["step"].get<int64_t>() / per_epoch);
  if (p.value("event", "") == "online_probe") {
    std::fprintf(stderr, "%sepoch %lld online linear probe top-1 %.2f %%%s\n", bar_ ? "\n" : "",
                 epoch, 100 * p["top1"].get<double>(), top5("top5").c_str());
    return;
  }
  std::fprintf(stderr, "%sepoch %lld kNN top-1 %.2f %%%s (bank %lld), RankMe %.1f\n",
               bar_ ? "\n" : "", epoch, 100 * p["knn_top1"].get<double>(), top5("knn_top5").c_str(),
               static_cast<long long>(p["bank"].get<int64_t>()),
               p["rankme_representation"].get<double>());
}

void ProgressReporter::finish() const {
  if (bar_) std::fprintf(stderr, "\n");
}

}  // namespace vicreg
