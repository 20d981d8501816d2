// vicreg: the command-line front end. Parses arguments, calls the library, turns errors into
// messages and exit codes; nothing else.
//
//   vicreg train [--config FILE.json] [--dataset ...] [--arch ...] [--epochs N] ... (--help)
//   vicreg eval --backbone DIR/backbone.pt | --checkpoint DIR/checkpoint.pt [--embedding] |
//               --baseline pixels|random-init  --protocol linear|knn|finetune [--json FILE] ...
//   vicreg embed (the same subject) --out emb.npy [--labels-out labels.npy] [--split ...]
//   vicreg report --exp-dir DIR [--out FILE] ...
//   vicreg bench-loss [--shapes NxD,...] [--threads N] [--device cpu|cuda] [--dtype float|...]
//                     [--preset official|paper] [--min-time S] [--no-reference] [--json FILE]
#include "vicreg/distributed.h"
#include "vicreg/evaluate.h"
#include "vicreg/loss.h"
#include "vicreg/profile.h"
#include "vicreg/report.h"
#include "vicreg/runtime.h"
#include "vicreg/train.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/version.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

using Shape = std::pair<int64_t, int64_t>;

struct BenchLossArgs {
  std::vector<std::string> shapes = {"256x2048", "512x8192", "2048x8192", "2048x512", "4096x256"};
  int threads = 0;
  std::string device = "cpu";
  std::string dtype = "float";
  std::string preset = "official";
  double min_time = 1.0;
  bool no_reference = false;
  std::string json;
};

Shape parse_shape(const std::string& text) {
  const auto x = text.find('x');
  size_t used_n = 0, used_d = 0;
  long long n = 0, d = 0;
  try {
    if (x == std::string::npos) throw std::invalid_argument("no x");
    n = std::stoll(text.substr(0, x), &used_n);
    d = std::stoll(text.substr(x + 1), &used_d);
  } catch (const std::exception&) {
    used_n = 0;
  }
  if (used_n == 0 || used_n != x || used_d != text.size() - x - 1 || n < 2 || d < 1) {
    throw std::invalid_argument("--shapes: '" + text +
                                "' is not NxD with N >= 2 rows and D >= 1 columns, e.g. 512x8192");
  }
  return {n, d};
}

torch::Dtype parse_dtype(const std::string& name) {
  static const std::map<std::string, torch::Dtype> kDtypes = {{"float", torch::kFloat},
                                                             {"double", torch::kDouble},
                                                             {"half", torch::kHalf},
                                                             {"bfloat16", torch::kBFloat16}};
  return kDtypes.at(name);  // CLI11 has already restricted the choices
}

torch::Device parse_device(const std::string& name) {
  const torch::Device device(name);
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw std::invalid_argument("--device " + name +
                                ": no CUDA device is available to this LibTorch build (use "
                                "--device cpu, or build against a CUDA LibTorch)");
  }
  return device;
}

