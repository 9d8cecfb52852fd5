// A saved model directory (a run's final/ folder, or what `owl2 import` / `owl2 init` write): config.yaml
// plus the weights in owl2's format. Generation, evaluation, chat and export all open models through here.
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "owl2/model/model.h"
#include "trainers/config.h"

namespace owl2 {

struct LoadedModel {
  RunConfig cfg;
  MPLUGOwl2ForCausalLM model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;
};

// Reads DIR/config.yaml, builds the model, loads the weights, moves it to `device` and switches it to eval mode.
// The tokenizer is `tokenizer` if given, else the config's data.tokenizer (an error names the config when both
// are empty).
LoadedModel load_model_dir(const std::string& dir, const std::string& tokenizer = "",
                           const torch::Device& device = torch::kCPU);

}  // namespace owl2
