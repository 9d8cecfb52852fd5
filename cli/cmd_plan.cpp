// `owl2 plan --config FILE --world-size N`: memory per device and FLOPs per step before a run starts.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "owl2/model/lora.h"
#include "owl2/model/model.h"
#include "trainers/config.h"
#include "trainers/plan.h"

namespace owl2::cli {
namespace {

void add_plan_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    PlanInputs in;
  };
  auto args = std::make_shared<Args>();
  auto* plan = app.add_subcommand("plan", "Memory per device and FLOPs per step of a run config (no weights allocated)");
  plan->add_option("--config", args->config, "YAML run config")->required();
  plan->add_option("--set", args->sets, "Override a key (repeatable)");
  plan->add_option("--world-size", args->in.world_size, "Data-parallel ranks")->check(CLI::PositiveNumber);
  plan->add_option("--zero-stage", args->in.zero_stage, "0 none, 1 optimizer state, 2 + gradients, 3 + weights")
      ->check(CLI::Range(0, 3));
  plan->add_option("--text-tokens", args->in.text_tokens, "Text tokens per sample (default: train.max_length in all)");
  plan->add_option("--images", args->in.images_per_sample, "Images per sample")->check(CLI::NonNegativeNumber);
  plan->callback([&run, args] {
    run = [args] {
      const RunConfig cfg = load_config(args->config, args->sets);
      NamedSizes sizes;
      auto shapes = parameter_shapes(cfg.model);
      if (cfg.lora.rank > 0) {
        const auto adapters = lora_parameter_shapes(shapes, cfg.lora);
        shapes.insert(shapes.end(), adapters.begin(), adapters.end());
      }
      for (const auto& p : shapes) sizes.emplace_back(p.name, p.numel());
      std::cout << make_plan(cfg, sizes, args->in).report;
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_plan_commands);

}  // namespace owl2::cli
