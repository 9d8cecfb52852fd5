// Benchmark answer parsing and scoring on small hand-made fixtures with known answers: MME, POPE, MMBench
// circular evaluation, ScienceQA, GQA, multiple-choice letters and MMMU (eval_metrics.md §2).
#include <catch2/catch.hpp>

#include "eval/benchmarks.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_eval_benchmarks {

using Catch::Matchers::Contains;
using namespace owl2::eval;

TEST_CASE("MME answer parsing: exact yes/no, then the first four characters", "[eval][mme]") {
  CHECK(mme_parse_answer("Yes") == "yes");
  CHECK(mme_parse_answer("NO") == "no");
  CHECK(mme_parse_answer("Yes, there is a dog.") == "yes");
  CHECK(mme_parse_answer("No, it is not.") == "no");
  CHECK(mme_parse_answer("none") == "no");
  CHECK(mme_parse_answer("not really") == "no");
  CHECK(mme_parse_answer("I think yes") == "other");  // "yes" is past the first 4 characters
  CHECK(mme_parse_answer("snow") == "no");            // "no" inside "snow"
  CHECK(mme_parse_answer("") == "other");
}

TEST_CASE("MME acc, acc+ and the perception / cognition sums", "[eval][mme]") {
  // existence: 2 images; image 1 both right, image 2 one right -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125.
  // count: 1 image, both wrong ("other" counts as wrong) -> 0.
  // code_reasoning: 1 image, both right -> 200 (cognition).
  const std::vector<MmeRecord> recs = {
      {"existence", "1.jpg", "Is there a dog?", "Yes", "Yes"},
      {"existence", "1.jpg", "Is there a cat?", "No", "No"},
      {"existence", "2.jpg", "Is there a car?", "Yes", "yes, there is"},
      {"existence", "2.jpg", "Is there a bus?", "No", "Yes"},
      {"count", "3.jpg", "Are there two dogs?", "Yes", "maybe"},
      {"count", "3.jpg", "Are there three dogs?", "No", "Yes"},
      {"code_reasoning", "4.png", "Does it print 3?", "Yes", "Yes"},
      {"code_reasoning", "4.png", "Does it print 4?", "No", "No"},
  };
  const auto rep = mme_score(recs);
  CHECK(rep.tasks.at("existence").acc == Approx(0.75));
  CHECK(rep.tasks.at("existence").acc_plus == Approx(0.5));
  CHECK(rep.tasks.at("existence").score == Approx(125.0));
  CHECK(rep.tasks.at("count").score == 0.0);
  CHECK(rep.tasks.at("code_reasoning").score == Approx(200.0));
  CHECK(rep.perception == Approx(125.0));
  CHECK(rep.cognition == Approx(200.0));
  CHECK(mme_perception_tasks().size() == 10);
  CHECK(mme_cognition_tasks().size() == 4);
}

TEST_CASE("MME rejects unpaired questions, bad ground truth and unknown tasks", "[eval][mme]") {
  CHECK_THROWS_WITH(mme_score({{"color", "1.jpg", "q", "Yes", "Yes"}}), Contains("task 'color': 1 questions"));
  CHECK_THROWS_WITH(mme_score({{"color", "1.jpg", "q", "Yes", "Yes"}, {"color", "2.jpg", "q", "No", "No"}}),
                    Contains("pair images '1.jpg' and '2.jpg'"));
  CHECK_THROWS_WITH(mme_score({{"color", "1.jpg", "q", "Maybe", "Yes"}, {"color", "1.jpg", "q", "No", "No"}}),
                    Contains("ground truth 'Maybe' is not Yes/No"));
  CHECK_THROWS_WITH(mme_score({{"colour", "1.jpg", "q", "Yes", "Yes"}}), Contains("unknown task 'colour'"));
}

