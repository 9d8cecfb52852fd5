// `owl2 train --config FILE [--set key=value ...]`: pretraining and instruction tuning.
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "trainers/config.h"
#include "trainers/run.h"

namespace owl2::cli {
namespace {

void add_train_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    bool no_resume = false;
    int64_t stop_after = 0;
  };
  auto args = std::make_shared<Args>();
  auto* train = app.add_subcommand("train", "Train a model (both stages; they differ only in YAML)");
  train->add_option("--config", args->config, "YAML run config")->required();
  train->add_option("--set", args->sets, "Override a key: --set optim.lr=2e-5 (repeatable)");
  train->add_flag("--no-resume", args->no_resume, "Start fresh even if the run directory has checkpoints");
  train->add_option("--stop-after", args->stop_after, "Leave after this many steps (the run stays resumable)");
  train->callback([&run, args] {
    run = [args] {
      const RunConfig cfg = load_config(args->config, args->sets);
      RunOptions opt;
      opt.config_text = to_yaml(cfg);
      opt.resume = !args->no_resume;
      opt.stop_after = args->stop_after;
      return run_training(cfg, opt);
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_train_commands);

}  // namespace owl2::cli
