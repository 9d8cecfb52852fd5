// VQA accuracy: the normalization examples and the variant test vectors of eval_metrics.md §1.3-1.5, the
// leave-one-out rule, `owl2 score` on the official formats and its errors for malformed files.
#include <catch2/catch.hpp>

#include "eval/vqa_accuracy.h"
#include "tests/eval_helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_eval_vqa {

using Catch::Matchers::Contains;
using owl2::eval::evalai_process_answer;
using owl2::eval::GtAnswer;
using owl2::eval::vqa_process_digit_article;
using owl2::eval::vqa_process_punctuation;
using owl2::eval::vqa_question_accuracy;
using owl2::eval::VqaVariant;
using owl2::test::run_owl2;
using owl2::test::source_path;
using owl2::test::write_temp;

namespace {

// Ten records with distinct answer ids, as the official files have.
std::vector<GtAnswer> gts(std::initializer_list<std::pair<const char*, int>> counts) {
  std::vector<GtAnswer> out;
  for (const auto& [text, n] : counts)
    for (int k = 0; k < n; ++k) out.push_back({text, "{\"answer_id\":" + std::to_string(out.size() + 1) + "}"});
  return out;
}

}  // namespace

TEST_CASE("VQA normalization reproduces the spec's table", "[eval][vqa]") {
  struct Row {
    const char *raw, *punct, *digit_article, *m4c;
  };
  const Row rows[] = {
      {"Two", "Two", "2", "2"},
      {"The dog.", "The dog", "dog", "dog"},
      {"1,000", "1000", "1000", "1000"},
      {"3.5", "3.5", "3.5", "3.5"},
      {"dont know", "dont know", "don't know", "don't know"},
      {"a b-c", "a b c", "b c", "b c"},
      {"left - right", "left  right", "left right", "left right"},
      {"t-shirt?", "t shirt ", "t shirt", "t shirt"},
      {"Mr. Smith's car", "Mr Smith's car", "mr smith's car", "mr smith 's car"},
      {"it's 10:30", "it's 10:30", "it's 10:30", "it 's 10:30"},
      {"None of the above", "None of the above", "0 of above", "0 of above"},
      {"U.S.A.", "USA", "usa", "usa"},
      {"e.g. cats", "eg cats", "eg cats", "eg cats"},
      {"(2)", " 2 ", "2", "2"},
      {"a", "a", "", ""},
  };
  for (const auto& r : rows) {
    INFO(r.raw);
    const std::string p = vqa_process_punctuation(r.raw);
    CHECK(p == r.punct);
    CHECK(vqa_process_digit_article(p) == r.digit_article);
    CHECK(evalai_process_answer(r.raw) == r.m4c);
  }
}

TEST_CASE("VQA normalization quirks: original-text tests, 32 periods, case-sensitive contractions", "[eval][vqa]") {
  // A digit-comma-digit anywhere makes every punctuation character vanish instead of becoming a space.
  CHECK(vqa_process_punctuation("1,000 a-b") == "1000 ab");
  // Only periods not followed by a digit go, and at most 32 of them.
  CHECK(vqa_process_punctuation(std::string(40, '.')) == std::string(8, '.'));
  CHECK(vqa_process_punctuation("..5") == ".5");
  // "Im" is a key but lower-casing happens first; "somebody'd" maps backwards; "twenty" is not a number word.
  CHECK(vqa_process_digit_article("Im here") == "im here");
  CHECK(vqa_process_digit_article("somebody'd") == "somebodyd");
  CHECK(vqa_process_digit_article("twenty one") == "twenty 1");
  CHECK(vqa_process_digit_article("whats   up\tyall") == "what's up y'all");
}

