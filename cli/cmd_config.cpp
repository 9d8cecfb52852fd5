// `owl2 config show|check FILE [--set key=value ...]`: print or validate a resolved run config.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "trainers/config.h"

namespace owl2::cli {
namespace {

void add_config_commands(CLI::App& app, Action& run) {
  auto* config = app.add_subcommand("config", "Resolve, print and validate run configs");
  config->require_subcommand(1);

  struct Args {
    std::string file;
    std::vector<std::string> sets;
  };
  auto args = std::make_shared<Args>();

  auto* show = config->add_subcommand("show", "Print the resolved config (includes, overrides and defaults applied)");
  auto* check = config->add_subcommand("check", "Validate a config; exit 0 if it is valid, 2 otherwise");
  for (auto* sub : {show, check}) {
    sub->add_option("file", args->file, "YAML config file")->required();
    sub->add_option("--set", args->sets, "Override a key: --set optim.lr=2e-5 (repeatable)");
  }
  show->callback([&run, args] {
    run = [args] {
      std::cout << to_yaml(load_config(args->file, args->sets));
      return 0;
    };
  });
  check->callback([&run, args] {
    run = [args] {
      load_config(args->file, args->sets);
      std::cout << args->file << ": ok\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_config_commands);

}  // namespace owl2::cli
