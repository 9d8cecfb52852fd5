// The flags that open a model folder (trainers/io/model_dir.h), shared by generate, chat and eval.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "trainers/io/model_dir.h"

namespace owl2::cli {

struct ModelDirArgs {
  std::string dir, tokenizer;
  bool allow_external_tokenizer = false;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--model", dir, "Model directory (a run's final/ folder, or what import / init write)")->required();
    cmd->add_option("--tokenizer", tokenizer, "SentencePiece model (default: the folder's tokenizer.model)");
    cmd->add_flag("--allow-external-tokenizer", allow_external_tokenizer,
                  "Let the folder's config.yaml name a data.tokenizer outside the folder (older folders)");
  }

  LoadedModel load(const torch::Device& device) const {
    ModelDirOptions o;
    o.tokenizer = tokenizer;
    o.device = device;
    o.allow_external_tokenizer = allow_external_tokenizer;
    return load_model_dir(dir, o);
  }
};

}  // namespace owl2::cli
