// vicreg: the command-line front end. Dispatches to the subcommands (commands.h, one file each)
// and turns every error into a message and an exit code: 1 for every error (a bad command line
// included), 130 (or 128 + the signal) for a stop request, which the train command returns.
#include "commands.h"

#include "vicreg/error.h"

#include <c10/util/Exception.h>
#include <torch/version.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace {

/// The exit code of a failed command; the message goes to stderr.
int report_error() {
  const char* who = vicreg::cli::who().c_str();
  try {
    throw;
  } catch (const vicreg::DivergedError& e) {
    std::fprintf(stderr,
                 "%s: error: %s; the last good checkpoint is kept (lower --base-lr, or check the "
                 "data)\n",
                 who, e.what());
  } catch (const vicreg::DistributedError& e) {
    std::fprintf(stderr,
                 "%s: error: %s; the last checkpoint is kept (run the same command again to "
                 "resume, with any number of processes)\n",
                 who, e.what());
  } catch (const c10::Error& e) {  // a TORCH_CHECK inside LibTorch
    std::fprintf(stderr, "%s: error: %s\n", who, e.what_without_backtrace());
  } catch (const std::exception& e) {  // vicreg::Error and everything else
    std::fprintf(stderr, "%s: error: %s\n", who, e.what());
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vicreg: self-supervised representation learning with VICReg (Bardes, Ponce & "
      "LeCun, 2022), on LibTorch"};
  app.require_subcommand(1);
  app.set_version_flag(
      "--version", std::string("vicreg ") + VICREG_VERSION + " (LibTorch " + TORCH_VERSION + ")");
  const std::vector<std::string> args(argv, argv + argc);
  std::vector<std::pair<CLI::App*, vicreg::cli::Run>> table;
  try {
    for (const vicreg::cli::Command& c : vicreg::cli::commands()) {
      CLI::App* sub = app.add_subcommand(c.name, c.description);
      table.emplace_back(sub, c.setup(*sub, args));
    }
  } catch (...) {
    return report_error();  // a --config file that cannot be read
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;  // --help and --version exit 0; a bad command line 1
  }
  try {
    for (auto& [sub, run] : table) {
      if (sub->parsed()) return run();
    }
  } catch (...) {
    return report_error();
  }
  return 0;
}
