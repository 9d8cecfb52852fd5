// `owl2 score --metric NAME --refs FILE --preds FILE`: standalone scorers on the public annotation and
// result formats; prints the metric(s) as JSON on stdout (docs/eval.md).
#include <CLI/CLI.hpp>

#include <iostream>
#include <stdexcept>

#include "cli/commands.h"
#include "eval/score_files.h"

namespace owl2::cli {
namespace {

void add_score_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string metric, refs, preds;
  };
  auto args = std::make_shared<Args>();
  auto* score = app.add_subcommand("score", "Score predictions against references (captions: PTB tokenization, "
                                            "BLEU/ROUGE-L/CIDEr-D; VQA accuracy variants)");
  std::string metrics;
  for (const auto& name : eval::score_metric_names()) metrics += (metrics.empty() ? "" : " | ") + name;
  score->add_option("--metric", args->metric, metrics)->required();
  score->add_option("--refs", args->refs,
                    "COCO caption annotations, VQA / TextVQA annotations, POPE questions, MMBench TSV or "
                    "ScienceQA problems.json, GQA questions, SEED-Bench.json, video_qa [{question_id, answer}] (not used by mme)");
  score->add_option("--preds", args->preds,
                    "results: [{image_id, caption}], [{question_id, answer}], JSON lines, or the MME results "
                    "directory")
      ->required();
  score->callback([&run, args] {
    run = [args] {
      if (args->refs.empty() && eval::score_metric_needs_refs(args->metric))
        throw std::invalid_argument("owl2 score --metric " + args->metric + " needs --refs FILE");
      std::cout << eval::score_files(args->metric, args->refs, args->preds).dump(2) << "\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_score_commands);

}  // namespace owl2::cli
