// vicreg eval and vicreg embed: what to look at (run/evaluation.h's SubjectSpec), the protocol's
// flags (EvalRequest; unset flags take the library's defaults), and the printed results.
#include "commands.h"

#include "vicreg/data.h"
#include "vicreg/error.h"
#include "vicreg/run/evaluation.h"
#include "vicreg/runtime.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

namespace vicreg::cli {

namespace {

struct SubjectArgs {
  SubjectSpec spec;
  std::string baseline, config_file;
  bool embedding = false;
  int threads = 0;

  /// The spec with --baseline and --config resolved.
  SubjectSpec resolved() const {
    SubjectSpec s = spec;
    if (!baseline.empty()) s.baseline = parse_name<Baseline>(baseline);
    if (!config_file.empty()) s.config = read_config_file(config_file);
    return s;
  }
};

void add_subject_flags(CLI::App& cmd, SubjectArgs& a) {
  cmd.add_option("--backbone", a.spec.backbone,
                 "A run's backbone.pt, a safetensors file from vicreg export, or the state dict "
                 "of a backbone vicreg knows, e.g. a torchvision ResNet's (safetensors or "
                 "torch.save; the architecture is read off the weights)")
      ->check(CLI::ExistingFile);
  cmd.add_option("--init-backbone", a.spec.init_backbone,
                 "Weights (safetensors or torch.save, torchvision's names) for the backbone of "
                 "the model of --config (default: the default run)");
  cmd.add_option("--checkpoint", a.spec.checkpoint,
                 "A run's checkpoint.pt (backbone and expander; needed for --embedding and the "
                 "embedding diagnostics)")
      ->check(CLI::ExistingFile);
  cmd.add_option("--baseline", a.baseline,
                 "Instead of a trained model: pixels (the normalised image) or random-init (the "
                 "untrained model of --config FILE, default: the default run)")
      ->check(CLI::IsMember(names_of<Baseline>()));
  cmd.add_option("--config", a.config_file,
                 "Run settings for --baseline and --init-backbone (e.g. a run's config.json)");
  cmd.add_flag("--embedding", a.embedding,
               "Use the expander's output (the embedding) instead of the representation");
  cmd.add_option("--data-dir", a.spec.data_dir, "Where the data are (default: as in training)");
  cmd.add_option("--val-dir,--val-data", a.spec.val_dir,
                 "The held-out split to measure on (default: as in training; image-folder: val/ "
                 "or test/ beside train/; npy: val.npy or test.npy beside train.npy)");
  add_optional_choice(cmd, "--dataset", a.spec.dataset,
                      "Evaluate on another data set than the subject's (weights without a run's "
                      "settings: the data set they are evaluated on)");
  cmd.add_option_function<std::string>(
         "--recipe", [&a](const std::string& v) { a.spec.recipe = v; },
         "The augmentation recipe whose crop size and normalisation evaluation uses (default: the "
         "run's, or the data set's)")
      ->check(CLI::IsMember(recipe_names()))
      ->type_name("{" + join_choices(recipe_names()) + "}");
  cmd.add_option_function<int64_t>(
         "--image-size", [&a](int64_t v) { a.spec.image_size = v; },
         "Crop size (default: the run's, or the recipe's)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option_function<int64_t>(
      "--channels", [&a](int64_t v) { a.spec.channels = v; },
      "image-folder: decode to 3 (RGB) or 1 channel (default: the run's)");
  cmd.add_option_function<double>(
         "--holdout", [&a](double v) { a.spec.holdout = v; },
         "Measure on this class-stratified fraction of the training data, the rest being the "
         "training split (as vicreg train --holdout; default: the run's). A fraction other than "
         "the run's would measure on data it was pretrained on and is refused, unless "
         "--pretrained-elsewhere")
      ->check(CLI::Range(0.0, 0.99));
  cmd.add_flag("--pretrained-elsewhere", a.spec.pretrained_elsewhere,
               "These weights never saw these data (e.g. copied from a run on other data): "
               "measure on a held-out split the run's settings say pretraining saw");
  cmd.add_option_function<std::string>(
      "--classes", [&a](const std::string& v) { a.spec.classes = v; },
      "image-folder: a file of class folder names, one per line (default: the run's)");
  cmd.add_option("--threads", a.threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--device", a.spec.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_choice_flag(cmd, "--precision", a.spec.precision,
                  "Extract features under autocast: auto (bf16 on CPUs with bf16 instructions and "
                  "GPUs that have it, fp16 on older GPUs, else fp32), fp32, bf16 or fp16");
  add_choice_flag(cmd, "--channels-last", a.spec.channels_last,
                  "Convolutional backbones in channels_last memory format: auto (as the run "
                  "recorded, else on for GPUs and for bf16 on Intel CPUs, off for other CPUs), on "
                  "or off");
  add_choice_flag(cmd, "--bf16-conv", a.spec.bf16_conv,
                  "How the convolutions run in bf16 on a CPU: auto (as the run recorded, else the "
                  "CPU's fastest: fp32-backward with AMX, fp32 on other Intel CPUs, bf16 "
                  "elsewhere), bf16, fp32-backward or fp32 (as vicreg train --bf16-conv)");
}

/// Where a --json file goes: a bare file name is taken in the run's directory when the subject is
/// a run's file (where vicreg report looks); any other path as given, from the current directory.
std::string output_path(const std::string& path, const Subject& s, const SubjectSpec& spec) {
  namespace fs = std::filesystem;
  if (path.empty() || fs::path(path).has_parent_path() || !s.from_run) return path;
  const std::string& file = spec.backbone.empty() ? spec.checkpoint : spec.backbone;
  return (fs::absolute(file).parent_path() / path).lexically_normal().string();
}

struct EvalArgs {
  SubjectArgs subject;
  EvalRequest request;
  std::string protocol = "linear", json;
};

int run_eval(EvalArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  set_threads(a.subject.threads);
  EvalRequest r = a.request;
  r.protocol = parse_name<Protocol>(a.protocol);
  r.embedding = a.subject.embedding;
  Subject s = load_subject(a.subject.resolved(), {Split::Train, Split::Test});
  const std::string json_path = output_path(a.json, s, a.subject.spec);
  if (!json_path.empty()) {  // before the evaluation's minutes, not after them
    const std::filesystem::path folder = std::filesystem::path(json_path).parent_path();
    if (!folder.empty() && !std::filesystem::is_directory(folder)) {
      throw UsageError("--json " + a.json + ": there is no folder '" + folder.string() +
                       "' to write it in");
    }
  }
  nlohmann::json doc = evaluate_subject(s, r);
  doc["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const nlohmann::json& sp = doc["splits"];
  std::printf("training split: %s, %lld samples; held-out split: %s, %lld samples; %lld classes\n",
              sp["train"]["source"].get<std::string>().c_str(),
              static_cast<long long>(sp["train"]["samples"].get<int64_t>()),
              sp["test"]["source"].get<std::string>().c_str(),
              static_cast<long long>(sp["test"]["samples"].get<int64_t>()),
              static_cast<long long>(sp["classes"].get<int64_t>()));
  const nlohmann::json& held = sp["test"].value("held_out", nlohmann::json());
  if (held.value("declared_unseen", false)) {
    std::printf(
        "note: the run's settings say pretraining saw the held-out split; measured on it "
        "as --pretrained-elsewhere says these weights never did\n");
  }
  char top5[64] = "";
  if (doc.contains("top5")) {
    std::snprintf(top5, sizeof top5, ", top-5 %.2f %%", 100 * doc["top5"].get<double>());
  }
  std::printf("%s on the %s of %s, %s (%lld train / %lld test): top-1 %.2f %%%s; %.1f s\n",
              a.protocol.c_str(), doc["features"].get<std::string>().c_str(), s.name.c_str(),
              doc["dataset"].get<std::string>().c_str(),
              static_cast<long long>(doc["train_samples"].get<int64_t>()),
              static_cast<long long>(doc["test_samples"].get<int64_t>()),
              100 * doc["top1"].get<double>(), top5, doc["seconds"].get<double>());
  for (const auto& [what, d] : doc["diagnostics"].items()) {
    std::printf("  test %s: std mean %.3f min %.3f, covariance term %.4g, RankMe %.1f of %lld\n",
                what.c_str(), d["std_mean"].get<double>(), d["std_min"].get<double>(),
                d["covariance"].get<double>(), d["rankme"].get<double>(),
                static_cast<long long>(d["dim"].get<int64_t>()));
  }
  if (!a.json.empty()) {
    const SubjectSpec& spec = a.subject.spec;
    if (!spec.backbone.empty()) doc["backbone"] = spec.backbone;
    if (!spec.checkpoint.empty()) doc["checkpoint"] = spec.checkpoint;
    if (!a.subject.baseline.empty()) doc["baseline"] = a.subject.baseline;
    write_json(json_path, doc);
    std::printf("results: %s\n", json_path.c_str());
  }
  return 0;
}

struct EmbedArgs {
  SubjectArgs subject;
  std::string out, labels_out, rows_out, split = "test";
};

int run_embed(EmbedArgs& a) {
  set_threads(a.subject.threads);
  const Split split = parse_name<Split>(a.split);
  Subject s = load_subject(a.subject.resolved(), {split});
  const Dataset& data = split == Split::Train ? s.train : s.test;
  const torch::Tensor f = subject_features(s, data, a.subject.embedding);
  write_npy(a.out, f);
  if (!a.labels_out.empty()) write_npy(a.labels_out, data.require_labels());
  std::string rows = a.rows_out;
  if (rows.empty()) {
    const std::filesystem::path out(a.out);
    rows = (out.parent_path() / (out.stem().string() + ".rows.tsv")).string();
  }
  write_sample_list(rows, data);
  std::printf("wrote %lld x %lld %ss of the %s split (%s) to %s, and what each row is to %s\n",
              static_cast<long long>(f.size(0)), static_cast<long long>(f.size(1)),
              a.subject.embedding ? "embedding" : "representation", a.split.c_str(),
              data.source.c_str(), a.out.c_str(), rows.c_str());
  return 0;
}

}  // namespace

Run setup_eval(CLI::App& cmd, const std::vector<std::string>&) {
  auto a = std::make_shared<EvalArgs>();
  add_subject_flags(cmd, a->subject);
  EvalRequest& r = a->request;
  cmd.add_option("--protocol", a->protocol,
                 "linear (frozen backbone, linear head), knn, or finetune (backbone and head on "
                 "--label-fraction of the labels)")
      ->check(CLI::IsMember(names_of<Protocol>()))
      ->capture_default_str();
  cmd.add_option_function<int64_t>(
         "--epochs", [&r](int64_t v) { r.epochs = v; },
         "linear/finetune: epochs (default: linear 100, finetune 20)")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--batch-size", r.batch_size, "linear/finetune: batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option_function<double>(
         "--lr", [&r](double v) { r.lr = v; },
         "linear/finetune: the head's learning rate (SGD, momentum 0.9, cosine; default: linear "
         "0.02, finetune 0.1)")
      ->check(CLI::PositiveNumber);
  cmd.add_option_function<double>(
         "--lr-backbone", [&r](double v) { r.lr_backbone = v; },
         "finetune: the backbone's learning rate (default 0.01)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option_function<double>(
         "--wd", [&r](double v) { r.wd = v; },
         "linear/finetune: weight decay (default: linear 1e-6, finetune 0)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_flag("--augment", r.augment,
               "linear: train the head on augmented images (crop and flip) through the frozen "
               "backbone every epoch, instead of on cached features");
  cmd.add_option_function<double>(
         "--label-fraction", [&r](double v) { r.label_fraction = v; },
         "finetune: fraction of the labelled training split used, class-balanced (e.g. 0.01, "
         "0.1; default 0.1)")
      ->check(CLI::Range(1e-9, 1.0));
  cmd.add_option("--train-subset", r.train_subset,
                 "image-folder: train on just the images this file names, one file name per line "
                 "(the reference's 1 % / 10 % ImageNet subsets, e.g. 1percent.txt); every "
                 "protocol, instead of --label-fraction");
  cmd.add_option("--seed", r.seed, "linear/finetune: seed (head, order, subset)")
      ->capture_default_str();
  cmd.add_option("--k", r.knn.k, "knn: neighbours")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--temperature", r.knn.temperature, "knn: vote temperature")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--json", a->json,
                 "Also write the results to this JSON file; a bare file name is taken in the run's "
                 "directory when evaluating a run's backbone.pt or checkpoint.pt (where vicreg "
                 "report finds it), any other path from the current directory");
  return [a] { return run_eval(*a); };
}

Run setup_embed(CLI::App& cmd, const std::vector<std::string>&) {
  auto a = std::make_shared<EmbedArgs>();
  add_subject_flags(cmd, a->subject);
  cmd.add_option("--out", a->out, "Output .npy, [N, D] float32")->required();
  cmd.add_option("--labels-out", a->labels_out, "Labels as .npy, [N] int64");
  cmd.add_option("--rows-out", a->rows_out,
                 "What each row is, as TSV with a header: row, sample (the image file, or the "
                 "row in the data set's files), label, class (default: OUT with .rows.tsv for "
                 ".npy)");
  cmd.add_option("--split", a->split,
                 "train, or test: the held-out split evaluation measures on (the test files, "
                 "val/ or test/, --val-dir, or the --holdout part)")
      ->check(CLI::IsMember(names_of<Split>()))
      ->capture_default_str();
  return [a] { return run_embed(*a); };
}

}  // namespace vicreg::cli
