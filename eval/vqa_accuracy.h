// VQA accuracy: the answer normalization of the official VQA evaluation and of the EvalAI / TextVQA (m4c)
// processor, and min(#matches/3, 1) averaged over the leave-one-out subsets (eval_metrics.md §1.3-1.5).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace owl2::eval {

// processPunctuation: the 21 punctuation characters removed or replaced by a space, then periods not
// followed by a digit removed (at most 32, as the reference's re.sub count argument implies).
std::string vqa_process_punctuation(const std::string& text);
// processDigitArticle: lower-case, number words 0-10 to digits, drop a/an/the, 120 contractions.
std::string vqa_process_digit_article(const std::string& text);
// The EvalAI answer processor used by the TextVQA (m4c) evaluator and the test-dev upload converters.
std::string evalai_process_answer(const std::string& text);

// Which reference behaviour to reproduce (see docs/eval.md for the differences):
//   Owl2     "vqa":          mPLUG-Owl2 / LAVIS copy: prediction always normalized, GTs punctuation-only when they differ
//   Official "vqa_official": GT-Vision-Lab HEAD: both normalized only when the GTs differ
//   TextVqa  "textvqa":      m4c evaluator: EvalAI processor on both sides, exactly 10 GTs
enum class VqaVariant { Owl2, Official, TextVqa };
VqaVariant vqa_variant_from_name(const std::string& name);  // throws std::invalid_argument
const char* vqa_variant_name(VqaVariant v);

// One ground-truth answer record. `record_key` is the rest of the record (answer_id, confidence); the
// reference leaves out every record equal to the current one as a whole, not only the same index.
struct GtAnswer {
  std::string answer;
  std::string record_key;
};

struct VqaQuestion {
  int64_t question_id = 0;
  std::vector<GtAnswer> answers;
  std::string question_type, answer_type;  // may be empty
};

// Accuracy of one prediction in [0, 1].
double vqa_question_accuracy(const std::string& prediction, const std::vector<GtAnswer>& answers, VqaVariant v);

struct VqaReport {
  double overall = 0;  // 100 * mean accuracy (not rounded; the reference prints round(x, 2))
  size_t questions = 0;
  std::map<std::string, double> per_answer_type, per_question_type;  // 100 * mean
  std::vector<double> per_question;                                  // in [0, 1], in question order
};

// predictions[i] answers questions[i].
VqaReport vqa_accuracy(const std::vector<VqaQuestion>& questions, const std::vector<std::string>& predictions,
                       VqaVariant v);

}  // namespace owl2::eval
