// The owl2 executable: subcommands, and the one place where exceptions become exit codes
// (0 success, 2 usage or config error, 1 runtime failure; messages on stderr).
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "trainers/config.h"

int main(int argc, char** argv) {
  CLI::App app{"owl2: train, fine-tune, evaluate and export mPLUG-Owl2 (C++20 / LibTorch)", "owl2"};
  app.set_version_flag("--version", std::string("owl2 ") + OWL2_VERSION);
  app.require_subcommand(1);

  owl2::cli::Action run;
  for (auto add : owl2::cli::command_groups()) add(app, run);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    return run ? run() : 0;
  } catch (const owl2::ConfigError& e) {
    std::cerr << "owl2: config error: " << e.what() << "\n";
    return 2;
  } catch (const std::invalid_argument& e) {
    std::cerr << "owl2: invalid argument: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "owl2: error: " << e.what() << "\n";
    return 1;
  }
}
