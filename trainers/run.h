// `owl2 train`: one driver for both stages (they differ only in YAML). It builds the model, data and
// Trainer from a RunConfig, resumes from the run directory's newest valid checkpoint, runs the loop with
// logging, periodic checkpoints and evaluation, and writes the final weights (docs/training.md, "How a run is put
// together").
#pragma once
#include <string>

#include "trainers/config.h"

namespace owl2 {

struct RunOptions {
  std::string config_text;   // the resolved config, saved with the run and every checkpoint
  bool resume = true;        // continue from out_dir's newest valid checkpoint when there is one
  int64_t stop_after = 0;    // > 0: leave after this many steps of this invocation (tests, time boxes)
};

// Returns the process exit code (0). Throws on errors.
int run_training(const RunConfig& cfg, const RunOptions& options);

}  // namespace owl2
