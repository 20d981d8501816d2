// What a run reports while it trains: metrics.jsonl (one JSON object per log interval and per
// kNN probe), the same scalars as TensorBoard event files beside it, and the terminal (a progress
// bar, plain log lines, or nothing).
#pragma once

#include "vicreg/names.h"
#include "vicreg/terms.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace vicreg {

/// One optimizer step's numbers.
struct StepStats {
  double loss = 0, lr = 0;
  /// The objective's terms, in the order of its terms() (objective.h).
  std::vector<double> terms;
  double std_z = 0, std_z_min = 0;  ///< mean and min over dimensions of the std of z_a
  /// Loss scaling: the optimizer step was skipped (an inf or NaN gradient).
  bool skipped = false;
  /// The online linear probe's step (probe_count 0: none): its cross-entropy and top-1 hits.
  double probe_loss = 0;
  int64_t probe_correct = 0, probe_count = 0;
};

/// The steps of one log interval, summed.
struct IntervalStats {
  int64_t steps = 0;       ///< all steps, skipped ones included
  int64_t skipped = 0;     ///< steps whose update was skipped (their numbers are left out)
  int64_t bad_images = 0;  ///< unreadable image files skipped by the loader (--skip-bad-images)
  StepStats sum;
  void add(const StepStats& s);
  /// The mean of every number over the steps not skipped (lr: the last step's; NaN when every
  /// step was skipped).
  StepStats mean(double last_lr) const;
};

/// Where progress goes: auto (a bar on a terminal, log lines otherwise), bar, plain, none.
enum class ProgressStyle { Auto, Bar, Plain, None };
template <>
const NameTable<ProgressStyle>& name_table<ProgressStyle>();

/// h:mm:ss
std::string clock_time(double seconds);

class EventFileWriter;

/// The TensorBoard scalars of a metrics line: every number in it but "step", tagged
/// "SECTION/KEY", where SECTION is the line's "event" ("knn") or "train", and KEY the key without
/// a leading "SECTION_": {"step": 5, "loss": 2.5} -> train/loss; {"event": "knn", "knn_top1":
/// 80} -> knn/top1. Booleans, strings and nulls (NaN in JSON) are left out.
std::vector<std::pair<std::string, double>> tensorboard_scalars(const nlohmann::json& line);

/// Appends JSON lines to metrics.jsonl, flushed after each (a killed run loses no whole line),
/// and, with TensorBoard on, the same numbers (tensorboard_scalars) to an event file of this
/// process's own in the same directory (io/tensorboard.h), made at the first line written.
class MetricsLog {
 public:
  /// Opens `path` for appending; FormatError when it cannot. With `resume_step` >= 0 (a run
  /// resumed from a checkpoint of that step; 0: from scratch), the lines past it are dropped
  /// first, with a partial last line, and so are the events past it in the directory's event
  /// files, TensorBoard on or not: a run killed after its last checkpoint wrote them, and the
  /// resumed run writes those steps again, so that no step appears twice.
  explicit MetricsLog(const std::string& path, int64_t resume_step = -1, bool tensorboard = false);
  ~MetricsLog();
  void write(const nlohmann::json& line);
  /// The event file written (empty before the first line, and with TensorBoard off).
  std::string event_file() const;

 private:
  std::string path_;
  std::ofstream out_;
  bool tensorboard_ = false;
  std::unique_ptr<EventFileWriter> events_;
};

/// The terminal side: a bar that redraws itself on one line, or plain log lines. Silent on every
/// rank but 0.
class ProgressReporter {
 public:
  ProgressReporter(ProgressStyle style, bool main_rank);
  /// Whether anything is shown at all.
  bool active() const { return bar_ || plain_; }
  /// A line of its own (the run's start, the process group), before the first interval.
  void note(const std::string& line) const;
  /// One log interval: `line` is the metrics line (epoch, step, lr, loss, the objective's
  /// `terms`, std_z, images_per_s, data_wait_fraction, elapsed_s); `eta_s` the estimated time
  /// left.
  void interval(const nlohmann::json& line, const ObjectiveTerms& terms, int64_t epochs,
                int64_t steps_per_epoch, int64_t total_steps, double eta_s) const;
  /// A held-out probe's metrics line (kNN, or the online linear probe's).
  void probe(const nlohmann::json& line, int64_t steps_per_epoch) const;
  /// Ends the bar's line (before an error message, or at the end).
  void finish() const;

 private:
  bool bar_ = false, plain_ = false;
};

}  // namespace vicreg
