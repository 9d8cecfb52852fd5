// The flags that open a model folder (trainers/io/model_dir.h) and pick its dtype, shared by generate, chat and eval.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "trainers/io/model_dir.h"

namespace owl2::cli {

struct ModelDirArgs {
  std::string dir, tokenizer, adapter, dtype = "fp32";
  bool allow_external_tokenizer = false;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--model", dir, "Model directory (a run's final/ folder, or what import / init write)")->required();
    cmd->add_option("--tokenizer", tokenizer, "SentencePiece model (default: the folder's tokenizer.model)");
    cmd->add_flag("--allow-external-tokenizer", allow_external_tokenizer,
                  "Let the folder's config.yaml name a data.tokenizer outside the folder (older folders)");
    cmd->add_option("--adapter", adapter,
                    "LoRA adapter directory (PEFT layout: adapter_config.json + adapter_model.safetensors) applied "
                    "on top of --model without merging")
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--dtype", dtype,
                    "fp32 (default) or bf16: the dtype the model's weights and activations are cast to after loading; "
                    "softmax and log-probs stay fp32 (docs/generation.md)");
  }

  LoadedModel load(const torch::Device& device) const {
    ModelDirOptions o;
    o.dtype = parse_inference_dtype(dtype);  // before the weights are read: a bad value fails fast
    o.tokenizer = tokenizer;
    o.device = device;
    o.allow_external_tokenizer = allow_external_tokenizer;
    o.adapter = adapter;
    return load_model_dir(dir, o);
  }
};

}  // namespace owl2::cli
