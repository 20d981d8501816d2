// A newcomer's first commands, as one would type them on a small folder of images: cheap checks
// before any model, no evaluation on data pretraining saw, experiment directories that cannot mix
// runs, and the CLI's help, typos and outputs.
#include "vicreg/io/npy.h"
#include "vicreg/io/safetensors.h"

#include "support/cli.h"
#include "support/synthetic_data.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

namespace {

namespace fs = std::filesystem;
using vicreg::testing::Result;
using vicreg::testing::slurp;

/// Occurrences of `what` in `text`.
size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class FirstHour : public vicreg::testing::Cli {
 protected:
  /// A folder of `classes` class folders of `per_class` 48 px PNGs (the newcomer's data).
  fs::path folder(const std::string& name, int classes, int per_class) {
    const fs::path root = dir_ / name;
    cv::RNG rng(7);
    for (int c = 0; c < classes; ++c) {
      for (int i = 0; i < per_class; ++i) {
        cv::Mat img(48, 48, CV_8UC3, cv::Scalar(70 * c, 60, 200 - 70 * c));
        cv::Mat noise(48, 48, CV_8UC3);
        rng.fill(noise, cv::RNG::UNIFORM, 0, 50);
        const fs::path p = root / ("class" + std::to_string(c)) / (std::to_string(i) + ".png");
        fs::create_directories(p.parent_path());
        EXPECT_TRUE(cv::imwrite(p.string(), img + noise));
      }
    }
    return root;
  }
  /// A small model that trains in seconds on the folder.
  static std::string small(const std::string& extra = "") {
    return " --image-size 16 --width 8 --stages 2 --final-conv 0 --mlp 32-32 --batch-size 8 "
           "--max-steps 2 --threads 1 --workers 1 --channels-last off --progress plain " +
           extra;
  }
  /// `vicreg ARGS` run from `cwd`.
  Result run_in(const fs::path& cwd, const std::string& args) {
    return shell("cd " + cwd.string() + " && " + VICREG_CLI + " " + args);
  }
};

TEST_F(FirstHour, CheapChecksComeBeforeAnyModelAndTheFirstLineBeforeTheTiming) {
  const fs::path split = folder("split", 3, 10);
  // Before: about 4 minutes of ResNet-18 memory-format timing at 224 px, then this error. Now the
  // check comes before any model is built, so the timing (which announces itself) never starts.
  Result r = run_in(dir_,
                    "train --dataset image-folder --data-dir split --arch resnet18 "
                    "--threads 1 --workers 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--batch-size 128 is larger than the data set ('image-folder', 30 "
                       "samples): give a --batch-size of at most 30"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("timing"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "runs" / "split" / "checkpoint.pt"));

  // The first line (data, model, crop size, numerics) comes before the memory-format timing,
  // which says what it is doing.
  r = run_in(dir_, "train --dataset image-folder --data-dir split" +
                       small("--channels-last auto --exp-dir timed"));
  ASSERT_EQ(r.code, 0) << r.err;
  const size_t plan = r.err.find("vicreg train: image-folder, 30 samples (" + split.string() +
                                 "), 3 classes; convnet, 16 px crops (recipe imagenet); precision");
  const size_t timing = r.err.find("timing a training step in both memory formats");
  ASSERT_NE(plan, std::string::npos) << r.err;
  ASSERT_NE(timing, std::string::npos) << r.err;
  EXPECT_LT(plan, timing) << r.err;
  EXPECT_EQ(r.err.find("upscale"), std::string::npos) << r.err;

  // Crops of the recipe's 224 px upscale 48 px images: a warning; config.json records the
  // recipe and the crop size that were used, and every path absolute.
  r = run_in(dir_, "train --dataset image-folder --data-dir split" +
                       small("--image-size 0 --exp-dir big --max-steps 1"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("224 px crops upscale the images (median shorter side 48 px) 4.7x: "
                       "give --image-size 48"),
            std::string::npos)
      << r.err;
  const auto config = nlohmann::json::parse(slurp(dir_ / "big" / "config.json"));
  EXPECT_EQ(config["data"]["recipe"], "imagenet");
  EXPECT_EQ(config["data"]["image_size"], 224);
  EXPECT_EQ(config["runtime"]["data_dir"], split.string());
  EXPECT_EQ(config["runtime"]["exp_dir"], (dir_ / "big").string());
}

TEST_F(FirstHour, EvaluationNeverMeasuresOnDataPretrainingSaw) {
  folder("photos", 3, 10);
  // Pretrained on the whole folder: a --holdout part of it was seen.
  Result r = run_in(dir_, "train --dataset image-folder --data-dir photos" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string backbone = (dir_ / "runs" / "photos" / "backbone.pt").string();
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + backbone + " --holdout 0.2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--holdout 0.2 would measure on samples of '" + (dir_ / "photos").string() +
                       "' that '" + backbone + "' was pretrained on: its run held out nothing"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("Pretrain with --holdout F"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--pretrained-elsewhere"), std::string::npos) << r.err;
  // The user's word lets it through, and the JSON says what was measured on.
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + backbone +
          " --holdout 0.2 --pretrained-elsewhere --json " + (dir_ / "seen.json").string());
  ASSERT_EQ(r.code, 0) << r.err;
  auto held = nlohmann::json::parse(slurp(dir_ / "seen.json"))["splits"]["test"]["held_out"];
  EXPECT_EQ(held["kind"], "holdout");
  EXPECT_EQ(held["fraction"], 0.2);
  EXPECT_EQ(held["seen_in_pretraining"], true);
  EXPECT_EQ(held["declared_unseen"], true);
  // Pretrained with --holdout 0.2: evaluation on that part, recorded as unseen; another
  // fraction is refused again.
  r = run_in(dir_,
             "train --dataset image-folder --data-dir photos --holdout 0.2 --exp-dir ho" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string ho = (dir_ / "ho" / "backbone.pt").string();
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + ho + " --json " +
          (dir_ / "ho.json").string());
  ASSERT_EQ(r.code, 0) << r.err;
  held = nlohmann::json::parse(slurp(dir_ / "ho.json"))["splits"]["test"]["held_out"];
  EXPECT_EQ(held["seen_in_pretraining"], false);
  EXPECT_FALSE(held.contains("declared_unseen"));
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + ho + " --holdout 0.3");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("its run held out --holdout 0.2 only"), std::string::npos) << r.err;
}

TEST_F(FirstHour, ExperimentDirectoriesFollowTheDataAndNeverMixRuns) {
  folder("photos", 3, 10);
  vicreg::testing::write_idx_dataset(dir_ / "digits", 64, 16);
  vicreg::testing::write_idx_dataset(dir_ / "digits", 30, 16, 2, "t10k");
  // Without --exp-dir, each data set has its own directory.
  Result r = run_in(dir_, "train --dataset image-folder --data-dir photos --holdout 0.2" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "runs" / "photos" / "checkpoint.pt"));
  r = run_in(dir_, "train --dataset mnist --data-dir digits" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "runs" / "mnist" / "checkpoint.pt"));
  EXPECT_EQ(r.err.find("resuming"), std::string::npos) << r.err;

  // A directory holding a run of other data or another model is refused, its checkpoint kept.
  const fs::path checkpoint = dir_ / "runs" / "photos" / "checkpoint.pt";
  const auto before = fs::last_write_time(checkpoint);
  r = run_in(dir_, "train --dataset mnist --data-dir digits --exp-dir runs/photos" + small());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("holds a run of other settings than this command's (it has --dataset "
                       "image-folder --data-dir " +
                       (dir_ / "photos").string() + ")"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("give another --exp-dir for a new run, or --resume " + checkpoint.string() +
                       " to continue that run with its own settings"),
            std::string::npos)
      << r.err;
  r = run_in(dir_,
             "train --dataset image-folder --data-dir photos --holdout 0.2" + small("--width 16"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("(it has --width 8)"), std::string::npos) << r.err;
  EXPECT_EQ(fs::last_write_time(checkpoint), before);
  // The same command resumes (the paths given relative, from another directory too).
  fs::create_directories(dir_ / "elsewhere");
  r = run_in(dir_ / "elsewhere",
             "train --dataset image-folder --data-dir ../photos --holdout 0.2 "
             "--exp-dir ../runs/photos" +
                 small("--max-steps 3"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step 2"), std::string::npos) << r.err;

  // The run's paths are absolute: eval and report work from any directory. A relative --json
  // lands in the run's directory, where report finds it.
  r = run_in(dir_ / "elsewhere",
             "eval --threads 1 --protocol knn --k 3 --checkpoint ../runs/photos/checkpoint.pt "
             "--json knn.json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "runs" / "photos" / "knn.json"));
  EXPECT_FALSE(fs::exists(dir_ / "elsewhere" / "knn.json"));
  EXPECT_NE(r.out.find("results: " + (dir_ / "runs" / "photos" / "knn.json").string()),
            std::string::npos)
      << r.out;
  r = run("report --threads 1 --exp-dir " + (dir_ / "runs" / "photos").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1 evaluation results"), std::string::npos) << r.out;

  // A recorded path that is gone is named as the run's, with the flag that replaces it.
  fs::rename(dir_ / "photos", dir_ / "moved");
  r = run("eval --threads 1 --protocol knn --k 3 --checkpoint " + checkpoint.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(
      r.err.find("the data folder '" + (dir_ / "photos").string() +
                 "' recorded in the settings of '" + checkpoint.string() + "' does not exist"),
      std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("give --data-dir where it is now"), std::string::npos) << r.err;
  r = run("eval --threads 1 --protocol knn --k 3 --checkpoint " + checkpoint.string() +
          " --data-dir " + (dir_ / "moved").string());
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(FirstHour, ReportWithoutAHeldOutSplitWritesTheTrainingPart) {
  folder("photos", 3, 10);
  Result r = run_in(dir_, "train --dataset image-folder --data-dir photos" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path exp = dir_ / "runs" / "photos";
  r = run("report --threads 1 --exp-dir " + exp.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(exp / "report.html"));
  EXPECT_NE(r.err.find("needs a held-out split"), std::string::npos) << r.err;
  const std::string html = slurp(exp / "report.html");
  EXPECT_NE(html.find("Training curves"), std::string::npos);
  EXPECT_NE(html.find("needs a held-out split"), std::string::npos);
}

TEST_F(FirstHour, TyposChoicesDefaultsAndTheVersion) {
  Result r = run("train --batch-szie 16");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown flag --batch-szie (did you mean --batch-size?)"), std::string::npos)
      << r.err;
  r = run("eval --protocl knn");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown flag --protocl (did you mean --protocol?)"), std::string::npos)
      << r.err;

  r = run("train --help");
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(r.out.find("{false}"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("{true}"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("{imagenet,cifar,fashion-mnist,vector}"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("{auto,bar,plain,none}"), std::string::npos) << r.out;
  // The help of a flag is on its line or the next.
  EXPECT_TRUE(std::regex_search(r.out, std::regex("--shared-weights,--no-shared-weights[^\n]*"
                                                  "(\n[^\n]*)?\\(default: on\\)\n")))
      << r.out;
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex("--clip-lr,--no-clip-lr[^\n]*(\n[^\n]*)?\\(default: off\\)\n")))
      << r.out;
  r = run("train --recipe simclr");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown --recipe 'simclr': use imagenet, cifar, fashion-mnist or vector"),
            std::string::npos)
      << r.err;
  r = run("eval --help");
  EXPECT_NE(r.out.find("{imagenet,cifar,fashion-mnist}"), std::string::npos) << r.out;

  // One version number: CMake's, in --version and in the README; the README's duration of the
  // main job in --help.
  r = run("--version");
  EXPECT_NE(r.out.find(std::string("vicreg ") + VICREG_VERSION + " "), std::string::npos) << r.out;
  const std::string readme = slurp(VICREG_README);
  EXPECT_NE(readme.find(std::string("vicreg ") + VICREG_VERSION), std::string::npos);
  std::smatch minutes;
  ASSERT_TRUE(std::regex_search(readme, minutes, std::regex("\\(~([0-9]+) min on 2 cores")));
  r = run("--help");
  EXPECT_NE(r.out.find("about " + minutes[1].str() + " minutes on 2 cores"), std::string::npos)
      << r.out;
}

TEST_F(FirstHour, OneClassTopFiveEmbedRowsAndTheExportsNormalisation) {
  // One class: a warning for pretraining, an error for evaluation.
  folder("one", 1, 12);
  Result r = run_in(dir_, "train --dataset image-folder --data-dir one --holdout 0.25" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: every sample of"), std::string::npos) << r.err;
  r = run("eval --threads 1 --protocol knn --backbone " +
          (dir_ / "runs" / "one" / "backbone.pt").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("has one class: evaluation needs at least two"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("100.00 %"), std::string::npos) << r.out;

  // Three classes: no top-5 (it is 100 %), printed or in the JSON.
  const fs::path photos = folder("photos", 3, 10);
  r = run_in(dir_, "train --dataset image-folder --data-dir photos --holdout 0.2" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string backbone = (dir_ / "runs" / "photos" / "backbone.pt").string();
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + backbone + " --json knn.json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("top-5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("top-1"), std::string::npos) << r.out;
  EXPECT_FALSE(
      nlohmann::json::parse(slurp(dir_ / "runs" / "photos" / "knn.json")).contains("top5"));
  // A path with a folder part is the user's, from where the command runs (not joined to the run's
  // folder); a folder that is not there is named before any evaluation.
  r = run_in(dir_,
             "eval --threads 1 --protocol knn --k 3 --backbone runs/photos/backbone.pt "
             "--json runs/photos/knn2.json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "runs" / "photos" / "knn2.json"));
  r = run_in(dir_,
             "eval --threads 1 --protocol knn --k 3 --backbone runs/photos/backbone.pt "
             "--json nowhere/knn.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--json nowhere/knn.json: there is no folder 'nowhere'"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.out.find("top-1"), std::string::npos) << r.out;

  // embed: a row list beside the array, one line per row, naming the file and its label.
  const std::string out = (dir_ / "rep.npy").string();
  r = run("embed --threads 1 --backbone " + backbone + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string rows = slurp(dir_ / "rep.rows.tsv");
  EXPECT_EQ(count(rows, "\n"), 1u + 6u) << rows;  // header, 20 % of 3 x 10
  EXPECT_EQ(rows.rfind("row\tsample\tlabel\tclass\n", 0), 0u) << rows;
  EXPECT_TRUE(std::regex_search(
      rows, std::regex("\n0\t" + (photos / "class0").string() + "/[0-9]+\\.png\t0\tclass0\n")))
      << rows;
  EXPECT_EQ(vicreg::read_npy(out).size(0), 6);
  // In-memory data: the sample is its row in the data set's files.
  vicreg::testing::write_idx_dataset(dir_ / "digits", 64, 16);
  vicreg::testing::write_idx_dataset(dir_ / "digits", 30, 16, 2, "t10k");
  r = run_in(dir_, "train --dataset mnist --data-dir digits --holdout 0.25" + small());
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("embed --threads 1 --backbone " + (dir_ / "runs" / "mnist" / "backbone.pt").string() +
          " --out " + (dir_ / "d.npy").string() + " --rows-out " + (dir_ / "d.tsv").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string digits = slurp(dir_ / "d.tsv");
  const auto held = static_cast<size_t>(vicreg::read_npy((dir_ / "d.npy").string()).size(0));
  EXPECT_EQ(count(digits, "\n"), 1u + held) << digits;
  EXPECT_TRUE(std::regex_search(digits, std::regex("\n0\t[0-9]+\t[0-9]\t[^\n]*\n"))) << digits;

  // export: the normalisation in the metadata and in the printed line.
  const std::string st = (dir_ / "b.safetensors").string();
  r = run("export --backbone " + backbone + " --out " + st);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("inputs: transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, "
                       "0.224, 0.225]) on [0, 1] images of 16 x 16"),
            std::string::npos)
      << r.out;
  const auto file = vicreg::read_safetensors(st);
  EXPECT_EQ(file.metadata.at("vicreg.mean"), "[0.485, 0.456, 0.406]");
  EXPECT_EQ(file.metadata.at("vicreg.std"), "[0.229, 0.224, 0.225]");
}

TEST_F(FirstHour, EachBadImageIsReportedOncePerRun) {
  const fs::path photos = folder("photos", 2, 8);
  // A PNG cut short: libpng complains on stderr each time it is decoded.
  const std::string good = slurp(photos / "class0" / "0.png");
  std::ofstream(photos / "class0" / "3.png", std::ios::binary).write(good.data(), 60);
  const auto epochs = [&](int n, const std::string& exp) {
    return run_in(dir_,
                  "train --dataset image-folder --data-dir photos --skip-bad-images "
                  "--exp-dir " +
                      exp + " --epochs " + std::to_string(n) +
                      small("--max-steps 0 --batch-size 5"));
  };
  const Result one = epochs(1, "one"), four = epochs(4, "four");
  ASSERT_EQ(one.code, 0) << one.err;
  ASSERT_EQ(four.code, 0) << four.err;
  EXPECT_EQ(count(four.err, "warning: skipped"), 1u) << four.err;
  EXPECT_EQ(count(four.err, "libpng"), count(one.err, "libpng")) << four.err;
  EXPECT_LE(count(four.err, "libpng"), 2u) << four.err;
}

}  // namespace
