// Held-out evaluation of a model on a question file (the synthetic benchmark's heldout.jsonl layout:
// question_id, optional image, prompt, answer, type): batched greedy answers, accuracy per question type,
// multiple-choice accuracy and caption CIDEr-D.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "data/image.h"
#include "data/tokenizer.h"
#include "owl2/infer/lockstep.h"
#include "owl2/model/model.h"

namespace owl2 {

struct HeldoutQuestion {
  int64_t id = 0;
  std::string image;  // path, empty for text-only
  std::string prompt;
  std::string answer;
  std::string type;   // caption | mc | color | shape | position | count | yesno | text | ...
};

// Reads the JSONL file; image paths are relative to its folder. Throws naming the file and line.
std::vector<HeldoutQuestion> read_heldout(const std::string& path);

struct EvalOptions {
  int64_t batch_size = 32;
  int64_t max_new_tokens = 12;
  int64_t limit = 0;  // first N questions; 0 = all
  TemplateKind chat_template = TemplateKind::kMplugOwl2;
  ImageConfig image;
};

struct EvalResult {
  std::map<std::string, double> accuracy;  // per type (exact match after normalization; mc: option letter)
  std::map<std::string, int64_t> count;    // questions per type
  double short_answer_accuracy = 0;        // over color, shape, position, count, yesno
  double caption_cider = 0;                // CIDEr-D x 1 (the coco scale: 1.0 = 100)
  std::vector<std::pair<HeldoutQuestion, std::string>> predictions;
  std::string table() const;
  std::string markdown() const;  // the same rows as a markdown table (TensorBoard's text plugin renders it)
};

// Normalizes a short answer for exact match: lower case, surrounding space and a final period removed.
std::string normalize_answer(const std::string& text);

// options.limit first, then answer_heldout and score_heldout.
EvalResult evaluate_heldout(MPLUGOwl2ForCausalLM& model, const Tokenizer& tokenizer,
                            const std::vector<HeldoutQuestion>& questions, const EvalOptions& options);

// Greedy answers to `questions` in order, options.batch_size at a time (options.limit is not applied). A
// question's answer depends only on the batch it is in, so callers that split the work by whole batches (the
// ranks of a training run) get the answers of one process. With `lockstep` (ZeRO 3: the model's passes are
// collectives) every batch is generated in step with the other ranks (generate_in_lockstep), and the rank runs
// `batches` batches in all, those past its own questions empty, so that every rank makes the same number.
std::vector<std::string> answer_heldout(MPLUGOwl2ForCausalLM& model, const Tokenizer& tokenizer,
                                        const std::vector<HeldoutQuestion>& questions, const EvalOptions& options,
                                        const Lockstep* lockstep = nullptr, int64_t batches = 0);

// Accuracy per type, short-answer accuracy and caption CIDEr-D of (question, prediction) pairs.
EvalResult score_heldout(std::vector<std::pair<HeldoutQuestion, std::string>> predictions);

}  // namespace owl2
