// `owl2 data synth|verify`: write the synthetic dataset, or scan a dataset and count bad input.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "data/synth.h"

namespace owl2::cli {
namespace {

void add_data_commands(CLI::App& app, Action& run) {
  auto* data = app.add_subcommand("data", "Datasets: write the synthetic demo set, verify datasets");
  data->require_subcommand(1);

  auto synth_opts = std::make_shared<data::SynthOptions>();
  auto* synth = data->add_subcommand("synth", "Write the deterministic synthetic shapes dataset");
  synth->add_option("--out", synth_opts->out_dir, "Output directory")->required();
  synth->add_option("--seed", synth_opts->seed, "Seed (same seed -> byte-identical files)");
  synth->add_option("--image-size", synth_opts->image_size, "Image side in pixels")->check(CLI::Range(16, 1024));
  synth->add_option("--train", synth_opts->train_images, "Training images");
  synth->add_option("--heldout", synth_opts->heldout_images, "Held-out images");
  synth->add_option("--train-text", synth_opts->train_text, "Text-only training samples");
  synth->add_option("--heldout-text", synth_opts->heldout_text, "Text-only held-out questions");
  synth->add_option("--shard-size", synth_opts->shard_size, "Pairs per pretraining tar shard (<= 10000)");
  synth->callback([&run, synth_opts] {
    run = [synth_opts] {
      const auto s = data::write_synth_dataset(*synth_opts);
      std::cout << "wrote " << synth_opts->out_dir << ": " << s.pretrain_pairs << " pretraining pairs in "
                << s.pretrain_shards << " shards, " << s.instruct_samples << " instruction samples, "
                << s.heldout_questions << " held-out questions (" << s.files.size() << " files)\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_data_commands);

}  // namespace owl2::cli