int run_bench_loss(const BenchLossArgs& args) {
  std::vector<Shape> shapes;
  for (const auto& s : args.shapes) shapes.push_back(parse_shape(s));
  const torch::Device device = parse_device(args.device);
  const torch::Dtype dtype = parse_dtype(args.dtype);
  const vicreg::LossPreset preset = vicreg::loss_preset_from_string(args.preset);
  if (device.is_cpu() && (dtype == torch::kHalf || dtype == torch::kBFloat16) &&
      !args.no_reference) {
    throw std::invalid_argument(
        "--dtype " + args.dtype + " on cpu: the reference formulation computes in the input "
        "dtype, and LibTorch lacks " + args.dtype + " CPU kernels for it; add --no-reference to "
        "time the fused loss alone (it accumulates in float)");
  }
  vicreg::set_threads(args.threads);
  std::printf("%s\n", vicreg::describe_runtime().c_str());
  std::printf("forward + backward of the VICReg loss, %s preset, %s on %s; reference: d x d "
              "covariance, off-diagonal by masking\n\n",
              args.preset.c_str(), args.dtype.c_str(), device.str().c_str());
  std::printf("%6s %6s %12s %12s %9s %12s %12s %12s %12s\n", "n", "d", "fused ms", "ref ms",
              "speed-up", "fused GF/s", "ref GF/s", "fused MB", "ref MB");

  nlohmann::json results = nlohmann::json::array();
  std::vector<vicreg::LossImplementation> impls = {vicreg::LossImplementation::Fused};
  if (!args.no_reference) impls.push_back(vicreg::LossImplementation::Reference);
  for (const auto& [n, d] : shapes) {
    nlohmann::json row = {{"n", n}, {"d", d}};
    std::map<vicreg::LossImplementation, std::pair<double, double>> measured;  // s, bytes
    for (auto impl : impls) {
      auto w = vicreg::make_loss_workload(n, d, impl, device, dtype);
      w.options.preset(preset);
      const double peak = static_cast<double>(vicreg::loss_step_peak_bytes(w));
      const auto timing = vicreg::time_loss_steps(w, 3, args.min_time);
      measured[impl] = {timing.median_seconds, peak};
      row[vicreg::to_string(impl)] = {{"median_ms", timing.median_seconds * 1e3},
                                      {"min_ms", timing.min_seconds * 1e3},
                                      {"iterations", timing.iterations},
                                      {"gflops", vicreg::loss_step_flops(w) /
                                                     timing.median_seconds / 1e9},
                                      {"peak_bytes", peak}};
    }
    const auto& f = row["fused"];
    if (args.no_reference) {
      std::printf("%6lld %6lld %12.2f %12s %9s %12.1f %12s %12.1f %12s\n",
                  static_cast<long long>(n), static_cast<long long>(d),
                  f["median_ms"].get<double>(), "-", "-", f["gflops"].get<double>(), "-",
                  f["peak_bytes"].get<double>() / 1e6, "-");
    } else {
      const auto& r = row["reference"];
      const double speedup = r["median_ms"].get<double>() / f["median_ms"].get<double>();
      row["speedup"] = speedup;
      row["peak_ratio"] = f["peak_bytes"].get<double>() / r["peak_bytes"].get<double>();
      std::printf("%6lld %6lld %12.2f %12.2f %8.1fx %12.1f %12.1f %12.1f %12.1f\n",
                  static_cast<long long>(n), static_cast<long long>(d),
                  f["median_ms"].get<double>(), r["median_ms"].get<double>(), speedup,
                  f["gflops"].get<double>(), r["gflops"].get<double>(),
                  f["peak_bytes"].get<double>() / 1e6, r["peak_bytes"].get<double>() / 1e6);
    }
    std::fflush(stdout);
    results.push_back(row);
  }
  if (!args.json.empty()) {
    const nlohmann::json doc = {{"command", "bench-loss"},
                                {"runtime", vicreg::describe_runtime()},
                                {"device", device.str()},
                                {"dtype", args.dtype},
                                {"preset", args.preset},
                                {"results", results}};
    std::ofstream out(args.json);
    if (!out || !(out << doc.dump(2) << "\n")) {
      throw std::runtime_error("--json: cannot write '" + args.json +
                               "' (does its directory exist and is it writable?)");
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// train

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_signal.store(sig);
  g_stop.store(true);
  std::signal(sig, SIG_DFL);  // a second signal ends the process at once
}

/// The --config file named on the command line, read before CLI11 parses the flags, so that the
/// file's values become the defaults that flags override.
vicreg::TrainConfig config_from_argv(int argc, char** argv) {
  vicreg::TrainConfig config;
  for (int i = 1; i < argc; ++i) {
    std::string path;
    if (std::strcmp(argv[i], "--config") == 0 && i + 1 < argc) path = argv[i + 1];
    if (std::strncmp(argv[i], "--config=", 9) == 0) path = argv[i] + 9;
    if (path.empty()) continue;
    std::ifstream in(path);
    if (!in) throw std::invalid_argument("--config: cannot read '" + path + "'");
    nlohmann::json json;
    try {
      in >> json;
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument("--config '" + path + "' is not valid JSON: " + e.what());
    }
    try {
      vicreg::update_from_json(config, json);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("--config '" + path + "': " + e.what());
    }
  }
  return config;
}

struct TrainArgs {
  std::string config_file, resume, progress = "auto";
};

void add_train_options(CLI::App* cmd, vicreg::TrainConfig& c, TrainArgs& a) {
  // A flag given twice takes its last value (so a script's flags can be overridden by appending).
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", a.config_file,
                  "JSON file of settings (keys as the flags, '_' for '-', e.g. a run's "
                  "config.json); flags given on the command line override it");
  // data
  cmd->add_option("--dataset", c.dataset, "fashion-mnist, mnist, cifar10, cifar100, "
                                          "image-folder, npy")->capture_default_str();
  cmd->add_option("--data-dir", c.data_dir,
                  "Folder of the data (fashion-mnist: /usr/share/datasets/fashion-mnist; npy: a "
                  "folder with train.npy [+ train_labels.npy], or the .npy file)");
  cmd->add_option("--recipe", c.recipe, "Augmentation recipe: imagenet, cifar, fashion-mnist "
                                        "(default: the data set's)");
  cmd->add_option("--image-size", c.image_size, "Crop size (0: the recipe's)")->capture_default_str();
  cmd->add_option("--channels", c.channels, "image-folder: decode to 3 (RGB) or 1 channel")
      ->capture_default_str();
  // model
  cmd->add_option("--arch", c.arch, "Backbone: resnet18, resnet34, resnet50, convnet, mlp")
      ->capture_default_str();
  cmd->add_option("--width", c.width, "convnet: channels of the first stage")->capture_default_str();
  cmd->add_option("--stages", c.stages, "convnet: stages")->capture_default_str();
  cmd->add_option("--encoder-mlp", c.encoder_mlp, "mlp backbone: hidden layers")
      ->capture_default_str();
  cmd->add_option("--mlp", c.mlp, "Expander layer sizes, e.g. 8192-8192-8192")
      ->capture_default_str();
  cmd->add_flag("--shared-weights,!--no-shared-weights", c.shared_weights,
                "Both views through the same backbone and expander (default), or one each");
  cmd->add_option("--arch-b", c.arch_b, "Second branch's backbone with --no-shared-weights");
  cmd->add_option("--init-backbone", c.init_backbone,
                  "Start the backbone from these weights (new runs only): a safetensors or "
                  "torch.save state dict with torchvision's names, e.g. torchvision's resnet50, "
                  "the official VICReg resnet50.pth, or a file from vicreg export; fc.* is "
                  "skipped");
  // optimisation
  cmd->add_option("--epochs", c.epochs, "Epochs (the schedule's length)")->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Batch size")->capture_default_str();
  cmd->add_option("--base-lr", c.base_lr,
                  "Base learning rate; lars/sgd use base-lr * batch-size / 256")
      ->capture_default_str();
  cmd->add_option("--wd", c.wd, "Weight decay")->capture_default_str();
  cmd->add_option("--optimizer", c.optimizer, "lars, adamw, sgd")->capture_default_str();
  cmd->add_option("--momentum", c.momentum, "LARS/SGD momentum")->capture_default_str();
  cmd->add_option("--eta", c.eta, "LARS trust coefficient")->capture_default_str();
  cmd->add_flag("--clip-lr,!--no-clip-lr", c.clip_lr, "LARS: solo-learn's lr clipping");
  cmd->add_option("--warmup-epochs", c.warmup_epochs, "Linear warm-up (epochs, per step)")
      ->capture_default_str();
  cmd->add_option("--end-lr-ratio", c.end_lr_ratio, "Cosine decay ends at this fraction of the peak")
      ->capture_default_str();
  // loss
  cmd->add_option("--sim-coeff", c.sim_coeff, "Invariance weight (lambda)")->capture_default_str();
  cmd->add_option("--std-coeff", c.std_coeff, "Variance weight (mu)")->capture_default_str();
  cmd->add_option("--cov-coeff", c.cov_coeff, "Covariance weight (nu)")->capture_default_str();
  cmd->add_option("--loss-preset", c.loss_preset, "official or paper")->capture_default_str();
  // runtime
  cmd->add_option("--device", c.device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", c.threads, "Intra-op threads (0: one per core)")
      ->capture_default_str();
  cmd->add_option("--workers", c.workers, "Data loader threads")->capture_default_str();
  cmd->add_option("--prefetch", c.prefetch, "Batches prepared ahead")->capture_default_str();
  cmd->add_option("--seed", c.seed, "Seed of initialisation, data order and augmentation")
      ->capture_default_str();
  cmd->add_option("--exp-dir", c.exp_dir, "Experiment directory (config.json, metrics.jsonl, "
                                          "checkpoint.pt, backbone.pt)")->capture_default_str();
  cmd->add_option("--log-every", c.log_every, "Steps per metrics line")->capture_default_str();
  cmd->add_option("--max-steps", c.max_steps,
                  "Stop after this many optimizer steps in all (the schedule still follows "
                  "--epochs; 0: no limit)")->capture_default_str();
  cmd->add_option("--eval-every", c.eval_every,
                  "kNN probe (k 20, T 0.07) on the test split every N epochs, logged to "
                  "metrics.jsonl (0: never)")->capture_default_str();
  cmd->add_option("--eval-bank", c.eval_bank,
                  "Training samples in the kNN bank of --eval-every (0: all)")->capture_default_str();
  // distributed
  cmd->add_flag("--sync-bn,!--no-sync-bn", c.sync_bn,
                "With several processes (torchrun), BatchNorm statistics over all of them "
                "(default, as the reference), or each process's own");
  cmd->add_option("--dist-backend", c.dist_backend,
                  "With several processes: auto (NCCL on CUDA, else Gloo), gloo or nccl")
      ->capture_default_str();
  cmd->add_option("--dist-timeout", c.dist_timeout,
                  "With several processes: seconds to wait for the others (rendezvous and every "
                  "collective) before reporting the missing rank and stopping")
      ->capture_default_str();
  cmd->add_option("--resume", a.resume,
                  "Continue from this checkpoint (by default, from EXP_DIR/checkpoint.pt if it "
                  "exists)");
  cmd->add_option("--progress", a.progress, "auto (bar on a terminal), bar, plain, none")
      ->check(CLI::IsMember({"auto", "bar", "plain", "none"}))
      ->capture_default_str();
}

/// "vicreg" or, with several processes, "vicreg (rank R)": the prefix of every message.
std::string g_who = "vicreg";

int run_train(vicreg::TrainConfig config, const TrainArgs& args) {
  // torchrun's environment, checked before any work (a single process when it is not set).
  const vicreg::DistributedEnv env = vicreg::read_distributed_env();
  std::shared_ptr<vicreg::ProcessGroup> group;
  if (env.distributed()) {
    g_who = "vicreg (rank " + std::to_string(env.rank) + ")";
    config.validate();
    if (config.batch_size % env.world_size != 0) {
      throw std::invalid_argument(
          "--batch-size " + std::to_string(config.batch_size) + " is not divisible by " +
          "WORLD_SIZE=" + std::to_string(env.world_size) + ": the global batch is split evenly "
          "over the processes; use a multiple of " + std::to_string(env.world_size));
    }
    // One process = one device: cuda means this process's local GPU.
    if (config.device == "cuda") config.device = "cuda:" + std::to_string(env.local_rank);
    vicreg::DistributedOptions o;
    o.backend = config.dist_backend;
    o.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.dist_timeout * 1000));
    o.device = torch::Device(config.device);
    try {
      group = vicreg::init_process_group(env, o);
    } catch (const vicreg::DistributedError& e) {
      throw std::runtime_error(e.what());  // nothing started: no checkpoint to speak of
    }
  }
  vicreg::Trainer trainer(config, args.resume, group);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  vicreg::TrainHooks hooks;
  hooks.progress = args.progress;
  hooks.stop_requested = &g_stop;
  const vicreg::TrainResult r = trainer.run(hooks);
  const std::string dir = trainer.config().exp_dir;
  if (env.rank != 0) {  // rank 0 reports
    return g_signal.load() != 0 ? 128 + g_signal.load() : r.stop_requested ? 128 + SIGINT : 0;
  }
  if (g_signal.load() != 0) {
    std::fprintf(stderr,
                 "vicreg: stopped by signal %d at step %lld; checkpoint saved in %s/checkpoint.pt "
                 "(run the same command again to resume)\n",
                 g_signal.load(), static_cast<long long>(r.step), dir.c_str());
    return 128 + g_signal.load();
  }
  if (r.stop_requested) {
    std::fprintf(stderr,
                 "vicreg: stopped at step %lld because another rank was asked to stop; checkpoint "
                 "saved in %s/checkpoint.pt (run the same command again to resume)\n",
                 static_cast<long long>(r.step), dir.c_str());
    return 128 + SIGINT;
  }
  std::fprintf(stderr,
               "vicreg: %s at step %lld/%lld, loss %.4f, %.0f images/s, data wait %.1f%%; "
               "checkpoint %s/checkpoint.pt, backbone %s/backbone.pt\n",
               r.finished ? "finished" : "stopped (--max-steps)", static_cast<long long>(r.step),
               static_cast<long long>(trainer.total_steps()), r.last_loss, r.images_per_second,
               100.0 * r.data_wait_fraction, dir.c_str(), dir.c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
// eval, embed

struct EvalArgs {
  // what is evaluated: exactly one of these
  std::string backbone, checkpoint, baseline, init_backbone;
  std::string config_file;  ///< --baseline's and --init-backbone's settings
  bool embedding = false;
  std::string protocol = "linear", json, data_dir, device = "cpu", split = "test";
  std::string out, labels_out;
  int threads = 0;
  // 0 / negative: the protocol's default (linear: 100 epochs, lr 0.02, wd 1e-6; finetune: 20
  // epochs, head lr 0.1, backbone lr 0.01, wd 0)
  int64_t batch_size = 256, epochs = 0, k = 20;
  double lr = 0, lr_backbone = -1, wd = -1, temperature = 0.07, label_fraction = 0.1;
  bool augment = false;
  uint64_t seed = 0;
};

/// What `eval` and `embed` look at: a trained backbone, a whole checkpoint (backbone and
/// expander), or a baseline (raw pixels, or the untrained model of a config), with the data it
/// belongs to.
struct Subject {
  std::string name;
  vicreg::TrainConfig config;
  vicreg::Encoder encoder;
  vicreg::Expander projector{nullptr};  ///< --checkpoint only
  vicreg::Dataset train, test;
  vicreg::EvalTransform transform;
  int64_t image_size = 0;
};

vicreg::Dataset load_split(const vicreg::TrainConfig& c, const EvalArgs& args,
                           const std::string& split) {
  vicreg::DatasetConfig dc;
  dc.name = c.dataset;
  dc.data_dir = args.data_dir.empty() ? c.data_dir : args.data_dir;
  dc.split = split;
  dc.channels = c.channels;
  return vicreg::load_dataset(dc);
}

Subject load_subject(const EvalArgs& args, const vicreg::TrainConfig& config_flag,
                     const std::vector<std::string>& splits) {
  const int given = !args.backbone.empty() + !args.checkpoint.empty() + !args.baseline.empty() +
                    !args.init_backbone.empty();
  if (given != 1) {
    throw std::invalid_argument("give exactly one of --backbone (a run's backbone.pt), "
                                "--checkpoint (its checkpoint.pt), --init-backbone FILE or "
                                "--baseline pixels|random-init");
  }
  if (!args.config_file.empty() && args.baseline.empty() && args.init_backbone.empty()) {
    throw std::invalid_argument("--config applies to --baseline and --init-backbone only (a "
                                "backbone or checkpoint carries its own settings)");
  }
  if (args.embedding && args.checkpoint.empty()) {
    throw std::invalid_argument("--embedding needs the expander: give --checkpoint "
                                "EXP_DIR/checkpoint.pt instead of --backbone");
  }
  Subject s;
  vicreg::Backbone b;
  if (!args.backbone.empty()) {
    b = vicreg::read_backbone(args.backbone);
    s.config = b.config;
    s.name = args.backbone;
  } else if (!args.checkpoint.empty()) {
    s.config = vicreg::read_checkpoint_config(args.checkpoint);
    s.name = args.checkpoint;
  } else {
    s.config = config_flag;  // --config FILE, or the default run
    s.name = args.baseline.empty() ? args.init_backbone : "baseline:" + args.baseline;
  }
  for (const std::string& split : splits) {
    (split == "train" ? s.train : s.test) = load_split(s.config, args, split);
  }
  const vicreg::Dataset& shape = splits.front() == "train" ? s.train : s.test;
  const vicreg::VICRegModelConfig mc = vicreg::model_config(s.config, shape);
  s.image_size = mc.encoder.image_size;
  if (!args.backbone.empty()) {
    if (shape.is_vector() ? shape.features() != b.in_features : shape.channels != b.in_channels) {
      throw std::invalid_argument(
          "backbone '" + args.backbone + "' takes " +
          (shape.is_vector() ? "vectors of " + std::to_string(b.in_features) + " features"
                             : std::to_string(b.in_channels) + "-channel images") +
          ", the data have " +
          (shape.is_vector() ? std::to_string(shape.features()) + " features"
                             : std::to_string(shape.channels) + " channels") +
          " (for other data, give --init-backbone FILE with --config SETTINGS.json)");
    }
    s.encoder = b.encoder;
    if (b.image_size > 0) s.image_size = b.image_size;  // 0: not recorded (foreign weights)
  } else if (!args.checkpoint.empty()) {
    vicreg::TrainedModel m = vicreg::read_model(args.checkpoint, shape);
    s.encoder = m.model->backbone;
    s.projector = m.model->projector;
  } else if (!args.init_backbone.empty()) {
    s.encoder = vicreg::VICReg(mc)->backbone;  // the model of --config, weights from the file
    const vicreg::WeightsFile file = vicreg::read_weights(args.init_backbone);
    vicreg::load_encoder_weights(*s.encoder, file.tensors,
                                 "--init-backbone '" + args.init_backbone + "'");
  } else if (args.baseline == "random-init") {
    torch::manual_seed(s.config.seed);  // the run's model before its first step
    s.encoder = vicreg::VICReg(mc)->backbone;
  } else {
    const int64_t dim = shape.is_vector()
                            ? shape.features()
                            : shape.channels * mc.encoder.image_size * mc.encoder.image_size;
    s.encoder = std::make_shared<vicreg::PixelEncoderImpl>(dim);
  }
  if (!shape.is_vector()) {
    s.transform = vicreg::eval_transform_for(s.config.resolved_recipe(),
                                             static_cast<int>(shape.channels), s.image_size);
  }
  const torch::Device device = parse_device(args.device);
  s.encoder->to(device);
  s.encoder->eval();
  if (s.projector) {
    s.projector->to(device);
    s.projector->eval();
  }
  return s;
}

/// The expander's output for representations y: [N, D] float32 on the CPU.
torch::Tensor project(Subject& s, const torch::Tensor& y, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> z;
  for (int64_t i = 0; i < y.size(0); i += 4096) {
    const torch::Tensor chunk = y.narrow(0, i, std::min<int64_t>(4096, y.size(0) - i));
    z.push_back(s.projector->forward(chunk.to(device)).to(torch::kCPU, torch::kFloat));
  }
  return torch::cat(z);
}

/// Representations of `data` (embeddings with `embedding`), [N, D] float32 on the CPU.
torch::Tensor features_of(Subject& s, const vicreg::Dataset& data, const EvalArgs& args,
                          bool embedding) {
  const torch::Device device = parse_device(args.device);
  const torch::Tensor y =
      vicreg::compute_representations(*s.encoder, data, s.transform, 512, device);
  return embedding ? project(s, y, device) : y;
}

nlohmann::json stats_json(const vicreg::CollapseStats& c) {
  return {{"std_mean", c.std_mean}, {"std_min", c.std_min},  {"covariance", c.covariance},
          {"rankme", c.rankme},     {"dim", c.dim}};
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int run_eval(const EvalArgs& args, const vicreg::TrainConfig& config_flag) {
  vicreg::set_threads(args.threads);
  const bool finetune = args.protocol == "finetune";
  if (args.embedding && (finetune || args.augment)) {
    throw std::invalid_argument("--embedding evaluates fixed embeddings: use it with --protocol "
                                "knn or linear without --augment");
  }
  const auto t0 = std::chrono::steady_clock::now();
  Subject s = load_subject(args, config_flag, {"train", "test"});
  const torch::Tensor ytr = s.train.require_labels(), yte = s.test.require_labels();
  if (ytr.min().item<int64_t>() < 0 || yte.min().item<int64_t>() < 0) {
    throw std::invalid_argument("the labels of '" + s.config.dataset + "' must be >= 0");
  }
  const torch::Device device = parse_device(args.device);
  const bool image_data = !s.train.is_vector();
  vicreg::Accuracy acc;
  nlohmann::json settings, diagnostics;
  double feature_s = 0;
  int64_t train_used = s.train.size();
  // Collapse diagnostics of the test split's representations and (with an expander) embeddings.
  const auto diagnose = [&](const torch::Tensor& test_y) {
    diagnostics["representation"] = stats_json(vicreg::collapse_stats(test_y));
    if (s.projector) {
      diagnostics["embedding"] = stats_json(vicreg::collapse_stats(project(s, test_y, device)));
    }
  };
  vicreg::ClassifierOptions co;
  co.batch_size = args.batch_size;
  co.seed = args.seed;
  if (finetune || args.augment) {
    co.epochs = args.epochs > 0 ? args.epochs : (finetune ? 20 : 100);
    co.lr_head = args.lr > 0 ? args.lr : (finetune ? 0.1 : 0.02);
    co.lr_backbone = finetune ? (args.lr_backbone >= 0 ? args.lr_backbone : 0.01) : 0.0;
    co.weight_decay = args.wd >= 0 ? args.wd : (finetune ? 0.0 : 1e-6);
    vicreg::Dataset train = s.train;
    if (finetune) {
      train = s.train.subset(vicreg::balanced_subset(ytr, args.label_fraction, args.seed));
      train_used = train.size();
    }
    const vicreg::ViewConfig augment =
        image_data ? vicreg::classifier_augmentation(s.config.resolved_recipe(),
                                                     static_cast<int>(s.train.channels),
                                                     s.image_size)
                   : vicreg::ViewConfig{};
    diagnose(features_of(s, s.test, args, false));  // of the model as given, before any training
    acc = vicreg::train_classifier(*s.encoder, train, s.test, augment, s.transform, co, device);
    settings = {{"epochs", co.epochs},   {"batch_size", co.batch_size},
                {"lr_head", co.lr_head}, {"lr_backbone", co.lr_backbone},
                {"wd", co.weight_decay}, {"augment", image_data},
                {"seed", co.seed}};
    if (finetune) settings["label_fraction"] = args.label_fraction;
  } else {
    const torch::Tensor ftr = features_of(s, s.train, args, args.embedding);
    const torch::Tensor rep_te = features_of(s, s.test, args, false);
    const torch::Tensor fte = args.embedding ? project(s, rep_te, device) : rep_te;
    feature_s = seconds_since(t0);
    if (args.protocol == "knn") {
      const int64_t classes = std::max(ytr.max().item<int64_t>(), yte.max().item<int64_t>()) + 1;
      acc = vicreg::accuracy(vicreg::knn_scores(ftr, ytr, fte, args.k, args.temperature, classes),
                             yte);
      settings = {{"k", args.k}, {"temperature", args.temperature}};
    } else {
      vicreg::LinearProbeOptions o;
      o.epochs = args.epochs > 0 ? args.epochs : 100;
      o.batch_size = args.batch_size;
      o.lr = args.lr > 0 ? args.lr : 0.02;
      o.weight_decay = args.wd >= 0 ? args.wd : 1e-6;
      o.seed = args.seed;
      acc = vicreg::linear_probe(ftr, ytr, fte, yte, o);
      settings = {{"epochs", o.epochs}, {"batch_size", o.batch_size}, {"lr", o.lr},
                  {"wd", o.weight_decay}, {"standardize", o.standardize}, {"augment", false},
                  {"seed", o.seed}};
    }
    diagnose(rep_te);
  }
  const double total_s = seconds_since(t0);
  const std::string on = args.embedding ? "embedding" : "representation";
  std::printf("%s on the %s of %s, %s (%lld train / %lld test): top-1 %.2f %%, top-5 %.2f %%; "
              "%.1f s\n",
              args.protocol.c_str(), on.c_str(), s.name.c_str(), s.config.dataset.c_str(),
              static_cast<long long>(train_used), static_cast<long long>(s.test.size()),
              100 * acc.top1, 100 * acc.top5, total_s);
  for (const auto& [what, d] : diagnostics.items()) {
    std::printf("  test %s: std mean %.3f min %.3f, covariance term %.4g, RankMe %.1f of %lld\n",
                what.c_str(), d["std_mean"].get<double>(), d["std_min"].get<double>(),
                d["covariance"].get<double>(), d["rankme"].get<double>(),
                static_cast<long long>(d["dim"].get<int64_t>()));
  }
  if (!args.json.empty()) {
    nlohmann::json doc = {{"protocol", args.protocol},
                          {"top1", acc.top1},
                          {"top5", acc.top5},
                          {"features", on},
                          {"subject", s.name},
                          {"dataset", s.config.dataset},
                          {"settings", settings},
                          {"diagnostics", diagnostics},
                          {"rankme", diagnostics["representation"]["rankme"]},
                          {"seconds", total_s},
                          {"feature_seconds", feature_s},
                          {"threads", at::get_num_threads()},
                          {"train_samples", train_used},
                          {"test_samples", s.test.size()}};
    if (!args.backbone.empty()) doc["backbone"] = args.backbone;
    if (!args.checkpoint.empty()) doc["checkpoint"] = args.checkpoint;
    if (!args.baseline.empty()) doc["baseline"] = args.baseline;
    std::ofstream out(args.json);
    if (!out || !(out << doc.dump(2) << "\n")) {
      throw std::runtime_error("--json: cannot write '" + args.json + "'");
    }
  }
  return 0;
}

int run_embed(const EvalArgs& args, const vicreg::TrainConfig& config_flag) {
  vicreg::set_threads(args.threads);
  Subject s = load_subject(args, config_flag, {args.split});
  const vicreg::Dataset& data = args.split == "train" ? s.train : s.test;
  const torch::Tensor f = features_of(s, data, args, args.embedding);
  vicreg::write_npy(args.out, f);
  if (!args.labels_out.empty()) vicreg::write_npy(args.labels_out, data.require_labels());
  std::printf("wrote %lld x %lld %ss of the %s split to %s\n", static_cast<long long>(f.size(0)),
              static_cast<long long>(f.size(1)),
              args.embedding ? "embedding" : "representation", args.split.c_str(),
              args.out.c_str());
  return 0;
}

void add_eval_common(CLI::App* cmd, EvalArgs& a) {
  cmd->add_option("--backbone", a.backbone,
                  "A run's backbone.pt, a safetensors file from vicreg export, or a torchvision "
                  "ResNet's state dict (safetensors or torch.save; the architecture is read off "
                  "the weights)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--init-backbone", a.init_backbone,
                  "Weights (safetensors or torch.save, torchvision's names) for the backbone of "
                  "the model of --config (default: the default run)");
  cmd->add_option("--checkpoint", a.checkpoint,
                  "A run's checkpoint.pt (backbone and expander; needed for --embedding and the "
                  "embedding diagnostics)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--baseline", a.baseline,
                  "Instead of a trained model: pixels (the normalised image) or random-init (the "
                  "untrained model of --config FILE, default: the default run)")
      ->check(CLI::IsMember({"pixels", "random-init"}));
  cmd->add_option("--config", a.config_file,
                  "Run settings for --baseline and --init-backbone (e.g. a run's config.json)");
  cmd->add_flag("--embedding", a.embedding,
                "Use the expander's output (the embedding) instead of the representation");
  cmd->add_option("--data-dir", a.data_dir, "Where the data are (default: as in training)");
  cmd->add_option("--threads", a.threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
}

// ---------------------------------------------------------------------------------------------
// export

struct ExportArgs {
  std::string checkpoint, backbone, out;
};

int run_export(const ExportArgs& args) {
  if (args.checkpoint.empty() == args.backbone.empty()) {
    throw std::invalid_argument("give exactly one of --checkpoint (a run's checkpoint.pt) or "
                                "--backbone (its backbone.pt)");
  }
  const std::string from = args.checkpoint.empty() ? args.backbone : args.checkpoint;
  if (std::filesystem::exists(args.out) && std::filesystem::equivalent(args.out, from)) {
    throw std::invalid_argument("--out '" + args.out + "' is the file being exported");
  }
  const vicreg::Backbone b = args.checkpoint.empty()
                                 ? vicreg::read_backbone(args.backbone)
                                 : vicreg::read_checkpoint_backbone(args.checkpoint);
  const int64_t n = vicreg::export_backbone(b, args.out);
  std::printf("wrote %s: %lld tensors of the %s backbone (%lld parameters) from %s\n",
              args.out.c_str(), static_cast<long long>(n), b.config.arch.c_str(),
              static_cast<long long>(vicreg::count_parameters(*b.encoder)), from.c_str());
  const std::string how = vicreg::torchvision_recipe(b);
  if (!how.empty()) std::printf("in PyTorch: %s\n", how.c_str());
  return 0;
}

int run_report(const vicreg::ReportOptions& options, int threads) {
  vicreg::set_threads(threads);
  parse_device(options.device);
  const auto t0 = std::chrono::steady_clock::now();
  const vicreg::ReportSummary r = vicreg::write_report(options);
  std::printf("wrote %s (and %s): %lld charts, %lld metrics lines, %lld kNN points, %lld evaluation "
              "results, %s; %.1f s\n",
              r.path.c_str(), r.results_path.c_str(), static_cast<long long>(r.charts),
              static_cast<long long>(r.metrics_lines), static_cast<long long>(r.knn_points),
              static_cast<long long>(r.eval_results),
              r.model ? ("final model diagnostics and " + std::to_string(r.grid_rows) +
                         " neighbour rows").c_str()
                      : "no checkpoint.pt (curves only)",
              seconds_since(t0));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vicreg: self-supervised representation learning with VICReg (Bardes, Ponce & "
               "LeCun, 2022), on LibTorch"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vicreg ") + VICREG_VERSION + " (LibTorch " +
                                        TORCH_VERSION + ")");

  BenchLossArgs bench;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench-loss",
      "Time forward + backward of the fused VICReg loss against the reference formulation "
      "(d x d covariance, off-diagonal by masking), with GFLOP/s and peak memory");
  bench_cmd->add_option("--shapes", bench.shapes, "Shapes NxD (batch x embedding dimension)")
      ->delimiter(',')
      ->capture_default_str();
  bench_cmd->add_option("--threads", bench.threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  bench_cmd->add_option("--device", bench.device, "Device: cpu, cuda or cuda:N")
      ->capture_default_str();
  bench_cmd->add_option("--dtype", bench.dtype, "Embedding dtype")
      ->check(CLI::IsMember({"float", "double", "half", "bfloat16"}))
      ->capture_default_str();
  bench_cmd->add_option("--preset", bench.preset, "Loss preset")
      ->check(CLI::IsMember({"official", "paper"}))
      ->capture_default_str();
  bench_cmd->add_option("--min-time", bench.min_time,
                        "Seconds to time each case at least (after 3 steps and one warm-up)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  bench_cmd->add_flag("--no-reference", bench.no_reference, "Time the fused loss only");
  bench_cmd->add_option("--json", bench.json, "Also write the results to this JSON file");

  vicreg::TrainConfig train_config;
  try {
    train_config = config_from_argv(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vicreg: error: %s\n", e.what());
    return 1;
  }
  TrainArgs train_args;
  CLI::App* train_cmd = app.add_subcommand(
      "train", "Pretrain a backbone with VICReg (default: Fashion-MNIST, ConvNet, about 24 "
               "minutes on 2 cores; several processes under torchrun); resumable, writes "
               "EXP_DIR/{config.json, metrics.jsonl, "
               "checkpoint.pt, backbone.pt}");
  add_train_options(train_cmd, train_config, train_args);

  EvalArgs eval_args;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "Evaluate a pretrained backbone (or a baseline) on its data set's test split: linear "
              "probe, cosine kNN, or fine-tuning on a labelled fraction; prints top-1/top-5 and "
              "collapse diagnostics (per-dimension std, covariance term, RankMe)");
  add_eval_common(eval_cmd, eval_args);
  eval_cmd->add_option("--protocol", eval_args.protocol,
                       "linear (frozen backbone, linear head), knn, or finetune (backbone and "
                       "head on --label-fraction of the labels)")
      ->check(CLI::IsMember({"linear", "knn", "finetune"}))
      ->capture_default_str();
  eval_cmd->add_option("--epochs", eval_args.epochs,
                       "linear/finetune: epochs (default: linear 100, finetune 20)")
      ->check(CLI::PositiveNumber);
  eval_cmd->add_option("--batch-size", eval_args.batch_size, "linear/finetune: batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  eval_cmd->add_option("--lr", eval_args.lr,
                       "linear/finetune: the head's learning rate (SGD, momentum 0.9, cosine; "
                       "default: linear 0.02, finetune 0.1)")
      ->check(CLI::PositiveNumber);
  eval_cmd->add_option("--lr-backbone", eval_args.lr_backbone,
                       "finetune: the backbone's learning rate (default 0.01)")
      ->check(CLI::NonNegativeNumber);
  eval_cmd->add_option("--wd", eval_args.wd,
                       "linear/finetune: weight decay (default: linear 1e-6, finetune 0)")
      ->check(CLI::NonNegativeNumber);
  eval_cmd->add_flag("--augment", eval_args.augment,
                     "linear: train the head on augmented images (crop and flip) through the "
                     "frozen backbone every epoch, instead of on cached features");
  eval_cmd->add_option("--label-fraction", eval_args.label_fraction,
                       "finetune: fraction of the labelled training split used, class-balanced "
                       "(e.g. 0.01, 0.1)")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  eval_cmd->add_option("--seed", eval_args.seed, "linear/finetune: seed (head, order, subset)")
      ->capture_default_str();
  eval_cmd->add_option("--k", eval_args.k, "knn: neighbours")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  eval_cmd->add_option("--temperature", eval_args.temperature, "knn: vote temperature")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  eval_cmd->add_option("--json", eval_args.json, "Also write the results to this JSON file");

  EvalArgs embed_args;
  CLI::App* embed_cmd = app.add_subcommand(
      "embed", "Write the representations (or, with --embedding, the embeddings) of a split as "
               ".npy (numpy.load reads it)");
  add_eval_common(embed_cmd, embed_args);
  embed_cmd->add_option("--out", embed_args.out, "Output .npy, [N, D] float32")->required();
  embed_cmd->add_option("--labels-out", embed_args.labels_out, "Labels as .npy, [N] int64");
  embed_cmd->add_option("--split", embed_args.split, "train or test")
      ->check(CLI::IsMember({"train", "test"}))
      ->capture_default_str();

  ExportArgs export_args;
  CLI::App* export_cmd = app.add_subcommand(
      "export", "Write a run's backbone as safetensors with torchvision's names (a ResNet loads "
                "into torchvision.models.resnetNN with load_state_dict(strict=False), only fc.* "
                "missing; train and eval read it back with --init-backbone)");
  export_cmd->add_option("--checkpoint", export_args.checkpoint, "A run's checkpoint.pt");
  export_cmd->add_option("--backbone", export_args.backbone,
                         "A run's backbone.pt (or any file --backbone of eval reads)");
  export_cmd->add_option("--out", export_args.out, "Output file, e.g. backbone.safetensors")
      ->required();

  vicreg::ReportOptions report;
  int report_threads = 0;
  CLI::App* report_cmd = app.add_subcommand(
      "report", "Write EXP_DIR/report.html, one self-contained page: training curves (loss and "
                "its terms, lr, std of Z, RankMe, kNN), the final model's diagnostics and std "
                "histogram, evaluation results, nearest-neighbour images");
  report_cmd->add_option("--exp-dir", report.exp_dir, "The run's experiment directory")
      ->required();
  report_cmd->add_option("--out", report.out, "Output file (default: EXP_DIR/report.html)");
  report_cmd->add_option("--data-dir", report.data_dir, "Where the data are (default: the run's)");
  report_cmd->add_option("--queries", report.queries, "Test images in the neighbour grid")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  report_cmd->add_option("--neighbours", report.neighbours, "Neighbours shown per test image")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  report_cmd->add_option("--bank", report.bank,
                         "Training images searched for neighbours (the first ones; 0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  report_cmd->add_option("--threads", report_threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  report_cmd->add_option("--device", report.device, "cpu, cuda or cuda:N")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (bench_cmd->parsed()) return run_bench_loss(bench);
    if (eval_cmd->parsed()) return run_eval(eval_args, train_config);
    if (embed_cmd->parsed()) return run_embed(embed_args, train_config);
    if (report_cmd->parsed()) return run_report(report, report_threads);
    if (export_cmd->parsed()) return run_export(export_args);
    if (train_cmd->parsed()) return run_train(train_config, train_args);
  } catch (const vicreg::TrainingDiverged& e) {
    std::fprintf(stderr, "%s: error: %s; the last good checkpoint is kept (lower --base-lr, "
                         "or check the data)\n", g_who.c_str(), e.what());
    return 1;
  } catch (const vicreg::DistributedError& e) {
    std::fprintf(stderr, "%s: error: %s; the last checkpoint is kept (run the same command again "
                         "to resume, with any number of processes)\n", g_who.c_str(), e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", g_who.c_str(), e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", g_who.c_str(), e.what());
    return 1;
  }
  return 0;
}
