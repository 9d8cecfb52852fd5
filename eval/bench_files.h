// Readers for the public files of the yes/no and multiple-choice benchmarks, feeding eval/benchmarks.h.
// Errors name the file and the line or entry (std::invalid_argument).
#pragma once
#include <map>
#include <string>

#include "eval/benchmarks.h"

namespace owl2::eval {

// POPE: the question file (JSON lines {question_id, image, text, label}) and the answers, either JSON lines
// {question_id, text} (LLaVA's answer files) or a JSON array [{question_id, answer}]. Every question needs
// exactly one answer.
PopeReport score_pope_files(const std::string& questions_path, const std::string& answers_path);

// MME: a directory of <task>.txt files in the official eval_tool format, one question per line:
// "image<TAB>question<TAB>Yes|No<TAB>model answer". Files of other names are ignored.
MmeReport score_mme_dir(const std::string& dir);

// MMBench: the benchmark TSV (columns index, question, A..D, answer, category, l2-category, split, ...;
// quoted fields as pandas writes them) and predictions as JSON lines or a JSON array of {index, prediction}.
// Every TSV row needs a prediction.
MmbenchReport score_mmbench_files(const std::string& tsv_path, const std::string& preds_path);

// ScienceQA: problems.json ({pid: {choices, answer, image, ...}}) and predictions as JSON lines or an array
// of {question_id: pid, text}. Accuracy over the predicted problems, and over those with an image (IMG).
struct ScienceqaReport {
  size_t total = 0, correct = 0, img_total = 0, img_correct = 0;
  double accuracy = 0, img_accuracy = 0;  // in [0, 1]
};
ScienceqaReport score_scienceqa_files(const std::string& problems_path, const std::string& preds_path);

// GQA: the official questions file ({qid: {answer, isBalanced, types:{structural}, ...}}) and predictions
// [{questionId, prediction}] (JSON array or lines). Predictions go through gqa_postprocess (a no-op on
// already converted files); the score is an exact match over the balanced questions, each of which needs a
// prediction. "open" = structural type "query", "binary" = the rest.
struct GqaReport {
  size_t questions = 0, correct = 0;
  double accuracy = 0, binary = 0, open = 0;  // in [0, 1]
};
GqaReport score_gqa_files(const std::string& questions_path, const std::string& preds_path);

// Open-ended video QA (MSRVTT-QA, MSVD-QA, TGIF-QA FrameQA): refs [{question_id, answer}] (what `owl2 eval`
// writes from the public files) and predictions [{question_id, prediction}] (array or lines). Exact match after the
// VQA answer normalization (punctuation, then digits and articles, lower case), every question needs a prediction.
struct VideoQaReport {
  size_t questions = 0, correct = 0;
  double accuracy = 0;  // in [0, 1]
};
VideoQaReport score_video_qa_files(const std::string& refs_path, const std::string& preds_path);
// The normalized form both sides are compared in.
std::string video_qa_normalize(const std::string& answer);

// SEED-Bench: SEED-Bench.json ({question_type:{name: id}, questions:[{question_id, answer, question_type_id,
// data_type}]}) and predictions [{question_id, prediction}] (array or lines). Exact string match. Questions
// without a prediction (usually the video ones) are counted in `missing` and left out.
struct SeedReport {
  size_t questions = 0, correct = 0, missing = 0;
  double accuracy = 0, image = 0, video = 0;  // in [0, 1]
  std::map<std::string, double> per_type;
};
SeedReport score_seed_files(const std::string& benchmark_path, const std::string& preds_path);

// Q-Bench (§2.8, offline approximation): llvisionqa_{dev,test}.json ([{img_path, question, candidates,
// correct_ans, type, concern}]) and predictions {id: position in the list, prediction}. The letter comes from
// MMBench's offline matching (mmbench_infer); unmatched answers count as wrong and are reported.
struct QbenchReport {
  size_t questions = 0, correct = 0, unresolved = 0;
  double accuracy = 0;  // in [0, 1]
  std::map<std::string, double> per_type, per_concern;
};
QbenchReport score_qbench_files(const std::string& questions_path, const std::string& preds_path);

// MMMU: the question file (JSON lines {id, question_type "multiple-choice"|"open", options, answer, ...};
// docs/eval.md) and predictions {id, prediction}. Multiple choice: mmmu_parse_multi_choice; an unparsable
// answer counts as wrong and is reported (the official script draws a random letter). Open: mmmu_parse_open +
// mmmu_eval_open. Accuracy overall and per subject (the id's middle part, "validation_Art_12" -> "Art").
struct MmmuReport {
  size_t questions = 0, correct = 0, unparsed = 0;
  double accuracy = 0;  // in [0, 1]
  std::map<std::string, double> per_subject;
};
MmmuReport score_mmmu_files(const std::string& questions_path, const std::string& preds_path);

// MMLU-style multiple choice (§4): the Hendrycks layout (refs = the data folder with test/<subject>_test.csv,
// rows question, A, B, C, D, answer) and predictions {question_id: "<subject>/<row>", prediction}. The letter
// comes from parse_choice_letter. micro = over questions (Hendrycks), macro = mean of subjects (OpenCompass).
struct MmluReport {
  size_t questions = 0, correct = 0;
  double micro = 0, macro = 0;  // in [0, 1]
  std::map<std::string, double> per_subject;
};
MmluReport score_mmlu_files(const std::string& data_dir, const std::string& preds_path);

// A tab-separated file with pandas-style quoting: the header and the rows, each with its 1-based line number.
struct TsvFile {
  std::vector<std::string> header;
  std::vector<std::pair<size_t, std::vector<std::string>>> rows;
};
TsvFile read_tsv(const std::string& path);

}  // namespace owl2::eval
