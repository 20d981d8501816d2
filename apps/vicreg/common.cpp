// What the subcommands share: the table, the flags of the settings, devices, --json files.
#include "commands.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>

namespace vicreg::cli {

Run setup_train(CLI::App& cmd, const std::vector<std::string>& argv);
Run setup_eval(CLI::App& cmd, const std::vector<std::string>& argv);
Run setup_embed(CLI::App& cmd, const std::vector<std::string>& argv);
Run setup_report(CLI::App& cmd, const std::vector<std::string>& argv);
Run setup_export(CLI::App& cmd, const std::vector<std::string>& argv);
Run setup_bench_loss(CLI::App& cmd, const std::vector<std::string>& argv);

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"bench-loss",
       "Time forward + backward of the fused VICReg loss against the reference formulation "
       "(d x d covariance, off-diagonal by masking), with GFLOP/s and peak memory",
       setup_bench_loss},
      {"train",
       "Pretrain a backbone with VICReg (default: Fashion-MNIST, ConvNet, about 30 minutes on 2 "
       "cores with bf16 instructions; several processes under torchrun); resumable, writes "
       "EXP_DIR/{config.json, "
       "metrics.jsonl, checkpoint.pt, backbone.pt}",
       setup_train},
      {"eval",
       "Evaluate a pretrained backbone (or a baseline) on its data set's test split: linear "
       "probe, cosine kNN, or fine-tuning on a labelled fraction; prints top-1 (top-5 with more "
       "than 5 classes) and collapse diagnostics (per-dimension std, covariance term, RankMe)",
       setup_eval},
      {"embed",
       "Write the representations (or, with --embedding, the embeddings) of a split as .npy "
       "(numpy.load reads it), and beside it a .rows.tsv naming each row's sample and label",
       setup_embed},
      {"export",
       "Write a run's backbone as safetensors with torchvision's names (a ResNet loads into "
       "torchvision.models.resnetNN with load_state_dict(strict=False), only fc.* missing; train "
       "and eval read it back with --init-backbone)",
       setup_export},
      {"report",
       "Write EXP_DIR/report.html, one self-contained page: training curves (loss and its terms, "
       "lr, std of Z, RankMe, kNN), the final model's diagnostics and std histogram, evaluation "
       "results, nearest-neighbour images",
       setup_report},
  };
  return table;
}

std::string& who() {
  static std::string name = "vicreg";
  return name;
}

namespace {

template <class T>
void add_flag(CLI::App& cmd, const Setting& s, T& field) {
  const std::string flag = flag_name(s.key);
  const std::string names = s.alias != nullptr ? flag + "," + flag_name(s.alias) : flag;
  if constexpr (std::is_same_v<T, bool>) {
    cmd.add_flag(flag + ",!--no-" + flag.substr(2), field,
                 std::string(s.help) + (field ? " (default: on)" : " (default: off)"));
  } else if constexpr (std::is_enum_v<T>) {
    add_choice_flag(cmd, flag, field, s.help);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (s.choices == nullptr) {
      cmd.add_option(names, field, s.help)->capture_default_str();
      return;
    }
    // Text that takes one of a list of names (empty: the default, e.g. the data set's recipe).
    const std::vector<std::string>& choices = s.choices();
    cmd.add_option_function<std::string>(
           names,
           [&field, &choices, flag](const std::string& v) {
             if (!v.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
               throw CLI::ValidationError("unknown " + flag + " '" + v + "': use " +
                                          join_names(choices));
             }
             field = v;
           },
           s.help)
        ->type_name("{" + join_choices(choices) + "}")
        ->default_str(field);
  } else {
    cmd.add_option(names, field, s.help)->capture_default_str();
  }
}

}  // namespace

std::string join_choices(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ",") + n;
  return out;
}

void add_setting_flags(CLI::App& cmd, TrainConfig& config) {
  // A flag given twice takes its last value (so a script's flags can be overridden by appending).
  cmd.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  for_each_setting(config, [&cmd](const Setting& s, auto& field) { add_flag(cmd, s, field); });
}

namespace {

/// The files of --config FILE / --config=FILE on a command line.
std::vector<std::string> config_files(const std::vector<std::string>& argv) {
  std::vector<std::string> paths;
  for (size_t i = 1; i < argv.size(); ++i) {
    if (argv[i] == "--config" && i + 1 < argv.size()) paths.push_back(argv[i + 1]);
    if (argv[i].rfind("--config=", 0) == 0) paths.push_back(argv[i].substr(9));
  }
  return paths;
}

}  // namespace

TrainConfig config_from_argv(const std::vector<std::string>& argv, TrainConfig config,
                             std::vector<std::string>* keys) {
  for (const std::string& path : config_files(argv)) config = read_config_file(path, config, keys);
  return config;
}

TrainConfig parse_train_config(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"vicreg", "train"};
  argv.insert(argv.end(), args.begin(), args.end());
  TrainConfig config = config_from_argv(argv);
  CLI::App app;
  std::string config_file;
  app.add_option("--config", config_file);
  add_setting_flags(app, config);
  app.parse(std::vector<std::string>(args.rbegin(), args.rend()));  // CLI11 takes them reversed
  return config;
}

void write_json(const std::string& path, const nlohmann::json& doc) {
  try {
    write_file_atomically(path, doc.dump(2) + "\n");
  } catch (const FormatError& e) {
    throw FormatError(std::string("--json: ") + e.what(), e.settings());
  }
}

}  // namespace vicreg::cli
