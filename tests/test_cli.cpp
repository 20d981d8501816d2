// The vicreg CLI, run as a user runs it: exit codes, output, files, and every rejected argument.
#include "vicreg/data.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/io/tensorboard.h"
#include "vicreg/models.h"
#include "vicreg/precision.h"
#include "vicreg/run/artifacts.h"

#include "support/cli.h"
#include "support/free_port.h"
#include "support/synthetic_data.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using vicreg::testing::Cli;
using vicreg::testing::Result;
using vicreg::testing::slurp;

TEST_F(Cli, HelpListsTheSubcommands) {
  const Result r = run("--help");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("bench-loss"), std::string::npos) << r.out;
  const Result sub = run("bench-loss --help");
  EXPECT_EQ(sub.code, 0);
  for (const char* flag : {"--shapes", "--threads", "--device", "--dtype", "--preset", "--json"}) {
    EXPECT_NE(sub.out.find(flag), std::string::npos) << flag << " missing from:\n" << sub.out;
  }
}

TEST_F(Cli, Version) {
  const Result r = run("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("vicreg 0."), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("LibTorch"), std::string::npos) << r.out;
}

TEST_F(Cli, RejectsMissingSubcommandAndUnknownFlags) {
  const Result none = run("");
  EXPECT_NE(none.code, 0);
  EXPECT_NE(none.err.find("subcommand"), std::string::npos) << none.err;
  const Result unknown = run("bench-loss --frobnicate");
  EXPECT_NE(unknown.code, 0);
  EXPECT_NE(unknown.err.find("--frobnicate"), std::string::npos) << unknown.err;
}

TEST_F(Cli, BenchLossWritesTableAndJson) {
  const fs::path json = dir_ / "bench.json";
  const Result r =
      run("bench-loss --threads 1 --shapes 16x96,96x16 --min-time 0 --preset paper "
          "--json " +
          json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1 intra-op thread"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("paper preset"), std::string::npos) << r.out;
  const auto doc = nlohmann::json::parse(slurp(json));
  EXPECT_EQ(doc["preset"], "paper");
  ASSERT_EQ(doc["results"].size(), 2u);
  const auto& wide = doc["results"][0];
  EXPECT_EQ(wide["n"], 16);
  EXPECT_EQ(wide["d"], 96);
  for (const char* impl : {"fused", "reference"}) {
    EXPECT_GT(wide[impl]["median_ms"].get<double>(), 0.0) << impl;
    EXPECT_GE(wide[impl]["iterations"].get<int>(), 3) << impl;
    EXPECT_GT(wide[impl]["peak_bytes"].get<double>(), 0.0) << impl;
  }
  // n < d: the fused loss never builds the d x d matrices the reference builds.
  EXPECT_LT(wide["fused"]["peak_bytes"].get<double>(),
            wide["reference"]["peak_bytes"].get<double>());
  EXPECT_GT(wide["speedup"].get<double>(), 0.0);
}

TEST_F(Cli, BenchLossWithoutReference) {
  for (const char* dtype : {"double", "half", "bfloat16"}) {
    const Result r = run(std::string("bench-loss --threads 1 --shapes 8x32 --min-time 0 "
                                     "--no-reference --dtype ") +
                         dtype);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find(std::string(dtype) + " on cpu"), std::string::npos) << r.out;
  }
}

TEST_F(Cli, BenchLossRejectsBadArguments) {
  struct Case {
    const char* args;
    const char* message;
  };
  const Case cases[] = {
      {"bench-loss --shapes 512", "'512' is not NxD"},
      {"bench-loss --shapes 1x64", "N >= 2"},
      {"bench-loss --shapes 8x0", "D >= 1"},
      {"bench-loss --shapes 8x16y", "'8x16y'"},
      {"bench-loss --dtype int32", "--dtype"},
      {"bench-loss --preset solo", "--preset"},
      {"bench-loss --threads -2", "--threads"},
      {"bench-loss --min-time -1", "--min-time"},
      {"bench-loss --device tpu --shapes 4x4", "tpu"},
      {"bench-loss --shapes 4x4 --min-time 0 --json /nonexistent/dir/x.json", "cannot write"},
      {"bench-loss --shapes 4x4 --dtype half", "--no-reference"},
  };
  for (const Case& c : cases) {
    const Result r = run(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos)
        << c.args << ": expected '" << c.message << "' in stderr:\n"
        << r.err;
  }
  if (!torch::cuda::is_available()) {
    const Result r = run("bench-loss --device cuda --shapes 4x4");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("no CUDA GPU"), std::string::npos) << r.err;
  }
}

// ---------------------------------------------------------------------------------------------
// train

class CliTrain : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
    vicreg::testing::write_idx_dataset(dir_ / "data", 96, 16);
  }
  /// A small run on the synthetic data; `extra` adds or overrides flags. In contiguous memory
  /// format: auto measures both formats at the start of each new run, and two new runs that
  /// chose differently would differ in the last bits.
  std::string small(const std::string& exp, const std::string& extra = "") {
    return "train --dataset mnist --data-dir " + (dir_ / "data").string() +
           " --image-size 16 --width 8 --stages 3 --final-conv 48 --mlp 32-32 --batch-size 16 "
           "--epochs 2 --threads 1 --workers 1 --log-every 3 --channels-last off --exp-dir " +
           (dir_ / exp).string() + " " + extra;
  }
};

