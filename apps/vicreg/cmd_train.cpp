// vicreg train: the settings' flags (run/config.h), --config, --resume and --progress; the
// process group from torchrun's environment; signals; the closing line.
#include "commands.h"

#include "vicreg/distributed.h"
#include "vicreg/error.h"
#include "vicreg/run/trainer.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>

namespace vicreg::cli {

namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_signal.store(sig);
  g_stop.store(true);
  std::signal(sig, SIG_DFL);  // a second signal ends the process at once
}

struct TrainArgs {
  TrainConfig config;
  std::string config_file, resume;
  ProgressStyle progress = ProgressStyle::Auto;
  CLI::App* cmd = nullptr;
  std::vector<std::string> config_file_keys;  ///< the settings the --config file names

  /// The settings given on the command line or in the --config file.
  std::vector<std::string> given() const {
    std::vector<std::string> keys = config_file_keys;
    for_each_setting(config, [&](const Setting& s, const auto&) {
      if (cmd->count(flag_name(s.key)) > 0) keys.push_back(s.key);
    });
    return keys;
  }
};

/// The process group of torchrun's environment, checked before any work; null for one process.
std::shared_ptr<ProcessGroup> join_process_group(TrainConfig& config) {
  const DistributedEnv env = read_distributed_env();
  if (!env.distributed()) return nullptr;
  who() = "vicreg (rank " + std::to_string(env.rank) + ")";
  config.validate();
  const int64_t batch = config.optim.batch_size;
  if (batch % env.world_size != 0) {
    throw UsageError("--batch-size " + std::to_string(batch) +
                     " is not divisible by WORLD_SIZE=" + std::to_string(env.world_size) +
                     ": the global batch is split evenly over the processes; use a multiple of " +
                     std::to_string(env.world_size));
  }
  // One process = one device: cuda means this process's local GPU.
  if (config.runtime.device == "cuda") {
    config.runtime.device = "cuda:" + std::to_string(env.local_rank);
  }
  try {
    return init_process_group(env, config.distributed_options());
  } catch (const DistributedError& e) {
    throw Error(e.what(), e.settings());  // nothing started: no checkpoint to speak of
  }
}

int run_train(TrainArgs& a) {
  const std::shared_ptr<ProcessGroup> group = join_process_group(a.config);
  const bool main_rank = !group || group->rank() == 0;
  Trainer trainer(a.config, a.resume, group, a.given(), a.progress);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  TrainHooks hooks;
  hooks.progress = a.progress;
  hooks.stop_requested = &g_stop;
  const TrainResult r = trainer.run(hooks);
  const int sig = g_signal.load();
  const int stop_code = sig != 0 ? 128 + sig : r.stop_requested ? 128 + SIGINT : 0;
  if (!main_rank) return stop_code;  // rank 0 reports
  const std::string dir = trainer.config().runtime.exp_dir;
  const auto step = static_cast<long long>(r.step);
  if (sig != 0) {
    std::fprintf(stderr,
                 "vicreg: stopped by signal %d at step %lld; checkpoint saved in %s/checkpoint.pt "
                 "(run the same command again to resume)\n",
                 sig, step, dir.c_str());
  } else if (r.stop_requested) {
    std::fprintf(stderr,
                 "vicreg: stopped at step %lld because another rank was asked to stop; checkpoint "
                 "saved in %s/checkpoint.pt (run the same command again to resume)\n",
                 step, dir.c_str());
  } else if (r.session_steps == 0) {
    std::fprintf(stderr,
                 "vicreg: the run in %s is already at step %lld of %lld%s: nothing to do (%s); "
                 "backbone %s/backbone.pt\n",
                 dir.c_str(), step, static_cast<long long>(trainer.total_steps()),
                 r.already_finished ? ", finished" : " (--max-steps)",
                 r.already_finished ? "give another --exp-dir for a new run"
                                    : "raise --max-steps, or leave it out, to go on",
                 dir.c_str());
  } else {
    std::fprintf(stderr,
                 "vicreg: %s at step %lld/%lld, loss %.4f, %.0f images/s, data wait %.1f%%; "
                 "checkpoint %s/checkpoint.pt, backbone %s/backbone.pt\n",
                 r.finished ? "finished" : "stopped (--max-steps)", step,
                 static_cast<long long>(trainer.total_steps()), r.last_loss, r.images_per_second,
                 100.0 * r.data_wait_fraction, dir.c_str(), dir.c_str());
  }
  return stop_code;
}

}  // namespace

Run setup_train(CLI::App& cmd, const std::vector<std::string>& argv) {
  auto a = std::make_shared<TrainArgs>();
  // The --config file's settings become the defaults that flags override.
  a->cmd = &cmd;
  if (argv.size() > 1 && argv[1] == "train") {
    a->config = config_from_argv(argv, {}, &a->config_file_keys);
  }
  cmd.add_option("--config", a->config_file,
                 "JSON file of settings (a run's config.json, or keys as the flags with '_' for "
                 "'-'); flags given on the command line override it");
  add_setting_flags(cmd, a->config);
  cmd.add_option("--resume", a->resume,
                 "Continue from this checkpoint (by default, from EXP_DIR/checkpoint.pt if it "
                 "exists)");
  add_choice_flag(cmd, "--progress", a->progress,
                  "auto (a bar on a terminal, log lines otherwise), bar, plain or none");
  return [a] { return run_train(*a); };
}

}  // namespace vicreg::cli