TEST_CASE("POPE parsing: first sentence, no/not/No tokens, everything else is yes", "[eval][pope]") {
  CHECK(pope_parse_answer("No") == "no");
  CHECK(pope_parse_answer("No, there is not.") == "no");
  CHECK(pope_parse_answer("There is not a dog") == "no");
  CHECK(pope_parse_answer("Yes. No doubt.") == "yes");  // only the first sentence counts
  CHECK(pope_parse_answer("NO") == "yes");              // only "No", "no" and "not" are negative
  CHECK(pope_parse_answer("no,") == "no");              // commas are removed first
  CHECK(pope_parse_answer("") == "yes");
  CHECK(pope_parse_answer("I cannot tell") == "yes");
}

TEST_CASE("POPE accuracy, precision, recall, F1 and yes-ratio", "[eval][pope]") {
  // labels yes yes yes no no no; predictions yes, yes, no, yes, no, no -> TP 2, FN 1, FP 1, TN 2.
  const auto r = pope_score({"yes", "yes", "yes", "no", "no", "no"},
                            {"Yes", "Yes, there is.", "No", "Yes", "There is no cat.", "not at all"});
  CHECK(r.tp == 2);
  CHECK(r.fn == 1);
  CHECK(r.fp == 1);
  CHECK(r.tn == 2);
  CHECK(r.accuracy == Approx(4.0 / 6));
  CHECK(r.precision == Approx(2.0 / 3));
  CHECK(r.recall == Approx(2.0 / 3));
  CHECK(r.f1 == Approx(2.0 / 3));
  CHECK(r.yes_ratio == Approx(0.5));
  CHECK_THROWS_WITH(pope_score({"maybe"}, {"yes"}), Contains("entry 0: label 'maybe' is not yes/no"));
}

TEST_CASE("MMBench option matching follows the 2023 evaluator", "[eval][mmbench]") {
  CHECK(mmbench_infer_option("B") == 'B');
  CHECK(mmbench_infer_option("The answer is C") == 'C');
  CHECK(mmbench_infer_option("B.") == 'B');
  CHECK(mmbench_infer_option("(D) a tree") == 'D');
  CHECK(mmbench_infer_option("answer:A") == std::nullopt);  // ":A" must be a whole token
  CHECK(mmbench_infer_option("Answer :A") == 'A');
  CHECK(mmbench_infer_option("A B") == std::nullopt);  // two letters
  // "A" in a longer answer may be the article: the bare pass stops, and no wrapped letter is found.
  CHECK(mmbench_infer_option("A dog is on the sofa") == std::nullopt);
  CHECK(mmbench_infer_option("A cat, B.") == 'A');     // 3 tokens: "A" counts as the letter
  CHECK(mmbench_infer_option("A cat, or B.") == 'B');  // 4 tokens: the wrapped pass finds "B."
  CHECK(mmbench_infer_option("E") == 'E');
  const std::map<char, std::string> opts = {{'A', "red"}, {'B', "blue"}, {'C', "green"}};
  CHECK(mmbench_infer_text("It is Blue.", opts) == 'B');
  CHECK(mmbench_infer_text("red and blue", opts) == std::nullopt);
  CHECK(mmbench_infer("The color is green", opts) == 'C');
}

