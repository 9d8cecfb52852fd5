// `owl2 eval`: a saved model directory (trainers/model_dir.h) on a held-out question file.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "data/image.h"
#include "trainers/evaluate.h"
#include "trainers/model_dir.h"

namespace owl2::cli {
namespace {

void add_eval_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string model, tokenizer, heldout, out;
    int64_t max_new_tokens = 64, batch_size = 32, limit = 0;
  };
  auto args = std::make_shared<Args>();

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
      auto l = owl2::load_model_dir(args->model, args->tokenizer);
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

OWL2_REGISTER_COMMANDS(add_eval_commands);

}  // namespace owl2::cli
