// `owl2 generate` (one prompt, optionally with an image) and `owl2 eval` (a held-out question file) on a saved
// model directory: the final/ folder of a run (model.safetensors and the run's config.yaml).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "data/image.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "owl2/generate.h"
#include "owl2/weights.h"
#include "trainers/config.h"
#include "trainers/evaluate.h"

namespace owl2::cli {
namespace {

struct Loaded {
  RunConfig cfg;
  MPLUGOwl2ForCausalLM model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;
};

Loaded load_model_dir(const std::string& dir, const std::string& tokenizer) {
  const auto config = (std::filesystem::path(dir) / "config.yaml").string();
  if (!std::filesystem::is_regular_file(config)) {
    throw std::invalid_argument(dir + ": not a model directory (no config.yaml; use a run's final/ folder)");
  }
  Loaded l;
  l.cfg = load_config(config);
  l.model = MPLUGOwl2ForCausalLM(l.cfg.model);
  load_model_weights(l.model, dir);
  l.model->eval();
  const std::string tok = tokenizer.empty() ? l.cfg.data.tokenizer : tokenizer;
  if (tok.empty()) throw std::invalid_argument(config + ": data.tokenizer is empty; pass --tokenizer");
  l.tokenizer = std::make_unique<Tokenizer>(tok);
  return l;
}

void add_generate_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string model, tokenizer, image, prompt, heldout, out;
    int64_t max_new_tokens = 64, batch_size = 32, limit = 0;
    std::string mode;
  };
  auto args = std::make_shared<Args>();

  auto* gen = app.add_subcommand("generate", "Answer one prompt (greedy) with a saved model");
  gen->add_option("--model", args->model, "Model directory (a run's final/ folder)")->required();
  gen->add_option("--prompt", args->prompt, "The user's message")->required();
  gen->add_option("--image", args->image, "Image file shown with the prompt");
  gen->add_option("--tokenizer", args->tokenizer, "SentencePiece model (default: the run's data.tokenizer)");
  gen->add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate at most")->check(CLI::PositiveNumber);
  gen->add_option("--image-mode", args->mode, "resize | pad | crop (default: the run's data.image_mode)");
  gen->callback([&run, args] {
    run = [args] {
      auto l = load_model_dir(args->model, args->tokenizer);
      ImageConfig ic;
      ic.size = l.cfg.model.vision.image_size;
      ic.mode = parse_image_mode(args->mode.empty() ? l.cfg.data.image_mode : args->mode);
      const std::string human = args->image.empty() ? args->prompt : std::string(kImagePlaceholder) + "\n" + args->prompt;
      const auto prompt =
          l.tokenizer->encode_with_images(generation_prompt(chat_template(l.cfg.data.chat_template), {{Role::kHuman, human}}, true));
      torch::Tensor images;
      if (!args->image.empty()) images = preprocess_image(load_image(args->image), ic).unsqueeze(0);
      GenerateOptions go;
      go.max_new_tokens = args->max_new_tokens;
      const auto out = greedy_generate(l.model, {prompt}, images, go);
      std::cout << l.tokenizer->decode(out[0]) << "\n";
      return 0;
    };
  });

  auto* ev = app.add_subcommand("eval", "Evaluate a saved model on a held-out question file (JSONL)");
  ev->add_option("--model", args->model, "Model directory (a run's final/ folder)")->required();
  ev->add_option("--heldout", args->heldout, "Questions: question_id, image, prompt, answer, type per line")->required();
  ev->add_option("--tokenizer", args->tokenizer, "SentencePiece model (default: the run's data.tokenizer)");
  ev->add_option("--batch-size", args->batch_size, "Questions per batch (answers do not depend on it)")
      ->check(CLI::PositiveNumber);
  ev->add_option("--limit", args->limit, "First N questions only")->check(CLI::NonNegativeNumber);
  ev->add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate at most")->check(CLI::PositiveNumber);
  ev->add_option("--predictions", args->out, "Write the predictions here (JSONL)");
  ev->callback([&run, args] {
    run = [args] {
      auto l = load_model_dir(args->model, args->tokenizer);
      EvalOptions eo;
      eo.batch_size = args->batch_size;
      eo.limit = args->limit;
      eo.max_new_tokens = args->max_new_tokens;
      eo.chat_template = l.cfg.data.chat_template;
      eo.image.size = l.cfg.model.vision.image_size;
      eo.image.mode = parse_image_mode(l.cfg.data.image_mode);
      const auto r = evaluate_heldout(l.model, *l.tokenizer, read_heldout(args->heldout), eo);
      std::cerr << r.table();
      if (!args->out.empty()) {
        std::ofstream f(args->out);
        if (!f) throw std::runtime_error("cannot write " + args->out);
        for (const auto& [q, p] : r.predictions) {
          f << nlohmann::json{{"question_id", q.id}, {"type", q.type}, {"answer", q.answer}, {"prediction", p}}.dump()
            << "\n";
        }
      }
      nlohmann::json j;
      j["short_answer_accuracy"] = r.short_answer_accuracy;
      j["accuracy"] = r.accuracy;
      j["count"] = r.count;
      j["caption_cider"] = r.caption_cider;
      std::cout << j.dump() << "\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_generate_commands);

}  // namespace owl2::cli
