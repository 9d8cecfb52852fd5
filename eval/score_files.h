// Reading the public annotation and result formats, with errors that name the file and the entry, and
// scoring them: the engine behind `owl2 score`.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/caption_metrics.h"
#include "eval/vqa_accuracy.h"

namespace owl2::eval {

// Raw (untokenized) captions of a COCO caption annotation file ({images, annotations:[{image_id, caption}]})
// and a results file ([{image_id, caption}]). The evaluated images are those of `images` (or, without that
// list, of the annotations), in file order; each needs at least one reference and exactly one result.
struct CaptionFiles {
  std::vector<int64_t> image_ids;
  CaptionSet raw;
};
CaptionFiles load_caption_files(const std::string& refs_path, const std::string& preds_path);

// PTB-tokenizes raw captions in the order and batches of COCOEvalCap (see coco_tokenize_batch).
CaptionSet tokenize_captions(const CaptionSet& raw);

// VQA annotations: the official format ({annotations:[{question_id, answers:[{answer, ...}], question_type,
// answer_type}]}) or TextVQA's ({data:[{question_id, answers:[str]}]}); results: [{question_id, answer}].
// VizWiz's list [{image, answers:[{answer, answer_confidence}]}] with results [{image, answer}] is keyed by
// image name (question_id = position). The two sets of ids must be equal. predictions[i] answers questions[i].
struct VqaFiles {
  std::vector<VqaQuestion> questions;
  std::vector<std::string> predictions;
};
VqaFiles load_vqa_files(const std::string& refs_path, const std::string& preds_path);

// Metric names: cider, bleu, rouge_l, captions (all three), vqa, vqa_official, textvqa, and the benchmark
// scores pope (refs: question file), mme (preds: results directory; refs unused), mmbench (refs: TSV) and
// scienceqa (refs: problems.json); see eval/bench_files.h for their formats.
// The names come from the dispatch table in score_files.cpp, one row per metric, in its order.
const std::vector<std::string>& score_metric_names();
// Whether `metric` reads a references file: every metric but mme (and, so the CLI asks for one, unknown names).
bool score_metric_needs_refs(const std::string& metric);

// Scores the files and returns the JSON that `owl2 score` prints. Throws std::invalid_argument for an
// unknown metric or a malformed file (the message names the file and the entry).
nlohmann::ordered_json score_files(const std::string& metric, const std::string& refs_path,
                                   const std::string& preds_path);

}  // namespace owl2::eval