TEST_CASE("VQA accuracy follows min(#matches/3, 1) over the leave-one-out subsets", "[eval][vqa]") {
  // Closed form: m matching records -> 0, 0.3, 0.6, 0.9, then 1.
  const double expected[] = {0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
  for (int m = 0; m <= 10; ++m) {
    INFO("m = " << m);
    const auto g = gts({{"2", m}, {"3", 10 - m}});
    for (auto v : {VqaVariant::Owl2, VqaVariant::Official, VqaVariant::TextVqa})
      CHECK(vqa_question_accuracy("2", g, v) == Approx(expected[m]));
  }
  // Records equal as a whole (same answer_id too) leave each other out: 10 identical records match 0.
  std::vector<GtAnswer> identical(10, GtAnswer{"yes", "{\"answer_id\":1}"});
  CHECK(vqa_question_accuracy("yes", identical, VqaVariant::Owl2) == 0.0);
  CHECK(vqa_question_accuracy("yes", identical, VqaVariant::TextVqa) == 1.0);  // m4c compares by position
}

TEST_CASE("VQA variants differ where the spec says", "[eval][vqa]") {
  struct Vec {
    const char* pred;
    std::vector<GtAnswer> g;
    double owl2, official, m4c;
  };
  const Vec vecs[] = {
      {"2", gts({{"2", 10}}), 1, 1, 1},
      {"two", gts({{"2", 10}}), 1, 0, 1},
      {"2", gts({{"2", 3}, {"3", 7}}), 0.9, 0.9, 0.9},
      {"2", gts({{"2", 2}, {"3", 8}}), 0.6, 0.6, 0.6},
      {"2", gts({{"2", 1}, {"3", 9}}), 0.3, 0.3, 0.3},
      {"2", gts({{"2", 4}, {"3", 6}}), 1, 1, 1},
      {"the dog", gts({{"dog", 5}, {"the dog", 5}}), 1, 1, 1},
      {"Yes", gts({{"yes", 10}}), 1, 0, 1},
      // (A) never lower-cases the GTs: "Yes" GTs that differ stay capitalized, the prediction does not.
      {"yes", gts({{"Yes", 5}, {"yes.", 5}}), 1, 1, 1},
      {"yes", gts({{"Yes", 9}, {"no", 1}}), 0, 1, 1},
  };
  for (const auto& v : vecs) {
    INFO(v.pred << " vs " << v.g.front().answer << " ...");
    CHECK(vqa_question_accuracy(v.pred, v.g, VqaVariant::Owl2) == Approx(v.owl2));
    CHECK(vqa_question_accuracy(v.pred, v.g, VqaVariant::Official) == Approx(v.official));
    CHECK(vqa_question_accuracy(v.pred, v.g, VqaVariant::TextVqa) == Approx(v.m4c));
  }
  CHECK_THROWS_WITH(vqa_question_accuracy("2", gts({{"2", 9}}), VqaVariant::TextVqa),
                    Contains("exactly 10 answers, got 9"));
  CHECK_THROWS_WITH(owl2::eval::vqa_variant_from_name("gqa"), Contains("unknown VQA metric 'gqa'"));
}

TEST_CASE("owl2 score computes the VQA variants on the official files", "[eval][vqa][cli]") {
  const std::string files = " --refs " + source_path("tests/fixtures/eval/vqa_annotations.json") + " --preds " +
                            source_path("tests/fixtures/eval/vqa_results.json");
  // Per question (yes/no; number; other; other): vqa 1, .9, 1, .3; vqa_official 0, .9, 1, .3.
  auto r = run_owl2("score --metric vqa" + files);
  REQUIRE(r.rc == 0);
  auto out = nlohmann::json::parse(r.out);
  CHECK(out["questions"] == 4);
  CHECK(out["accuracy"].get<double>() == Approx(80.0));
  CHECK(out["per_answer_type"]["yes/no"].get<double>() == Approx(100.0));
  CHECK(out["per_answer_type"]["number"].get<double>() == Approx(90.0));
  CHECK(out["per_answer_type"]["other"].get<double>() == Approx(65.0));
  CHECK(out["per_question_type"]["how many"].get<double>() == Approx(90.0));
  out = nlohmann::json::parse(run_owl2("score --metric vqa_official" + files).out);
  CHECK(out["accuracy"].get<double>() == Approx(55.0));
  CHECK(out["per_answer_type"]["yes/no"].get<double>() == Approx(0.0));
  out = nlohmann::json::parse(run_owl2("score --metric textvqa" + files).out);
  CHECK(out["accuracy"].get<double>() == Approx(80.0));
}

TEST_CASE("owl2 score reads the TextVQA annotation format", "[eval][vqa][cli]") {
  const auto refs = write_temp(
      "textvqa.json",
      R"({"dataset_name":"textvqa","data":[{"question_id":7,"image_id":"x","question":"what brand?","answers":)"
      R"(["Coca Cola","coca cola","coca-cola","coca cola","coke","coca cola","coca cola","cola","coca cola","coca cola"]}]})");
  const auto preds = write_temp("textvqa_preds.json", R"([{"question_id":7,"answer":"Coca Cola"}])");
  const auto r = run_owl2("score --metric textvqa --refs " + refs + " --preds " + preds);
  REQUIRE(r.rc == 0);
  // Normalized GTs: 8 x "coca cola" (the hyphen becomes a space), "coke", "cola" -> 8 matches -> 1.0.
  CHECK(nlohmann::json::parse(r.out)["accuracy"].get<double>() == Approx(100.0));
}

TEST_CASE("owl2 score names the file and the entry of malformed VQA files", "[eval][vqa][cli]") {
  const std::string ann_ok = R"({"annotations":[{"question_id":1,"answers":[{"answer":"a","answer_id":1}]},)"
                             R"({"question_id":2,"answers":[{"answer":"b","answer_id":1}]}]})";
  const auto ann = write_temp("ann.json", ann_ok);
  auto score = [&](const std::string& refs, const std::string& preds_text) {
    return run_owl2("score --metric vqa --refs " + refs + " --preds " + write_temp("res.json", preds_text));
  };
  auto r = score(ann, R"([{"question_id":1,"answer":"a"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("res.json: no answer for question_id 2"));
  r = score(ann, R"([{"question_id":1,"answer":"a"},{"question_id":2,"answer":"b"},{"question_id":2,"answer":"c"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("res.json: entry 2: duplicate question_id 2 (first at entry 1)"));
  r = score(ann, R"([{"question_id":1,"answer":3},{"question_id":2,"answer":"b"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("res.json: entry 0: 'answer' must be a string, found number 3"));
  r = score(ann, R"([{"question_id":1,"answer":"a"},{"answer":"b"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("res.json: entry 1: missing key 'question_id'"));

  const auto dup = write_temp("dup.json", R"({"annotations":[{"question_id":1,"answers":[{"answer":"a"}]},)"
                                          R"({"question_id":1,"answers":[{"answer":"b"}]}]})");
  r = score(dup, R"([{"question_id":1,"answer":"a"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("dup.json: annotations[1]: duplicate question_id 1 (first at index 0)"));
  const auto bad_answer = write_temp("bad_answer.json", R"({"annotations":[{"question_id":1,"answers":[{"text":"a"}]}]})");
  r = score(bad_answer, R"([{"question_id":1,"answer":"a"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("bad_answer.json: annotations[0].answers[0]: missing key 'answer'"));
  const auto nine = write_temp("nine.json", R"({"data":[{"question_id":1,"answers":["a","a","a","a","a","a","a","a","a"]}]})");
  r = run_owl2("score --metric textvqa --refs " + nine + " --preds " +
               write_temp("res9.json", R"([{"question_id":1,"answer":"a"}])"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("nine.json: question_id 1: textvqa accuracy needs exactly 10 answers, got 9"));
  r = run_owl2("score --metric vqa --refs /nonexistent/ann.json --preds " + ann);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("/nonexistent/ann.json: cannot open file"));
}

TEST_CASE("owl2 score reads the VizWiz format keyed by image name", "[eval][vqa][cli]") {
  // Records carry no answer_id: equal records must still leave only themselves out (3 x "unanswerable" -> 0.9).
  const auto refs = write_temp(
      "vizwiz_val.json",
      R"([{"image":"VizWiz_val_00000001.jpg","question":"What is this?","answerable":0,"answer_type":"unanswerable",)"
      R"("answers":[{"answer":"unanswerable","answer_confidence":"yes"},{"answer":"unanswerable","answer_confidence":"yes"},)"
      R"({"answer":"unanswerable","answer_confidence":"yes"},{"answer":"soup","answer_confidence":"maybe"}]},)"
      R"({"image":"VizWiz_val_00000002.jpg","question":"What color?","answerable":1,"answer_type":"other",)"
      R"("answers":[{"answer":"red","answer_confidence":"yes"},{"answer":"red","answer_confidence":"yes"}]}])");
  const auto preds = write_temp("vizwiz_res.json", R"([{"image":"VizWiz_val_00000002.jpg","answer":"Red"},)"
                                                   R"({"image":"VizWiz_val_00000001.jpg","answer":"unanswerable"}])");
  const auto r = run_owl2("score --metric vqa --refs " + refs + " --preds " + preds);
  REQUIRE(r.rc == 0);
  const auto out = nlohmann::json::parse(r.out);
  // Q1: m = 3 of 4 records -> (1*min(1,3/3) + 3*min(1,2/3)) / 4 = (1 + 2) / 4 = 0.75. Q2: m = 2 of 2 -> 1/3 each.
  CHECK(out["per_answer_type"]["unanswerable"].get<double>() == Approx(75.0));
  CHECK(out["per_answer_type"]["other"].get<double>() == Approx(33.33));
  const auto dup = run_owl2("score --metric vqa --refs " + refs + " --preds " +
                            write_temp("vizwiz_dup.json", R"([{"image":"VizWiz_val_00000002.jpg","answer":"a"},)"
                                                          R"({"image":"VizWiz_val_00000002.jpg","answer":"b"}])"));
  CHECK(dup.rc == 2);
  CHECK_THAT(dup.out, Contains("vizwiz_dup.json: entry 1: duplicate image 'VizWiz_val_00000002.jpg' (first at entry 0)"));
}

}  // namespace owl2_test_eval_vqa
