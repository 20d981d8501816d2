// vicreg: the command-line front end. Dispatches to the subcommands (commands.h, one file each)
// and turns every error into a message and an exit code: 1 for every error (a bad command line
// included), 130 (or 128 + the signal) for a stop request, which the train command returns.
#include "commands.h"

#include "vicreg/error.h"
#include "vicreg/run/config.h"
#include "vicreg/version.h"

#include <c10/util/Exception.h>
#include <torch/version.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

/// --help's formatter: a --X/--no-X flag is listed as "--X, --no-X" (its help says the default)
/// instead of CLI11's "--X, --no-X{false}".
class Formatter : public CLI::Formatter {
 public:
  std::string make_option_name(const CLI::Option* opt, bool positional) const override {
    std::string name = CLI::Formatter::make_option_name(opt, positional);
    for (const char* value : {"{false}", "{true}"}) {
      for (size_t at; (at = name.find(value)) != std::string::npos;) {
        name.erase(at, std::char_traits<char>::length(value));
      }
    }
    return name;
  }
};

/// Edit distance (insertions, deletions, substitutions and swaps of neighbours).
size_t distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min(
          {d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

/// "unknown flag --batch-szie (did you mean --batch-size?)" for each flag of `args` that
/// `cmd` does not have; empty when every flag is known.
std::string unknown_flags(const CLI::App& cmd, const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& arg : args) {
    if (arg.rfind("--", 0) != 0 || arg == "--") continue;
    const std::string name = arg.substr(2, arg.find('=') - 2);
    if (cmd.get_option_no_throw("--" + name) != nullptr) continue;
    std::string best;
    size_t best_d = std::string::npos;
    for (const CLI::Option* opt : cmd.get_options()) {
      for (const std::string& n : opt->get_lnames()) {
        const size_t dn = distance(name, n);
        if (dn < best_d) {
          best_d = dn;
          best = n;
        }
      }
    }
    out += std::string(out.empty() ? "" : "; ") + "unknown flag --" + name;
    if (!best.empty() && best_d <= std::max<size_t>(2, name.size() / 3)) {
      out += " (did you mean --" + best + "?)";
    }
  }
  return out;
}

/// The exit code of a failed command; the message goes to stderr.
int report_error() {
  const char* who = vicreg::cli::who().c_str();
  try {
    throw;
  } catch (const vicreg::DivergedError& e) {
    std::fprintf(stderr,
                 "%s: error: %s; the last good checkpoint is kept (lower --base-lr, or check the "
                 "data)\n",
                 who, vicreg::with_flag_names(e).c_str());
  } catch (const vicreg::DistributedError& e) {
    std::fprintf(stderr,
                 "%s: error: %s; the last checkpoint is kept (run the same command again to "
                 "resume, with any number of processes)\n",
                 who, vicreg::with_flag_names(e).c_str());
  } catch (const vicreg::Error& e) {  // settings named by key: said as flags here
    std::fprintf(stderr, "%s: error: %s\n", who, vicreg::with_flag_names(e).c_str());
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
  app.formatter(std::make_shared<Formatter>());
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vicreg ") + vicreg::version() + " (LibTorch " +
                                        TORCH_VERSION + ")");
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
  } catch (const CLI::ExtrasError& e) {
    // Unknown flags are named one by one, with the closest known flag.
    const std::vector<CLI::App*> subs = app.get_subcommands();
    const CLI::App& cmd = subs.empty() ? app : *subs.front();
    const std::string unknown =
        unknown_flags(cmd, std::vector<std::string>(args.begin() + 1, args.end()));
    if (unknown.empty()) return app.exit(e) == 0 ? 0 : 1;
    std::fprintf(stderr, "vicreg: error: %s; `vicreg %s--help` lists the flags\n", unknown.c_str(),
                 subs.empty() ? "" : (subs.front()->get_name() + " ").c_str());
    return 1;
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
