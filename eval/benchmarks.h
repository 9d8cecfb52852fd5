// Answer parsing and scoring of the multiple-choice and yes/no benchmarks (eval_metrics.md §2):
// MME, POPE, MMBench (circular evaluation, offline matching), ScienceQA, GQA, SEED-Bench and MMMU.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace owl2::eval {

// ---- MME (§2.4) ----
// "yes" / "no" / "other": exact yes/no after lower-casing, else "yes" then "no" searched in the first 4 chars.
std::string mme_parse_answer(const std::string& prediction);

struct MmeRecord {
  std::string task, image, question, gt, prediction;  // gt: "Yes" / "No" (any case)
};
struct MmeTaskScore {
  double acc = 0, acc_plus = 0, score = 0;  // acc and acc_plus in [0, 1]; score = 100*acc + 100*acc_plus
  size_t questions = 0, images = 0;
};
struct MmeReport {
  std::map<std::string, MmeTaskScore> tasks;
  double perception = 0, cognition = 0;  // sums over the tasks present (10 and 4 in the full benchmark)
};
const std::vector<std::string>& mme_perception_tasks();
const std::vector<std::string>& mme_cognition_tasks();
// Records of one task pair up in order (the official files list the two questions of an image on
// consecutive lines). Throws std::invalid_argument naming the record for an odd count, a pair of two
// different images, a gt that is not yes/no or an unknown task.
MmeReport mme_score(const std::vector<MmeRecord>& records);

// ---- POPE (§2.3) ----
// First sentence, commas removed, split on ' ': "no" if a token is "No", "not" or "no", otherwise "yes".
std::string pope_parse_answer(const std::string& prediction);
struct PopeReport {
  size_t tp = 0, fp = 0, tn = 0, fn = 0;
  double accuracy = 0, precision = 0, recall = 0, f1 = 0, yes_ratio = 0;  // in [0, 1]; 0 where undefined
};
// labels: "yes" / "no" (throws otherwise); predictions are raw model outputs.
PopeReport pope_score(const std::vector<std::string>& labels, const std::vector<std::string>& predictions);

// ---- MMBench (§2.5) ----
// can_infer_option of the 2023 evaluator: a letter A-E standing alone (or wrapped as "A." "(A)" ":A" ...).
std::optional<char> mmbench_infer_option(const std::string& prediction);
// can_infer_text: exactly one option text (lower-cased) is a substring of the lower-cased prediction.
std::optional<char> mmbench_infer_text(const std::string& prediction, const std::map<char, std::string>& options);
std::optional<char> mmbench_infer(const std::string& prediction, const std::map<char, std::string>& options);

struct MmbenchRow {
  int64_t index = 0;                   // copy n of question q has index q + n * 1,000,000
  std::map<char, std::string> options;  // 'A'.. with the non-empty options only
  char answer = 0;                     // ground-truth letter of this (rotated) copy
  std::string prediction, category, l2_category, split;
};
struct MmbenchReport {
  size_t questions = 0, hits = 0;
  size_t unresolved = 0;  // groups scored 0 only because some copy could not be matched offline
  double accuracy = 0;    // hits / questions
  std::map<std::string, double> per_category, per_l2_category;
  std::map<int64_t, int> hit;                  // main index -> 0/1
  std::vector<int64_t> unresolved_questions;  // main indices
};
// Circular evaluation: a question counts only if every copy is answered correctly; a copy whose answer
// cannot be matched without the LLM fallback makes its group wrong and is reported as unresolved.
// Throws std::invalid_argument for duplicate indices or a copy without its main row.
MmbenchReport mmbench_circular(const std::vector<MmbenchRow>& rows);

// ---- ScienceQA (§2.2) ----
// The answer index from the prediction (letters A-E), or -1 when it cannot be parsed or the letter is
// beyond the number of choices.
int scienceqa_parse_answer(const std::string& prediction, size_t num_choices);

// ---- GQA (§2.1) and SEED-Bench (§2.6) ----
std::string gqa_postprocess(const std::string& prediction);  // rstrip('.') then lower-case

// ---- generic multiple choice (SEED-Bench, Q-Bench, MMLU-style prompts, MMMU) ----
// The first standalone option letter: "B", "B.", "(B)", "B) text", "Answer: B", "The answer is B.".
std::optional<char> parse_choice_letter(const std::string& prediction, size_t num_choices);

// MMMU's multiple-choice parsing (parse_multi_choice_response of the MMMU repository): strip , . ! ? ; : '
// from the ends, then look for "(A)", else " A ", else (for responses of more than 5 words) the option
// texts; with several candidates the last occurrence wins; with none std::nullopt (the official script
// then picks a random option).
std::optional<char> mmmu_parse_multi_choice(const std::string& prediction, const std::map<char, std::string>& options);

// MMMU's open-question parsing (parse_open_response): the tails after "could be ", "so ", "is ", "thus ",
// "therefore ", "final ", "answer ", "result " (and "=" on the last line), the shortest per line, or the whole
// lower-cased response; plus every number in them; each normalized (normalize_str: numbers -> rounded to 2
// decimals, one-character strings -> " x" and "x "). Duplicates removed.
struct MmmuValue {
  bool is_number = false;
  double number = 0;
  std::string text;
  bool operator==(const MmmuValue& o) const {
    return is_number == o.is_number && (is_number ? number == o.number : text == o.text);
  }
};
std::vector<MmmuValue> mmmu_parse_open(const std::string& response);
// normalize_str of one gold answer.
std::vector<MmmuValue> mmmu_normalize(const std::string& answer);
// eval_open: a string prediction is right if it contains a normalized string answer; a number if it equals one.
bool mmmu_eval_open(const std::vector<std::string>& gold, const std::vector<MmmuValue>& parsed);

}  // namespace owl2::eval