TEST_F(CliTrain, HelpNamesTheReferenceFlags) {
  const Result r = run("train --help");
  ASSERT_EQ(r.code, 0);
  for (const char* flag :
       {"--arch",    "--mlp",       "--epochs",           "--batch-size", "--base-lr",
        "--wd",      "--sim-coeff", "--std-coeff",        "--cov-coeff",  "--exp-dir",
        "--dataset", "--data-dir",  "--recipe",           "--optimizer",  "--loss-preset",
        "--device",  "--threads",   "--workers",          "--seed",       "--config",
        "--resume",  "--max-steps", "--no-shared-weights"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }
}

TEST_F(CliTrain, TrainsWritesTheExperimentDirAndResumes) {
  Result r = run(small("exp", "--max-steps 4 --progress plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("step 3/12"), std::string::npos) << r.err;  // plain log lines
  EXPECT_NE(r.err.find("stopped (--max-steps) at step 4/12"), std::string::npos) << r.err;
  const auto config = nlohmann::json::parse(slurp(dir_ / "exp" / "config.json"));
  // config.json holds the tree of sections (run/config.h).
  EXPECT_EQ(config["model"]["mlp"], "32-32");
  EXPECT_EQ(config["optim"]["batch_size"], 16);
  EXPECT_EQ(config["runtime"]["max_steps"], 4);
  // The same command without --max-steps continues from the checkpoint to the end.
  r = run(small("exp", "--progress plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step 4"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("finished at step 12/12"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "exp" / "backbone.pt"));
  // Another model than the directory's run is refused, naming the difference and the ways out;
  // --resume continues the run with its own settings, naming those it keeps.
  const auto before = fs::last_write_time(dir_ / "exp" / "checkpoint.pt");
  r = run(small("exp", "--mlp 16-16 --progress plain"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("holds a run of other settings than this command's (it has --mlp "
                       "\"32-32\")"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("give another --exp-dir"), std::string::npos) << r.err;
  EXPECT_EQ(fs::last_write_time(dir_ / "exp" / "checkpoint.pt"), before);
  r = run(small(
      "exp", "--mlp 16-16 --progress plain --resume " + (dir_ / "exp" / "checkpoint.pt").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("ignoring --mlp \"16-16\""), std::string::npos) << r.err;
}

TEST_F(CliTrain, RecipeOverridesAreRecordedKeptOnResumeAndChangeTheViews) {
  // A new run records every view setting (the overrides applied to the recipe), so that it
  // resumes with the views it started with whatever the recipe's defaults become.
  const std::string recorded =
      "crop_scale=0.3,flip=0.5,jitter=0.8,brightness=1.5,contrast=1.5,saturation=0,hue=0,"
      "grayscale=0,blur=0,solarize=0/1";
  Result r = run(small("aug", "--recipe-overrides crop_scale=0.3,solarize=0/1 --max-steps 2"));
  ASSERT_EQ(r.code, 0) << r.err;
  auto config = nlohmann::json::parse(slurp(dir_ / "aug" / "config.json"));
  EXPECT_EQ(config["data"]["recipe_overrides"], recorded);
  // Resumed with other overrides: the run's are kept, and the others named as ignored.
  r = run(small("aug", "--recipe-overrides flip=0 --max-steps 3"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("ignoring --recipe-overrides \"flip=0\""), std::string::npos) << r.err;
  config = nlohmann::json::parse(slurp(dir_ / "aug" / "config.json"));
  EXPECT_EQ(config["data"]["recipe_overrides"], recorded);
  // The views change: the same seed without the overrides takes other first steps.
  r = run(small("plain", "--max-steps 2"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto first_loss = [&](const std::string& exp) {
    std::ifstream in(dir_ / exp / "metrics.jsonl");
    std::string line;
    std::getline(in, line);
    return nlohmann::json::parse(line).at("loss").get<double>();
  };
  EXPECT_NE(first_loss("aug"), first_loss("plain"));
  config = nlohmann::json::parse(slurp(dir_ / "plain" / "config.json"));
  EXPECT_EQ(config["data"]["recipe_overrides"],
            "crop_scale=0.5,flip=0.5,jitter=0.8,brightness=1.5,contrast=1.5,saturation=0,hue=0,"
            "grayscale=0,blur=0,solarize=0.1/0.2");
  // The recorded settings are the views: a new run from the run's config.json trains alike.
  r = run("train --config " + (dir_ / "plain" / "config.json").string() + " --exp-dir " +
          (dir_ / "again").string() + " --max-steps 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(first_loss("again"), first_loss("plain"));
}

TEST_F(CliTrain, ConfigFileWithFlagOverrides) {
  std::ofstream(dir_ / "c.json") << R"({"mlp": "48-48", "epochs": 1, "seed": 7, "wd": 0.0001})";
  const Result r = run(small("cfg", "--config " + (dir_ / "c.json").string() + " --seed 9"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto config = nlohmann::json::parse(slurp(dir_ / "cfg" / "config.json"));
  EXPECT_EQ(config["seed"], 9);                // the flag wins
  EXPECT_EQ(config["optim"]["wd"], 0.0001);    // from the file
  EXPECT_EQ(config["model"]["mlp"], "32-32");  // small() passes --mlp, which wins over the file
  // A run's own config.json is a valid --config.
  const Result again = run("train --config " + (dir_ / "cfg" / "config.json").string() +
                           " --exp-dir " + (dir_ / "cfg2").string() + " --max-steps 1");
  EXPECT_EQ(again.code, 0) << again.err;
}

TEST_F(CliTrain, SigintSavesACheckpointAndTheRunResumes) {
  const pid_t pid =
      spawn_shell(std::string(VICREG_CLI) + " " + small("sig", "--epochs 200 --progress plain") +
                  " 2>" + (dir_ / "sig.err").string());
  ASSERT_GE(pid, 0);
  // Wait for the first metrics line, then interrupt.
  const fs::path metrics = dir_ / "sig" / "metrics.jsonl";
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 600 && (!fs::exists(metrics) || fs::file_size(metrics) == 0); ++i) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    usleep(50000);
  }
  ASSERT_FALSE(exited) << "the run ended before it was interrupted: " << slurp(dir_ / "sig.err");
  // A second run on the same directory is refused, naming the one that holds it.
  const Result second = run(small("sig", "--epochs 200 --progress none"));
  EXPECT_EQ(second.code, 1);
  EXPECT_NE(second.err.find("is in use by process " + std::to_string(pid)), std::string::npos)
      << second.err;
  ASSERT_EQ(kill(pid, SIGINT), 0);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130) << slurp(dir_ / "sig.err");
  EXPECT_NE(slurp(dir_ / "sig.err").find("checkpoint saved"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "sig" / "checkpoint.pt"));
  // Already past step 1: resumes and stops at once.
  const Result r = run(small("sig", "--epochs 200 --max-steps 1 --progress plain"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step"), std::string::npos) << r.err;
}

TEST_F(CliTrain, KilledAtRandomMomentsTheRunResumesToTheSameWeights) {
  // kill -9 at random moments (in start-up, in steps, in checkpoint writes), then the same
  // command again, until the run finishes: it must end where an uninterrupted run ends, bit for
  // bit. A checkpoint after every step makes writes a good share of the time.
  const std::string flags = "--epochs 4 --mlp 1024-1024 --checkpoint-every 1 --progress none";
  const auto started = std::chrono::steady_clock::now();
  const Result straight = run(small("straight", flags));
  ASSERT_EQ(straight.code, 0) << straight.err;
  // Kill moments are drawn from [2 %, 80 %] of the uninterrupted run's time, not from fixed
  // milliseconds: how long the run takes depends on the machine and on what runs beside it. A run
  // that finishes before its first kill (it ran faster than the straight one) proves nothing, so
  // it starts over from scratch with half the range, up to 6 times.
  double span_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  std::mt19937 rng(std::random_device{}());
  std::string log;  // what happened, for the failure message
  int kills = 0, mid_write = 0, code = -1;
  const fs::path exp = dir_ / "killed";
  for (int restart = 0; restart < 6 && kills == 0; ++restart, span_ms /= 2) {
    if (restart > 0) log += " [finished before any kill: from scratch, range halved]";
    fs::remove_all(exp);
    code = -1;
    std::uniform_int_distribution<int> delay_ms(std::max(1, static_cast<int>(span_ms * 0.02)),
                                                std::max(2, static_cast<int>(span_ms * 0.8)));
    for (int attempt = 0; attempt < 60 && code != 0; ++attempt) {
      const pid_t pid = spawn_shell(std::string(VICREG_CLI) + " " + small("killed", flags) +
                                    " 2>>" + (dir_ / "killed.err").string());
      ASSERT_GE(pid, 0);
      const int ms = delay_ms(rng);
      int status = 0;
      bool exited = false;
      const auto kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
      while (!exited && std::chrono::steady_clock::now() < kill_at) {
        exited = waitpid(pid, &status, WNOHANG) == pid;
        if (!exited) usleep(1000);
      }
      if (exited) {
        code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        log += " exit " + std::to_string(code);
        ASSERT_EQ(code, 0) << log << "\n" << slurp(dir_ / "killed.err");
        break;
      }
      ASSERT_EQ(kill(pid, SIGKILL), 0);
      ASSERT_EQ(waitpid(pid, &status, 0), pid);
      ++kills;
      bool temporary = false;  // killed while writing a file
      if (fs::exists(exp)) {
        for (const auto& e : fs::directory_iterator(exp)) {
          temporary = temporary || e.path().filename().string().rfind(".checkpoint.pt.", 0) == 0;
        }
      }
      mid_write += temporary ? 1 : 0;
      log += " kill@" + std::to_string(ms) + "ms" + (temporary ? "(mid-write)" : "");
    }
  }
  ASSERT_EQ(code, 0) << "never finished:" << log;
  std::printf("killed %d times (%d while writing a checkpoint):%s\n", kills, mid_write,
              log.c_str());
  EXPECT_GE(kills, 1) << log;
  const vicreg::Backbone a = vicreg::read_backbone((dir_ / "straight" / "backbone.pt").string());
  const vicreg::Backbone b = vicreg::read_backbone((exp / "backbone.pt").string());
  const auto pa = a.encoder->named_parameters(), pb = b.encoder->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key() << log;
  const auto ba = a.encoder->named_buffers(), bb = b.encoder->named_buffers();
  for (const auto& p : ba) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key() << log;
  // Every step logged once, in order, however often it was killed.
  std::ifstream metrics(exp / "metrics.jsonl");
  std::string line;
  int64_t last = 0;
  std::vector<std::pair<int64_t, float>> losses;  // (step, loss) as metrics.jsonl has them
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    EXPECT_GT(j["step"].get<int64_t>(), last) << line;
    last = j["step"].get<int64_t>();
    losses.emplace_back(last, static_cast<float>(j["loss"].get<double>()));
  }
  EXPECT_EQ(last, 24);
  // And in TensorBoard's view, the event files read in name order: the same steps, once each.
  std::vector<std::pair<int64_t, float>> events;
  const std::vector<std::string> files = vicreg::event_files(exp.string());
  for (const std::string& f : files) {
    for (const vicreg::ScalarEvent& e : vicreg::read_scalar_events(f)) {
      if (e.tag == "train/loss") events.emplace_back(e.step, e.value);
    }
  }
  EXPECT_EQ(events, losses) << files.size() << " event files;" << log;
  // The finished run, run again: nothing to do, exit 0, its files untouched.
  const auto written = fs::last_write_time(exp / "backbone.pt");
  const Result again = run(small("killed", flags));
  EXPECT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.err.find("already at step 24 of 24, finished: nothing to do"), std::string::npos)
      << again.err;
  EXPECT_EQ(fs::last_write_time(exp / "backbone.pt"), written);
}

TEST_F(CliTrain, RejectsBadInput) {
  struct Case {
    std::string args;
    const char* message;
  };
  const std::string data = (dir_ / "data").string();
  const Case cases[] = {
      {"train --data-dir /nonexistent/fm --exp-dir " + (dir_ / "a").string(),
       "apt-get install dataset-fashion-mnist"},
      {small("b", "--batch-size 1"), "--batch-size must be at least 2"},
      {small("c", "--batch-size 500"), "larger than the data set"},
      {small("d", "--mlp 8192-x"), "invalid layer spec '8192-x'"},
      {small("e", "--arch vgg"), "unknown --arch 'vgg'"},
      {small("f", "--frobnicate 3"), "--frobnicate"},
      {small("g", "--optimizer adam"), "unknown --optimizer 'adam'"},
      {small("h", "--dataset imagenet"), "unknown --dataset 'imagenet'"},
      {small("i", "--recipe simclr"), "unknown --recipe 'simclr'"},
      {small("j", "--loss-preset solo"), "solo"},
      {small("k", "--device cuda:0"), torch::cuda::is_available() ? "" : "no CUDA GPU"},
      {small("l", "--config /nonexistent.json"), "--config file '/nonexistent.json': no such file"},
      {small("m", "--arch-b resnet18"), "--arch-b needs --no-shared-weights"},
      {small("n", "--resume /nonexistent/checkpoint.pt"), "no such file"},
      {small("p", "--recipe-overrides crop_scale=0.3,solarise=0.2"),
       "--recipe-overrides 'solarise=0.2'"},
  };
  for (const Case& c : cases) {
    if (std::string(c.message).empty()) continue;
    const Result r = run(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos)
        << c.args << ": expected '" << c.message << "' in stderr:\n"
        << r.err;
  }
  std::ofstream(dir_ / "bad.json") << R"({"epochs": 2, "nope": 1})";
  const Result r = run(small("o", "--config " + (dir_ / "bad.json").string()));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("unknown key 'nope'"), std::string::npos) << r.err;
}

TEST_F(CliTrain, AFullDiskIsAnErrorThatKeepsThePreviousCheckpoint) {
  ASSERT_EQ(run(small("full", "--max-steps 3 --progress none")).code, 0);
  const fs::path dir = dir_ / "full", checkpoint = dir / "checkpoint.pt";
  const std::string before = slurp(checkpoint);
  ASSERT_GT(before.size(), 20000u);
  // The file-size limit makes writes past 8 KiB fail with EFBIG, as a full disk fails them with
  // ENOSPC (SIGXFSZ ignored, so that the write returns the error instead of killing).
  const Result r = shell("trap '' XFSZ; ulimit -f 8; exec " + std::string(VICREG_CLI) + " " +
                         small("full", "--max-steps 6 --progress none"));
  EXPECT_EQ(r.code, 1) << r.err;  // not 134 (an exception from a destructor)
  EXPECT_NE(r.err.find("cannot write '" + checkpoint.string() + "'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("is intact"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().rfind(".checkpoint.pt.", 0), std::string::npos)
        << "temporary left behind: " << e.path();
  }
  EXPECT_EQ(slurp(checkpoint), before);
  // With room again, the run resumes from the checkpoint that was kept.
  const Result again = run(small("full", "--max-steps 6 --progress plain"));
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.err.find("resuming at step 3"), std::string::npos) << again.err;
}

TEST_F(CliTrain, DivergenceExitsNonZeroNamingTheStep) {
  const Result r = run(small("nan", "--optimizer sgd --base-lr 1e12 --warmup-epochs 0"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("diverged at step"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("last good checkpoint is kept"), std::string::npos) << r.err;
}

TEST_F(CliTrain, PrecisionIsChosenPrintedRecordedAndKeptByEval) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  Result r =
      run(small("bf16", "--max-steps 2 --precision bf16 --progress plain --channels-last auto"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("; precision bf16 (as asked)"), std::string::npos) << r.err;
  auto config = nlohmann::json::parse(slurp(dir_ / "bf16" / "config.json"));
  EXPECT_EQ(config["runtime"]["precision"], "bf16");
  // channels_last auto, on a CPU: both formats timed, the faster taken, printed and recorded.
  const std::regex measured(
      ", (channels_last|contiguous) \\(auto: [0-9.]+ ms a step against "
      "[0-9.]+ (contiguous|channels_last), measured\\)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, measured)) << r.err;
  EXPECT_NE(m[1], m[2]) << r.err;
  const std::string chosen = m[1] == "channels_last" ? "on" : "off";
  EXPECT_EQ(config["runtime"]["channels_last"], chosen);
  // Resumed, it keeps the recorded format without timing again.
  r = run(small("bf16", "--max-steps 3 --precision bf16 --progress plain --channels-last auto"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step 2"), std::string::npos) << r.err;
  EXPECT_FALSE(std::regex_search(r.err, measured)) << r.err;
  EXPECT_EQ(r.err.find(", channels_last;") != std::string::npos, chosen == "on") << r.err;
  // auto: what this machine's CPU supports, printed with the reason and recorded.
  r = run(small("auto", "--max-steps 1 --progress plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("; precision " +
                       vicreg::to_string(vicreg::cpu_has_native_bf16() ? vicreg::Precision::Bf16
                                                                       : vicreg::Precision::Fp32) +
                       " (auto: the CPU has"),
            std::string::npos)
      << r.err;
  // eval keeps the run's precision unless told otherwise, and says so in its JSON.
  const fs::path json = dir_ / "knn.json";
  r = run("eval --threads 1 --protocol knn --checkpoint " +
          (dir_ / "bf16" / "checkpoint.pt").string() + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(json))["precision"], "bf16");
  r = run("eval --threads 1 --protocol knn --precision fp32 --channels-last on --checkpoint " +
          (dir_ / "bf16" / "checkpoint.pt").string() + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(json))["precision"], "fp32");
  r = run("report --threads 1 --precision fp32 --exp-dir " + (dir_ / "bf16").string());
  ASSERT_EQ(r.code, 0) << r.err;
  // Impossible combinations are named errors.
  r = run(small("fp16", "--precision fp16"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--precision fp16 needs a CUDA device"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("use --precision bf16"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "fp16" / "checkpoint.pt"));
  r = run(small("fp8", "--precision fp8"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown --precision 'fp8': use auto, fp32, bf16 or fp16"),
            std::string::npos)
      << r.err;
  r = run("eval --protocol knn --precision fp16 --checkpoint " +
          (dir_ / "bf16" / "checkpoint.pt").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("needs a CUDA device"), std::string::npos) << r.err;
  r = run(small("ls", "--loss-scale sometimes"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'sometimes': use auto, on or off"), std::string::npos) << r.err;
  r = run(small("conv", "--bf16-conv fp16"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown --bf16-conv 'fp16': use auto, bf16, fp32-backward or fp32"),
            std::string::npos)
      << r.err;
}

TEST_F(CliTrain, Bf16ConvolutionModeIsAskedForRecordedAndKeptOnResumeAndByEval) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  // auto: the CPU's own mode, printed and recorded.
  Result r = run(small("auto", "--max-steps 1 --precision bf16 --progress plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string own = vicreg::to_string(vicreg::cpu_bf16_conv());
  EXPECT_NE(r.err.find(", convolutions " + own), std::string::npos) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "auto" / "config.json"))["runtime"]["bf16_conv"],
            own);
  // Asked for: another mode than the CPU's, so that keeping it is seen.
  const std::string other = own == "fp32" ? "bf16" : "fp32";
  r = run(small("asked", "--max-steps 2 --precision bf16 --progress plain --bf16-conv " + other));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(", convolutions " + other), std::string::npos) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "asked" / "config.json"))["runtime"]["bf16_conv"],
            other);
  // A resumed run left on auto keeps the recorded mode (it changes the convolutions' bits).
  r = run(small("asked", "--max-steps 3 --precision bf16 --progress plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(", convolutions " + other), std::string::npos) << r.err;
  // eval extracts features in the run's mode unless told otherwise, and says which.
  const fs::path json = dir_ / "knn.json";
  const std::string ckpt = (dir_ / "asked" / "checkpoint.pt").string();
  r = run("eval --threads 1 --protocol knn --checkpoint " + ckpt + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(json))["bf16_conv"], other);
  r = run("eval --threads 1 --protocol knn --bf16-conv " + own + " --checkpoint " + ckpt +
          " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(json))["bf16_conv"], own);
  // In fp32 no mode applies: the JSON has none.
  r = run("eval --threads 1 --protocol knn --precision fp32 --checkpoint " + ckpt + " --json " +
          json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(nlohmann::json::parse(slurp(json)).contains("bf16_conv"));
}

// ---------------------------------------------------------------------------------------------
// eval, embed

TEST_F(CliTrain, EvalAndEmbedATrainedBackbone) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  ASSERT_EQ(run(small("ev", "--max-steps 3 --progress none")).code, 0);
  const std::string backbone = (dir_ / "ev" / "backbone.pt").string();
  const fs::path knn_json = dir_ / "knn.json", lin_json = dir_ / "lin.json";
  Result r = run("eval --threads 1 --protocol knn --backbone " + backbone + " --json " +
                 knn_json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("knn on the representation of " + backbone +
                       ", mnist (96 train / 50 test): top-1"),
            std::string::npos)
      << r.out;
  auto doc = nlohmann::json::parse(slurp(knn_json));
  EXPECT_EQ(doc["protocol"], "knn");
  EXPECT_GE(doc["top1"].get<double>(), 0.0);
  EXPECT_LE(doc["top1"].get<double>(), doc["top5"].get<double>());
  EXPECT_EQ(doc["settings"]["k"], 20);
  r = run("eval --threads 1 --protocol linear --epochs 3 --backbone " + backbone + " --json " +
          lin_json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  doc = nlohmann::json::parse(slurp(lin_json));
  EXPECT_EQ(doc["protocol"], "linear");
  EXPECT_EQ(doc["settings"]["epochs"], 3);
  EXPECT_GT(doc["rankme"].get<double>(), 1.0);

  const fs::path emb = dir_ / "emb.npy", lab = dir_ / "lab.npy";
  r = run("embed --threads 1 --split test --backbone " + backbone + " --out " + emb.string() +
          " --labels-out " + lab.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto e = vicreg::read_npy(emb.string());
  EXPECT_EQ(e.sizes(), (std::vector<int64_t>{50, 48}));  // convnet with --final-conv 48: 48-d
  EXPECT_EQ(vicreg::read_npy(lab.string())[7].item<int64_t>(), 7);

  for (const std::string& args :
       {std::string("eval --backbone /nonexistent/backbone.pt"),
        "eval --protocol svm --backbone " + backbone, "embed --backbone " + backbone,
        "eval --k 0 --backbone " + backbone}) {
    const Result bad = run(args);
    EXPECT_NE(bad.code, 0) << args;
  }
  std::ofstream(dir_ / "junk.pt") << "junk";
  r = run("eval --backbone " + (dir_ / "junk.pt").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("cannot be read"), std::string::npos) << r.err;
  // No test split next to the training data: the error names the missing file.
  r = run("eval --backbone " + backbone + " --data-dir " + (dir_ / "nowhere").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no such file"), std::string::npos) << r.err;
}

TEST_F(CliTrain, ViTAndConvNeXtTrainResumeEvaluateEmbedReportAndExport) {
  // The new families everywhere the ResNets go: a run, its resume, the three protocols, embed,
  // the report and export with torchvision's recipe (a 2-block ViT with 8 px patches; the
  // ConvNeXt-Tiny's small-image stem at 16 px).
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  struct Family {
    std::string exp, flags;
    int64_t dim;
    std::string torchvision;
  };
  for (const Family& f :
       {Family{"vit", "--arch vit_tiny --patch-size 8 --depth 2 --drop-path 0.1", 192,
               "torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2"},
        Family{
            "convnext", "--arch convnext_tiny --batch-size 8 --expander-norm layer", 768,
            "torchvision.models.convnext_tiny(); m.features[0][0] = nn.Conv2d(1, 96, 3, 1, 1)"}}) {
    Result r = run(small(f.exp, f.flags + " --max-steps 2 --progress none"));
    ASSERT_EQ(r.code, 0) << f.exp << r.err;
    r = run(small(f.exp, f.flags + " --max-steps 3 --progress plain"));
    ASSERT_EQ(r.code, 0) << f.exp << r.err;
    EXPECT_NE(r.err.find("resuming at step 2"), std::string::npos) << r.err;
    const std::string backbone = (dir_ / f.exp / "backbone.pt").string();
    const std::string checkpoint = (dir_ / f.exp / "checkpoint.pt").string();
    for (const std::string& args :
         {"--protocol knn --backbone " + backbone,
          "--protocol linear --epochs 2 --checkpoint " + checkpoint,
          "--protocol finetune --label-fraction 0.5 --epochs 1 --backbone " + backbone}) {
      r = run("eval --threads 1 " + args);
      EXPECT_EQ(r.code, 0) << f.exp << " " << args << "\n" << r.err;
      EXPECT_NE(r.out.find("top-1"), std::string::npos) << r.out;
    }
    const fs::path emb = dir_ / (f.exp + ".npy");
    r = run("embed --threads 1 --split test --backbone " + backbone + " --out " + emb.string());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(vicreg::read_npy(emb.string()).sizes(), (std::vector<int64_t>{50, f.dim}));
    r = run("report --threads 1 --exp-dir " + (dir_ / f.exp).string());
    EXPECT_EQ(r.code, 0) << r.err;
    r = run("export --backbone " + backbone + " --out " + (dir_ / (f.exp + ".st")).string());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find(f.torchvision), std::string::npos) << r.out;
  }
  // Settings the ViT cannot take are named by their flags.
  const Result bad = run(small("bad", "--arch vit_tiny --patch-size 5 --max-steps 1"));
  EXPECT_EQ(bad.code, 1) << bad.err;
  EXPECT_NE(bad.err.find("--patch-size"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("16 px do not split into 5 px patches"), std::string::npos) << bad.err;
}

TEST_F(CliTrain, EvalCheckpointEmbeddingFinetuneAndBaselines) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  ASSERT_EQ(run(small("ev", "--max-steps 3 --progress none")).code, 0);
  const std::string checkpoint = (dir_ / "ev" / "checkpoint.pt").string();
  const std::string backbone = (dir_ / "ev" / "backbone.pt").string();
  const fs::path json = dir_ / "out.json";
  const auto eval = [&](const std::string& args) {
    const Result r = run("eval --threads 1 --json " + json.string() + " " + args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
    return std::make_pair(r, nlohmann::json::parse(slurp(json)));
  };

  // kNN on the embedding: the expander's 32-d output; diagnostics of both spaces.
  auto [r, doc] = eval("--protocol knn --embedding --checkpoint " + checkpoint);
  EXPECT_EQ(doc["features"], "embedding");
  EXPECT_EQ(doc["checkpoint"], checkpoint);
  EXPECT_EQ(doc["diagnostics"]["embedding"]["dim"], 32);
  EXPECT_EQ(doc["diagnostics"]["representation"]["dim"], 48);
  for (const char* key : {"std_mean", "std_min", "covariance", "rankme"}) {
    EXPECT_TRUE(doc["diagnostics"]["embedding"][key].is_number()) << key;
  }
  EXPECT_LE(doc["diagnostics"]["embedding"]["std_min"].get<double>(),
            doc["diagnostics"]["embedding"]["std_mean"].get<double>());
  EXPECT_NE(r.out.find("test embedding: std mean"), std::string::npos) << r.out;
  // The checkpoint's backbone is the backbone.pt's: the same kNN result on the representation.
  const double knn_checkpoint =
      eval("--protocol knn --checkpoint " + checkpoint).second["top1"].get<double>();
  EXPECT_DOUBLE_EQ(eval("--protocol knn --backbone " + backbone).second["top1"].get<double>(),
                   knn_checkpoint);

  // Fine-tuning on a class-balanced tenth: 10 classes x round(0.1 * 9.6) = 10 samples.
  std::tie(r, doc) =
      eval("--protocol finetune --label-fraction 0.1 --epochs 2 --backbone " + backbone);
  EXPECT_EQ(doc["protocol"], "finetune");
  EXPECT_EQ(doc["train_samples"], 10);
  EXPECT_EQ(doc["settings"]["label_fraction"], 0.1);
  EXPECT_EQ(doc["settings"]["lr_backbone"], 0.01);
  EXPECT_EQ(doc["settings"]["epochs"], 2);
  // The linear probe on augmented images through the frozen backbone.
  std::tie(r, doc) = eval("--protocol linear --augment --epochs 2 --backbone " + backbone);
  EXPECT_EQ(doc["settings"]["augment"], true);
  EXPECT_EQ(doc["settings"]["lr_backbone"], 0.0);

  // Baselines: raw pixels (16 x 16 x 1 = 256 features) and the untrained model of the run's
  // config.json.
  const std::string config = " --config " + (dir_ / "ev" / "config.json").string();
  std::tie(r, doc) = eval("--protocol linear --epochs 5 --baseline pixels" + config);
  EXPECT_EQ(doc["baseline"], "pixels");
  EXPECT_EQ(doc["diagnostics"]["representation"]["dim"], 256);
  std::tie(r, doc) = eval("--protocol knn --baseline random-init" + config);
  EXPECT_EQ(doc["diagnostics"]["representation"]["dim"], 48);
  EXPECT_NE(doc["top1"].get<double>(), knn_checkpoint);

  // embed --embedding writes the expander's output.
  const fs::path emb = dir_ / "z.npy";
  ASSERT_EQ(
      run("embed --threads 1 --embedding --checkpoint " + checkpoint + " --out " + emb.string())
          .code,
      0);
  EXPECT_EQ(vicreg::read_npy(emb.string()).sizes(), (std::vector<int64_t>{50, 32}));

  // Impossible combinations say what to do instead.
  const struct {
    std::string args, message;
  } bad[] = {
      {"eval --embedding --backbone " + backbone, "--embedding needs the expander"},
      {"eval --backbone " + backbone + " --checkpoint " + checkpoint, "exactly one of"},
      {"eval --protocol knn", "exactly one of"},
      {"eval --baseline pixels --config /nonexistent.json", "'/nonexistent.json': no such file"},
      {"eval --backbone " + backbone + config,
       "--config applies to --baseline and --init-backbone only"},
      {"eval --protocol finetune --embedding --checkpoint " + checkpoint, "fixed embeddings"},
      {"eval --protocol finetune --label-fraction 0 --backbone " + backbone, "label-fraction"},
      {"eval --protocol finetune --label-fraction 1.5 --backbone " + backbone, "label-fraction"},
      {"eval --baseline imagenet", "baseline"},
  };
  for (const auto& c : bad) {
    const Result b = run(c.args);
    EXPECT_NE(b.code, 0) << c.args;
    EXPECT_NE(b.err.find(c.message), std::string::npos) << c.args << "\n" << b.err;
  }
}

TEST_F(CliTrain, ImageNetLayoutFoldersHeldOutSplitsSubsetsAndForeignWeights) {
  // train/<class>/ and val/<class>/ as ImageNet is laid out: 3 classes, 8 + 3 images each.
  const fs::path root = dir_ / "imagenet", flat = dir_ / "flat";
  cv::RNG rng(5);
  const auto write_image = [&](const fs::path& p, int c) {
    cv::Mat img(20, 20, CV_8UC3, cv::Scalar(80 * c, 40, 200 - 80 * c));
    cv::Mat noise(20, 20, CV_8UC3);
    rng.fill(noise, cv::RNG::UNIFORM, 0, 40);
    fs::create_directories(p.parent_path());
    ASSERT_TRUE(cv::imwrite(p.string(), img + noise));
  };
  for (int c = 0; c < 3; ++c) {
    const std::string cls = "n0" + std::to_string(c);
    for (int i = 0; i < 8; ++i) {
      const std::string name = cls + "_" + std::to_string(i) + ".png";
      write_image(root / "train" / cls / name, c);
      write_image(flat / cls / name, c);
    }
    for (int i = 0; i < 3; ++i)
      write_image(root / "val" / cls / (cls + "_v" + std::to_string(i) + ".png"), c);
  }
  const std::string model =
      " --recipe cifar --image-size 16 --width 8 --stages 3 --mlp 32-32 --batch-size 8 "
      "--max-steps 2 --threads 1 --workers 1 --progress plain";
  Result r = run("train --dataset image-folder --data-dir " + root.string() + model +
                 " --exp-dir " + (dir_ / "in").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("24 samples (" + (root / "train").string() + ")"), std::string::npos)
      << r.err;
  const std::string backbone = (dir_ / "in" / "backbone.pt").string();
  const fs::path json = dir_ / "e.json";
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + backbone + " --json " +
          json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  auto doc = nlohmann::json::parse(slurp(json));
  EXPECT_EQ(doc["splits"]["train"]["source"], (root / "train").string());
  EXPECT_EQ(doc["splits"]["train"]["samples"], 24);
  EXPECT_EQ(doc["splits"]["test"]["source"], (root / "val").string());
  EXPECT_EQ(doc["splits"]["test"]["samples"], 9);
  EXPECT_EQ(doc["splits"]["classes"], 3);
  EXPECT_NE(r.out.find("held-out split: " + (root / "val").string() + ", 9 samples; 3 classes"),
            std::string::npos)
      << r.out;

  // The same images without a held-out split: an error, or --holdout.
  r = run("eval --threads 1 --protocol knn --backbone " + backbone + " --data-dir " +
          flat.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no held-out split"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--holdout FRACTION"), std::string::npos) << r.err;
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + backbone + " --data-dir " +
          flat.string() + " --holdout 0.25 --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  doc = nlohmann::json::parse(slurp(json));
  EXPECT_EQ(doc["splits"]["train"]["samples"], 18);
  EXPECT_EQ(doc["splits"]["test"]["samples"], 6);
  // Training with --holdout never sees the held-out part and records it for eval.
  r = run("train --dataset image-folder --data-dir " + flat.string() + " --holdout 0.25" + model +
          " --eval-every 1 --epochs 1 --exp-dir " + (dir_ / "ho").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("18 samples ("), std::string::npos) << r.err;
  r = run("eval --threads 1 --protocol knn --k 3 --checkpoint " +
          (dir_ / "ho" / "checkpoint.pt").string() + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(json))["splits"]["test"]["samples"], 6);
  // A training run whose probe has no held-out split stops before its first step.
  r = run("train --dataset image-folder --data-dir " + flat.string() + model +
          " --eval-every 1 --exp-dir " + (dir_ / "noval").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no held-out split"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "noval" / "checkpoint.pt"));

  // --train-subset: the reference's subset files, one image name per line.
  std::ofstream(dir_ / "subset.txt") << "n00_1.png\nn01_2.png\nn02_3.png\n";
  r = run("eval --threads 1 --protocol knn --k 3 --backbone " + backbone + " --train-subset " +
          (dir_ / "subset.txt").string() + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(json))["splits"]["train"]["samples"], 3);
  std::ofstream(dir_ / "subset.txt") << "n00_1.png\nn07_0.JPEG\n";
  r = run("eval --threads 1 --protocol knn --backbone " + backbone + " --train-subset " +
          (dir_ / "subset.txt").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("n07_0.JPEG"), std::string::npos) << r.err;
  r = run("eval --threads 1 --protocol finetune --label-fraction 0.5 --backbone " + backbone +
          " --train-subset " + (dir_ / "subset.txt").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("give one"), std::string::npos) << r.err;

  // Weights without a run (a torchvision-layout ResNet-18): --dataset says what the data are.
  vicreg::EncoderConfig ec;
  ec.arch = "resnet18";
  ec.in_channels = 3;
  ec.image_size = 224;
  const std::string tv = (dir_ / "tv.safetensors").string();
  vicreg::write_safetensors(tv, vicreg::module_state(*vicreg::make_encoder(ec)));
  const std::string emb = (dir_ / "tv.npy").string();
  r = run("embed --threads 1 --backbone " + tv + " --data-dir " + root.string() + " --out " + emb);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--dataset"), std::string::npos) << r.err;
  r = run("embed --threads 1 --backbone " + tv +
          " --dataset image-folder --image-size 32 --data-dir " + root.string() + " --out " + emb);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find((root / "val").string()), std::string::npos) << r.out;
  EXPECT_EQ(vicreg::read_npy(emb).sizes(), (std::vector<int64_t>{9, 512}));

  // A table in a single file has no held-out split either.
  vicreg::write_npy((dir_ / "table.npy").string(), torch::randn({40, 6}));
  vicreg::write_npy((dir_ / "table_labels.npy").string(), torch::arange(40, torch::kLong) % 4);
  r =
      run("train --dataset npy --arch mlp --encoder-mlp 16-8 --mlp 16-16 --batch-size 8 "
          "--max-steps 2 --threads 1 --workers 1 --progress none --data-dir " +
          (dir_ / "table.npy").string() + " --exp-dir " + (dir_ / "tab").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string tab = (dir_ / "tab" / "backbone.pt").string();
  r = run("eval --threads 1 --protocol knn --backbone " + tab);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("a single file"), std::string::npos) << r.err;
  // The run pretrained on every row: a --holdout part of them is refused (its pretraining saw
  // them), unless the weights are said to come from elsewhere.
  r = run("eval --threads 1 --protocol knn --backbone " + tab + " --holdout 0.25");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--holdout 0.25 would measure on samples"), std::string::npos) << r.err;
  r = run("eval --threads 1 --protocol knn --backbone " + tab +
          " --holdout 0.25 --pretrained-elsewhere --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.err;
  doc = nlohmann::json::parse(slurp(json));
  EXPECT_EQ(doc["splits"]["test"]["samples"], 12);  // 25 % of each of 4 classes of 10
  EXPECT_LT(doc["top1"].get<double>(), 0.9);        // random rows: no row finds itself
  vicreg::write_npy((dir_ / "wide.npy").string(), torch::randn({5, 7}));
  r = run("eval --threads 1 --protocol knn --backbone " + tab + " --val-data " +
          (dir_ / "wide.npy").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("7 features"), std::string::npos) << r.err;
}

TEST_F(CliTrain, ExportsSafetensorsAndStartsFromThem) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  ASSERT_EQ(run(small("ex", "--max-steps 3 --progress none")).code, 0);
  const std::string backbone = (dir_ / "ex" / "backbone.pt").string();
  const std::string checkpoint = (dir_ / "ex" / "checkpoint.pt").string();
  const std::string out = (dir_ / "bb.safetensors").string();
  Result r = run("export --checkpoint " + checkpoint + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote " + out + ": 42 tensors of the convnet backbone"), std::string::npos)
      << r.out;
  const std::string from_backbone = (dir_ / "bb2.safetensors").string();
  ASSERT_EQ(run("export --backbone " + backbone + " --out " + from_backbone).code, 0);
  EXPECT_EQ(slurp(out), slurp(from_backbone));  // the same weights, byte for byte

  // The exported file evaluates exactly like backbone.pt.
  const auto knn = [&](const std::string& subject) {
    const Result e = run("eval --threads 1 --protocol knn " + subject);
    EXPECT_EQ(e.code, 0) << e.err;
    return e.out.substr(e.out.find("top-1"), 30);
  };
  EXPECT_EQ(knn("--backbone " + out), knn("--backbone " + backbone));
  EXPECT_EQ(knn("--init-backbone " + out + " --config " + (dir_ / "ex" / "config.json").string()),
            knn("--backbone " + backbone));

  // A new run starts from it; --init-backbone is recorded, and ignored on resume.
  r = run(small("init", "--max-steps 1 --progress none --init-backbone " + out));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("backbone initialised from " + out + ": 42 tensors"), std::string::npos)
      << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "init" / "config.json"))["model"]["init_backbone"],
            out);
  r = run(small("init", "--max-steps 2 --progress none --init-backbone " + backbone));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find("backbone initialised"), std::string::npos) << r.err;

  // Bad input: named, exit 1, no run directory written.
  std::ofstream(dir_ / "junk.safetensors") << "12345678{not json";
  const struct {
    std::string args, message;
  } bad[] = {
      {"export --out " + out, "exactly one of --checkpoint"},
      {"export --checkpoint " + checkpoint + " --backbone " + backbone + " --out " + out,
       "exactly one of --checkpoint"},
      {"export --backbone " + backbone + " --out " + backbone, "is the file being exported"},
      {"export --backbone /nonexistent.pt --out " + out, "no such file"},
      {"export --backbone " + backbone + " --out /nonexistent/dir/x.safetensors",
       "cannot write '/nonexistent/dir/x.safetensors'"},
      {small("bad1", "--init-backbone /nonexistent.safetensors"), "no such file"},
      {small("bad2", "--init-backbone " + (dir_ / "junk.safetensors").string()),
       "does not fit in the file"},
      {small("bad3", "--arch resnet18 --init-backbone " + out),
       "no 'conv1.weight' under any prefix"},
      {small("bad4", "--width 16 --init-backbone " + out),
       "stage1.0.weight has shape [8, 1, 3, 3], the model's is [16, 1, 3, 3]"},
  };
  for (const auto& c : bad) {
    const Result b = run(c.args);
    EXPECT_EQ(b.code, 1) << c.args;
    EXPECT_NE(b.err.find(c.message), std::string::npos) << c.args << "\n" << b.err;
  }
  for (const char* exp : {"bad1", "bad2", "bad3", "bad4"}) {
    EXPECT_FALSE(fs::exists(dir_ / exp / "checkpoint.pt")) << exp;
  }
}

// ---------------------------------------------------------------------------------------------
// report

TEST_F(CliTrain, ReportRendersInHeadlessChromium) {
  vicreg::testing::write_idx_dataset(dir_ / "data", 50, 16, 2, "t10k");
  ASSERT_EQ(run(small("rep", "--eval-every 1 --progress none")).code, 0);
  const fs::path exp = dir_ / "rep";
  ASSERT_EQ(run("eval --threads 1 --protocol knn --checkpoint " + (exp / "checkpoint.pt").string() +
                " --json " + (exp / "knn.json").string())
                .code,
            0);
  Result r = run("report --threads 1 --exp-dir " + exp.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("10 charts"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("50 points in the embedding map"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 kNN points"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 evaluation results"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("10 neighbour rows"), std::string::npos) << r.out;
  const fs::path html = exp / "report.html";
  ASSERT_TRUE(fs::exists(html));
  EXPECT_EQ(slurp(html).find("src=\"http"), std::string::npos);

  r = run("report --exp-dir " + (dir_ / "data").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("holds no metrics.jsonl"), std::string::npos) << r.err;

  // Two runs side by side: another seed.
  ASSERT_EQ(run(small("rep2", "--eval-every 1 --seed 3 --progress none")).code, 0);
  const fs::path exp2 = dir_ / "rep2";
  r = run("report --exp-dir " + exp.string() + " --exp-dir " + exp2.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("2 runs side by side, 6 charts, 1 evaluation results"), std::string::npos)
      << r.out;
  const fs::path compare = dir_ / "compare.html";
  const std::string page = slurp(compare);
  for (const fs::path& run_dir : {exp, exp2}) {
    EXPECT_NE(page.find("data-series=\"" + run_dir.string() + "\""), std::string::npos) << page;
  }
  r = run("report --exp-dir " + exp.string() + " --exp-dir " + (dir_ / "data").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("holds no metrics.jsonl"), std::string::npos) << r.err;

  const std::string chromium = VICREG_CHROMIUM;
  if (chromium.empty()) GTEST_SKIP() << "chromium not installed (scripts/setup.sh installs it)";
  const std::string browser = "timeout 120 " + chromium +
                              " --headless --no-sandbox --disable-gpu --hide-scrollbars "
                              "--user-data-dir=" +
                              (dir_ / "chromium").string() + " ";
  // The DOM after layout: the page's render check has counted what each chart drew.
  r = shell(browser + "--dump-dom file://" + html.string());
  ASSERT_EQ(r.code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("rendered: ([^<]*)"))) << r.out.substr(0, 500);
  const std::string rendered = m[1].str();
  for (const char* expected : {"chart-loss=1", "chart-terms=3", "chart-lr=1", "chart-std=2",
                               "chart-rankme=2", "chart-knn=2", "chart-online-probe=2",
                               "chart-std-hist=30", "chart-embedding-map=50", "images=90"}) {
    EXPECT_NE((" " + rendered + " ").find(std::string(" ") + expected + " "), std::string::npos)
        << expected << " not in: " << rendered;
  }
  for (const char* series : {"loss", "invariance", "variance", "covariance", "top-1"}) {
    EXPECT_NE(r.out.find(std::string("data-series=\"") + series + "\""), std::string::npos);
  }
  // A screenshot that is not blank: ink on most of the page, and the charts' line colour.
  const fs::path png = dir_ / "shot.png";
  r = shell(browser + "--window-size=1200,1600 --screenshot=" + png.string() + " file://" +
            html.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const cv::Mat shot = cv::imread(png.string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(shot.empty());
  int64_t ink = 0, blue = 0;
  for (int y = 0; y < shot.rows; ++y) {
    for (int x = 0; x < shot.cols; ++x) {
      const cv::Vec3b p = shot.at<cv::Vec3b>(y, x);  // BGR
      if (p[0] < 200 || p[1] < 200 || p[2] < 200) ++ink;
      if (std::abs(p[0] - 0xa7) < 25 && std::abs(p[1] - 0x79) < 25 && std::abs(p[2] - 0x4e) < 25) {
        ++blue;
      }
    }
  }
  EXPECT_GT(ink, static_cast<int64_t>(shot.total() / 50)) << "the screenshot is nearly blank";
  EXPECT_GT(blue, 500) << "no series drawn in the series colour #4e79a7";
  // The comparison page draws both runs in each of its charts.
  r = shell(browser + "--dump-dom file://" + compare.string());
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("rendered: ([^<]*)"))) << r.out.substr(0, 500);
  for (const char* expected : {"compare-loss=2", "compare-knn=2", "compare-online-probe=2",
                               "compare-std=2", "compare-rankme=2", "compare-throughput=2"}) {
    EXPECT_NE((" " + m[1].str() + " ").find(std::string(" ") + expected + " "), std::string::npos)
        << expected << " not in: " << m[1].str();
  }
}

// ---------------------------------------------------------------------------------------------
// distributed training (several processes on loopback, Gloo)

std::vector<double> losses(const fs::path& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

class CliDistributed : public CliTrain {
 protected:
  /// torchrun's variables for rank `rank` of `world` on loopback, as a shell prefix.
  static std::string env(int rank, int world, int port) {
    return "RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
           " WORLD_SIZE=" + std::to_string(world) +
           " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " ";
  }
  /// Starts `command` (environment assignments first, as `env` takes them) in the background
  /// with stderr to `err`; returns its pid.
  static pid_t spawn(const std::string& command, const fs::path& err) {
    return spawn_shell("env " + command + " 2>" + err.string() + " >/dev/null");
  }
  /// Waits for `pid` at most `seconds`; the exit code, or -1 (killed then) on a timeout.
  static int wait_for(pid_t pid, double seconds) {
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
      }
      usleep(20000);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  /// Starts `world` processes of `vicreg <args>` by hand with torchrun's variables, stderr to
  /// rankR.err; their pids in rank order.
  std::vector<pid_t> start_ranks(int world, const std::string& args) {
    const int port = vicreg::testing::free_port();
    std::vector<pid_t> pids;
    for (int r = 0; r < world; ++r) {
      pids.push_back(spawn(env(r, world, port) + VICREG_CLI + " " + args,
                           dir_ / ("rank" + std::to_string(r) + ".err")));
    }
    return pids;
  }
  /// start_ranks(), then the exit codes in rank order.
  std::vector<int> run_ranks(int world, const std::string& args) {
    std::vector<int> codes;
    for (pid_t pid : start_ranks(world, args)) codes.push_back(wait_for(pid, 120));
    return codes;
  }
};

TEST_F(CliDistributed, TwoProcessesTrainLikeOneAndResumeWithAnyCount) {
  // One process, 4 steps then 6: the reference. In fp32 (recorded, so the resumed runs keep it):
  // bf16 rounds the two halves of a batch differently from the whole.
  Result r = run(small("one", "--max-steps 4 --log-every 1 --progress plain --precision fp32"));
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(run(small("one", "--max-steps 6 --log-every 1")).code, 0);
  const std::vector<double> one = losses(dir_ / "one" / "metrics.jsonl");
  ASSERT_EQ(one.size(), 6u);

  // Two processes through torchrun (python3-torch's), as docs/interop.md says to launch them.
  const std::string torchrun = VICREG_TORCHRUN;
  // The memory format left to auto: rank 0 times both and every rank takes its choice.
  const std::string two = small(
      "two", "--max-steps 4 --log-every 1 --progress plain --precision fp32 --channels-last auto");
  if (!torchrun.empty()) {
    // --no_python: torch 1.13's spelling (Debian 12), which later versions accept too;
    // --redirects 2 --tee 2: Debian 12's torchrun crashes without them (docs/interop.md).
    r = shell(torchrun +
              " --no_python --redirects 2 --tee 2 --nproc_per_node=2 --master_addr=127.0.0.1 "
              "--master_port=" +
              std::to_string(vicreg::testing::free_port()) + " " + VICREG_CLI + " " + two);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("2 processes (gloo), global batch 16 = 2 x 8, BatchNorm synchronised"),
              std::string::npos)
        << r.err;
  } else {
    const auto codes = run_ranks(2, two);
    ASSERT_EQ(codes, (std::vector<int>{0, 0}))
        << slurp(dir_ / "rank0.err") << slurp(dir_ / "rank1.err");
    r.err = slurp(dir_ / "rank0.err");
  }
  EXPECT_NE(r.err.find(" ms a step against "), std::string::npos) << r.err;
  // Rank 0 alone wrote the metrics: one line per step, the losses of the one-process run.
  std::vector<double> got = losses(dir_ / "two" / "metrics.jsonl");
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], one[i], 1e-4 * one[i]) << "step " << i + 1;
  ASSERT_TRUE(fs::exists(dir_ / "two" / "checkpoint.pt"));

  // The 2-process checkpoint resumes in one process ...
  r = run(small("two", "--max-steps 5 --log-every 1 --progress plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step 4"), std::string::npos) << r.err;
  // ... and that one again in two, started by hand with torchrun's variables.
  const auto codes = run_ranks(2, small("two", "--max-steps 6 --log-every 1"));
  ASSERT_EQ(codes, (std::vector<int>{0, 0}))
      << slurp(dir_ / "rank0.err") << slurp(dir_ / "rank1.err");
  got = losses(dir_ / "two" / "metrics.jsonl");
  ASSERT_EQ(got.size(), 6u);
  for (size_t i = 4; i < got.size(); ++i)
    EXPECT_NEAR(got[i], one[i], 1e-4 * one[i]) << "step " << i + 1;
  EXPECT_TRUE(fs::exists(dir_ / "two" / "backbone.pt"));
}

TEST_F(CliDistributed, AKilledRankStopsTheOtherWithItsNumber) {
  const auto pids = start_ranks(2, small("kill", "--epochs 500 --log-every 1 --dist-timeout 60"));
  const pid_t rank0 = pids[0], rank1 = pids[1];
  // Let it train past the first epoch's checkpoint, then kill rank 1 without warning.
  const fs::path checkpoint = dir_ / "kill" / "checkpoint.pt";
  for (int i = 0; i < 1200 && !fs::exists(checkpoint); ++i) usleep(50000);
  ASSERT_TRUE(fs::exists(checkpoint)) << slurp(dir_ / "rank0.err");
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  waitpid(rank1, nullptr, 0);
  const auto t0 = std::chrono::steady_clock::now();
  const int code = wait_for(rank0, 60);  // well within --dist-timeout
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string err = slurp(dir_ / "rank0.err");
  EXPECT_EQ(code, 1) << err;
  EXPECT_LT(took, 30.0) << err;
  EXPECT_NE(err.find("vicreg (rank 0): error: rank 0 of 2:"), std::string::npos) << err;
  EXPECT_NE(err.find("lost rank 1"), std::string::npos) << err;
  EXPECT_NE(err.find("the last checkpoint is kept"), std::string::npos) << err;
  // The checkpoint survived, and the run resumes from it in one process.
  const Result r = run(small("kill", "--epochs 500 --max-steps 1 --progress plain"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step"), std::string::npos) << r.err;
}

TEST_F(CliDistributed, AStopRequestOnOneRankStopsAllAtTheSameStep) {
  const auto pids = start_ranks(2, small("stop", "--epochs 500 --log-every 1 --progress plain"));
  const pid_t rank0 = pids[0], rank1 = pids[1];
  const fs::path metrics = dir_ / "stop" / "metrics.jsonl";
  for (int i = 0; i < 1200 && (!fs::exists(metrics) || fs::file_size(metrics) == 0); ++i) {
    usleep(50000);
  }
  ASSERT_TRUE(fs::exists(metrics)) << slurp(dir_ / "rank0.err");
  ASSERT_EQ(kill(rank1, SIGINT), 0);  // the rank that writes nothing
  EXPECT_EQ(wait_for(rank1, 60), 130) << slurp(dir_ / "rank1.err");
  EXPECT_EQ(wait_for(rank0, 60), 130) << slurp(dir_ / "rank0.err");
  const std::string err = slurp(dir_ / "rank0.err");
  EXPECT_NE(err.find("because another rank was asked to stop; checkpoint saved"), std::string::npos)
      << err;
  // The checkpoint holds the step both stopped at; one process resumes from it.
  const std::vector<double> seen = losses(metrics);
  const Result r = run(small("stop", "--epochs 500 --max-steps 1 --progress plain"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming at step " + std::to_string(seen.size())), std::string::npos)
      << r.err;
}

TEST_F(CliDistributed, BadEnvironmentsFailBeforeAnyWork) {
  const int port = vicreg::testing::free_port();
  const std::string cli = std::string(VICREG_CLI) + " " + small("env", "--dist-timeout 2");
  struct Case {
    std::string command;
    std::string message;
  };
  const Case cases[] = {
      {"WORLD_SIZE=2 RANK=0 " + cli, "MASTER_ADDR is not set"},
      {"WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 " + cli, "MASTER_PORT is not set"},
      {env(2, 2, port) + cli, "RANK=2 is not below WORLD_SIZE=2"},
      {"RANK=0 " + cli, "WORLD_SIZE is not"},
      {env(0, 2, port) + cli + " --batch-size 15", "not divisible by WORLD_SIZE=2"},
      {env(0, 2, port) + cli + " --dist-backend nccl", "--dist-backend nccl"},
      {env(0, 2, port) + cli + " --dist-backend mpi", "unknown --dist-backend 'mpi'"},
      {env(1, 2, port) + cli,
       "cannot reach the rendezvous store at 127.0.0.1:" + std::to_string(port) + " within 2 s"},
      {env(0, 2, port) + cli, "process group did not form within 2 s"},
  };
  for (const Case& c : cases) {
    const auto t0 = std::chrono::steady_clock::now();
    const Result r = shell(c.command);
    EXPECT_EQ(r.code, 1) << c.command;
    EXPECT_NE(r.err.find(c.message), std::string::npos)
        << c.command << ": expected '" << c.message << "' in stderr:\n"
        << r.err;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 20.0)
        << c.command;
  }
  EXPECT_FALSE(fs::exists(dir_ / "env" / "metrics.jsonl"));
}

}  // namespace
