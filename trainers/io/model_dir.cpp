#include "trainers/io/model_dir.h"

#include <filesystem>
#include <stdexcept>

#include "owl2/io/weights.h"

namespace owl2 {

LoadedModel load_model_dir(const std::string& dir, const std::string& tokenizer, const torch::Device& device) {
  const auto config = (std::filesystem::path(dir) / "config.yaml").string();
  if (!std::filesystem::is_regular_file(config)) {
    throw std::invalid_argument(dir + ": not a model directory (no config.yaml; use a run's final/ folder)");
  }
  LoadedModel l;
  l.cfg = load_config(config);
  l.model = MPLUGOwl2ForCausalLM(l.cfg.model);
  LoadOptions load;
  load.convert_dtype = true;  // weights may be stored in bf16 / fp16 (owl2 import/export --dtype); the model is fp32
  load_model_weights(l.model, dir, load);
  l.model->to(device);
  l.model->eval();
  const std::string tok = tokenizer.empty() ? l.cfg.data.tokenizer : tokenizer;
  if (tok.empty()) throw std::invalid_argument(config + ": data.tokenizer is empty; pass --tokenizer");
  l.tokenizer = std::make_unique<Tokenizer>(tok);
  return l;
}

}  // namespace owl2
