// The vicreg CLI run as a user runs it (the binary VICREG_CLI), for the CLI tests.
#pragma once

#include "support/temp_dir.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace vicreg::testing {

struct Result {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class Cli : public TempDirTest {
 protected:
  /// Runs `vicreg <args>` with one thread (tests run in parallel), capturing both streams.
  Result run(const std::string& args) { return shell(std::string(VICREG_CLI) + " " + args); }
  /// Starts a shell command line in the background (exec'd by /bin/sh); returns its PID, -1 when
  /// fork fails.
  static pid_t spawn_shell(const std::string& command) {
    const std::string cmd = "exec " + command;
    const pid_t pid = fork();
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    return pid;
  }
  /// Runs a shell command line, capturing both streams.
  Result shell(const std::string& command) {
    const std::filesystem::path err = dir_ / "stderr.txt";
    const std::string cmd = command + " 2>" + err.string();
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

}  // namespace vicreg::testing
