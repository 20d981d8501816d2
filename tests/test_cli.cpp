// The vicreg CLI, run as a user runs it: exit codes, output, files, and every rejected argument.
#include "temp_dir.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Result {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class Cli : public vicreg::testing::TempDirTest {
 protected:
  /// Runs `vicreg <args>` with one thread (tests run in parallel), capturing both streams.
  Result run(const std::string& args) {
    const fs::path err = dir_ / "stderr.txt";
    const std::string cmd =
        std::string(VICREG_CLI) + " " + args + " 2>" + err.string();
    Result r;
    FILE* pipe = popen(cmd.c_str(), "r");
    EXPECT_NE(pipe, nullptr);
    std::array<char, 4096> buf{};
    size_t got = 0;
    while ((got = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), got);
    const int status = pclose(pipe);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = slurp(err);
    return r;
  }

};

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
  const Result r = run("bench-loss --threads 1 --shapes 16x96,96x16 --min-time 0 --preset paper "
                       "--json " + json.string());
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
                                     "--no-reference --dtype ") + dtype);
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
        << c.args << ": expected '" << c.message << "' in stderr:\n" << r.err;
  }
  if (!torch::cuda::is_available()) {
    const Result r = run("bench-loss --device cuda --shapes 4x4");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("no CUDA device"), std::string::npos) << r.err;
  }
}

}  // namespace