TEST_CASE("MMBench circular evaluation over rotated copies", "[eval][mmbench]") {
  auto row = [](int64_t index, char answer, std::string pred, std::string cat = "ocr") {
    MmbenchRow r;
    r.index = index;
    r.options = {{'A', "cat"}, {'B', "dog"}, {'C', "bird"}};
    r.answer = answer;
    r.prediction = std::move(pred);
    r.category = cat;
    r.l2_category = "perception";
    return r;
  };
  const std::vector<MmbenchRow> rows = {
      // q1: all three copies right -> hit.
      row(1, 'A', "A"), row(1000001, 'C', "C."), row(2000001, 'B', "(B)"),
      // q2: main right, one copy wrong -> miss.
      row(2, 'B', "B"), row(1000002, 'A', "C"), row(2000002, 'C', "C"),
      // q3: one copy unmatchable ("I am not sure") and the rest right -> unresolved, counted wrong.
      row(3, 'A', "A", "logic"), row(1000003, 'B', "I am not sure", "logic"), row(2000003, 'C', "C", "logic"),
      // q4: unmatchable first, then a wrong one -> plain miss, not unresolved.
      row(4, 'A', "hmm", "logic"), row(1000004, 'B', "C", "logic"),
      // q5: a single row with an answer matched through the option text.
      row(5, 'B', "it is a dog", "logic"),
  };
  const auto rep = mmbench_circular(rows);
  CHECK(rep.questions == 5);
  CHECK(rep.hits == 2);
  CHECK(rep.accuracy == Approx(0.4));
  CHECK(rep.unresolved == 1);
  CHECK(rep.unresolved_questions == std::vector<int64_t>{3});
  CHECK(rep.hit.at(1) == 1);
  CHECK(rep.hit.at(2) == 0);
  CHECK(rep.hit.at(5) == 1);
  CHECK(rep.per_category.at("ocr") == Approx(0.5));
  CHECK(rep.per_category.at("logic") == Approx(1.0 / 3));
  CHECK(rep.per_l2_category.at("perception") == Approx(0.4));
  CHECK_THROWS_WITH(mmbench_circular({row(1, 'A', "A"), row(1, 'A', "A")}), Contains("duplicate index 1"));
  CHECK_THROWS_WITH(mmbench_circular({row(1000009, 'A', "A")}), Contains("copy of question 9, which has no main row"));
}

TEST_CASE("ScienceQA letter extraction", "[eval][scienceqa]") {
  CHECK(scienceqa_parse_answer("B", 3) == 1);
  CHECK(scienceqa_parse_answer("C. a lion", 3) == 2);
  CHECK(scienceqa_parse_answer("The answer is A.", 2) == 0);
  CHECK(scienceqa_parse_answer("The answer is B because", 2) == 1);  // the '.' of the pattern is any character
  CHECK(scienceqa_parse_answer("The answer is B", 2) == -1);         // nothing after the letter
  CHECK(scienceqa_parse_answer("The answer is A. The answer is B.", 2) == -1);  // two matches
  CHECK(scienceqa_parse_answer("D", 3) == -1);                                   // beyond the choices
  CHECK(scienceqa_parse_answer("b", 3) == -1);
  CHECK(scienceqa_parse_answer("B.", 3) == -1);  // "B." is neither a bare letter nor "B. ..."
}

TEST_CASE("GQA post-processing and multiple-choice letters", "[eval][mc]") {
  CHECK(gqa_postprocess("Yes..") == "yes");
  CHECK(gqa_postprocess("The Table.") == "the table");
  CHECK(parse_choice_letter("B", 4) == 'B');
  CHECK(parse_choice_letter(" (C) blue", 4) == 'C');
  CHECK(parse_choice_letter("D. none", 4) == 'D');
  CHECK(parse_choice_letter("The answer is B.", 4) == 'B');
  CHECK(parse_choice_letter("Answer: (A)", 4) == 'A');
  CHECK(parse_choice_letter("E", 4) == std::nullopt);
  CHECK(parse_choice_letter("Because", 4) == std::nullopt);
}

TEST_CASE("MMMU multiple-choice parsing", "[eval][mmmu]") {
  const std::map<char, std::string> opts = {{'A', "mitochondria"}, {'B', "nucleus"}, {'C', "ribosome"}, {'D', "cell wall"}};
  CHECK(mmmu_parse_multi_choice("B", opts) == 'B');
  CHECK(mmmu_parse_multi_choice("(C)", opts) == 'C');
  CHECK(mmmu_parse_multi_choice("The answer is D.", opts) == 'D');
  CHECK(mmmu_parse_multi_choice("A or maybe C", opts) == 'C');  // the last occurrence wins
  CHECK(mmmu_parse_multi_choice("(A) is wrong, (B) is right", opts) == 'B');
  CHECK(mmmu_parse_multi_choice("I think that it is the nucleus of the cell", opts) == 'B');
  CHECK(mmmu_parse_multi_choice("nucleus", opts) == std::nullopt);  // texts only for answers over 5 words
}

}  // namespace owl2_test_eval_benchmarks
