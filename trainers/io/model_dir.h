// A saved model directory (a run's final/ folder, or what `owl2 import` / `owl2 init` write): config.yaml, the
// weights in owl2's format and tokenizer.model, which config.yaml names relatively (data.tokenizer:
// tokenizer.model) so that the folder can be moved or shared. Generation, evaluation, chat and export all open
// models through here; loading reads nothing outside the folder unless the caller allows it.
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "owl2/model/model.h"
#include "trainers/config.h"

namespace owl2 {

// "fp32" | "bf16" -> the dtype generation, chat and evaluation run the model in (`--dtype`); throws
// std::invalid_argument naming the option and the accepted values otherwise.
torch::Dtype parse_inference_dtype(const std::string& name);

// The file name of a model folder's tokenizer, and what its config.yaml records as data.tokenizer.
inline constexpr const char* kModelDirTokenizer = "tokenizer.model";

struct LoadedModel {
  RunConfig cfg;  // DIR/config.yaml; data.tokenizer holds the path of the tokenizer that was loaded
  MPLUGOwl2ForCausalLM model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;
};

struct ModelDirOptions {
  std::string tokenizer;                  // a SentencePiece model to use instead of the folder's (any path)
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat32;   // the floating-point parameters and buffers are cast to it after loading
  bool allow_external_tokenizer = false;  // data.tokenizer may name a file outside the folder
  std::string adapter;                    // a LoRA adapter directory (PEFT layout) applied unmerged after loading
};

// DIR/config.yaml, parsed. Throws std::invalid_argument when DIR has no config.yaml, or when the config includes
// a file outside DIR, naming the line (owl2 writes resolved configs without `include:`).
RunConfig read_model_dir_config(const std::string& dir);

// Reads DIR/config.yaml (read_model_dir_config), builds the model, loads the weights, moves it to `device`, casts
// its floating-point tensors to `dtype` and switches it to eval mode. With options.adapter, the adapter's LoRA
// layers are added and its saved modules loaded before the move and cast (owl2/io/lora_files.h).
// The tokenizer is options.tokenizer if given, else model_dir_tokenizer().
LoadedModel load_model_dir(const std::string& dir, const ModelDirOptions& options = {});

// The tokenizer file that DIR/config.yaml names in data.tokenizer (`configured`): a relative path is resolved
// against DIR. Throws std::invalid_argument naming the config file and the key when it is empty, when the file
// does not exist, or when it lies outside DIR (absolute paths written by older versions, "../" paths) unless
// allow_external; the message says how to fix the folder.
std::string model_dir_tokenizer(const std::string& dir, const std::string& configured, bool allow_external);

// Copies `tokenizer` into DIR as tokenizer.model (nothing to do when it is that file already) and returns what
// the folder's config.yaml records as data.tokenizer (kModelDirTokenizer). Throws naming both paths.
std::string copy_tokenizer_into(const std::string& tokenizer, const std::string& dir);

}  // namespace owl2
