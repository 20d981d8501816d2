// The subcommands of the vicreg CLI, git-style: one file per subcommand holds its flags and its
// run function; main.cpp only dispatches through the table and turns errors into exit codes.
// The library owns every default and every piece of work; a command parses flags, calls the
// library and prints.
#pragma once

#include "vicreg/error.h"
#include "vicreg/names.h"
#include "vicreg/run/config.h"

#include <CLI/CLI.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace vicreg::cli {

/// The function that runs a subcommand once its flags are parsed; returns the exit code.
using Run = std::function<int()>;

struct Command {
  const char* name;
  const char* description;
  /// Adds the subcommand's flags to `cmd` (which CLI11 owns); `argv` is the whole command line
  /// (train reads --config before parsing, so that flags override the file).
  Run (*setup)(CLI::App& cmd, const std::vector<std::string>& argv);
};

/// All subcommands, in the order --help lists them.
const std::vector<Command>& commands();

/// "vicreg" or, with several processes, "vicreg (rank R)": the prefix of every message.
std::string& who();

/// parse_name<E>(text), failing as a command-line error (CLI11's ValidationError, exit code
/// and "Run with --help") with the name table's message: "unknown --arch 'vgg': use ...".
template <class E>
E parse_choice(const std::string& text) {
  try {
    return parse_name<E>(text);
  } catch (const UsageError& e) {
    throw CLI::ValidationError(e.what());
  }
}

/// "a,b,c".
std::string join_choices(const std::vector<std::string>& names);

/// A flag that takes one of the names of enum E into `field`, listing them in --help.
template <class E>
CLI::Option* add_choice_flag(CLI::App& cmd, const std::string& flag, E& field,
                             const std::string& help) {
  return cmd
      .add_option_function<std::string>(
          flag, [&field](const std::string& v) { field = parse_choice<E>(v); }, help)
      ->type_name("{" + join_choices(names_of<E>()) + "}")
      ->default_str(to_string(field));
}

/// A flag that takes one of the names of enum E into an optional `field` (unset: not given).
template <class E>
CLI::Option* add_optional_choice(CLI::App& cmd, const std::string& flag, std::optional<E>& field,
                                 const std::string& help) {
  return cmd
      .add_option_function<std::string>(
          flag, [&field](const std::string& v) { field = parse_choice<E>(v); }, help)
      ->type_name("{" + join_choices(names_of<E>()) + "}");
}

/// Adds one flag per setting of `config` (for_each_setting) to `cmd`: "--base-lr" for base_lr,
/// "--X/--no-X" for booleans, the enum's names for choices. Flags given twice take the last.
void add_setting_flags(CLI::App& cmd, TrainConfig& config);

/// The config of `vicreg train ARGS...` (args without the program and subcommand names): the
/// default run, the --config file over it, the flags over that. For tests of the flag mapping.
/// Throws CLI::ParseError for bad flags, UsageError/FormatError for a bad --config.
TrainConfig parse_train_config(const std::vector<std::string>& args);

/// The --config file named on a command line, read over `config` (no --config: unchanged); with
/// `keys`, the keys of the settings it names are appended.
TrainConfig config_from_argv(const std::vector<std::string>& argv, TrainConfig config = {},
                             std::vector<std::string>* keys = nullptr);

/// Writes `doc` to `path` (--json). Throws FormatError naming the file.
void write_json(const std::string& path, const nlohmann::json& doc);

}  // namespace vicreg::cli
