// `owl2 score` for POPE, MME, MMBench and ScienceQA on small hand-made files in their public formats
// (tests/fixtures/eval/bench, written by scripts/make_eval_golden.py), and the errors for malformed ones.
#include <catch2/catch.hpp>

#include "eval/bench_files.h"
#include "tests/eval_helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_eval_bench_files {

using Catch::Matchers::Contains;
using owl2::test::run_owl2;
using owl2::test::source_path;
using owl2::test::write_temp;

namespace {
std::string bench(const std::string& name) { return source_path("tests/fixtures/eval/bench/" + name); }

nlohmann::json score_ok(const std::string& args) {
  const auto r = run_owl2("score " + args);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  return nlohmann::json::parse(r.out);
}
}  // namespace

TEST_CASE("owl2 score --metric pope matches answers to questions by id", "[eval][pope][cli]") {
  // labels yes yes yes no no no; answers Yes, "Yes, there is.", No, Yes, "There is no cat.", "not at all".
  const auto out = score_ok("--metric pope --refs " + bench("pope_questions.jsonl") + " --preds " +
                            bench("pope_answers.jsonl"));
  CHECK(out["questions"] == 6);
  CHECK(out["tp"] == 2);
  CHECK(out["fn"] == 1);
  CHECK(out["fp"] == 1);
  CHECK(out["tn"] == 2);
  CHECK(out["accuracy"].get<double>() == Approx(4.0 / 6));
  CHECK(out["f1"].get<double>() == Approx(2.0 / 3));
  CHECK(out["yes_ratio"].get<double>() == Approx(0.5));

  const auto missing = write_temp("pope_missing.jsonl", "{\"question_id\": 1, \"text\": \"Yes\"}\n");
  auto r = run_owl2("score --metric pope --refs " + bench("pope_questions.jsonl") + " --preds " + missing);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("pope_missing.jsonl: no answer for question_id 2"));
  const auto dup = write_temp("pope_dup.jsonl", "{\"question_id\": 1, \"text\": \"Yes\"}\n\n{\"question_id\": 1, \"text\": \"No\"}\n");
  r = run_owl2("score --metric pope --refs " + bench("pope_questions.jsonl") + " --preds " + dup);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("pope_dup.jsonl: line 3: duplicate question_id 1 (first at line 1)"));
  const auto bad = write_temp("pope_bad.jsonl", "{\"question_id\": 1, \"label\": \"maybe\"}\n");
  r = run_owl2("score --metric pope --refs " + bad + " --preds " + dup);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("pope_bad.jsonl: line 1: label 'maybe' is not yes/no"));
}

TEST_CASE("owl2 score --metric mme reads the official results directory", "[eval][mme][cli]") {
  // existence: acc 3/4 + acc+ 1/2 -> 125; code_reasoning: both right -> 200. The first lines end in CRLF.
  const auto out = score_ok("--metric mme --preds " + bench("mme"));
  CHECK(out["perception"].get<double>() == Approx(125.0));
  CHECK(out["cognition"].get<double>() == Approx(200.0));
  CHECK(out["tasks"]["existence"]["acc_plus"].get<double>() == Approx(0.5));
  CHECK(out["tasks"]["code_reasoning"]["questions"] == 2);

  namespace fs = std::filesystem;
  const auto dir = fs::path(write_temp("mme_bad/placeholder", "")).parent_path();
  write_temp("mme_bad/color.txt", "1.jpg\tIs it red?\tYes\n");
  auto r = run_owl2("score --metric mme --preds " + dir.string());
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("color.txt: line 1: expected 4 tab-separated columns"));
  write_temp("mme_bad/color.txt", "1.jpg\tIs it red?\tYes\tYes\n");
  r = run_owl2("score --metric mme --preds " + dir.string());
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("task 'color': 1 questions, expected two per image"));
  r = run_owl2("score --metric mme --preds " + source_path("tests/fixtures/eval"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("no MME task files"));
}

TEST_CASE("owl2 score --metric mmbench runs the circular evaluation on the TSV", "[eval][mmbench][cli]") {
  // q0: three rotated copies all right -> hit; q1: a copy that cannot be matched -> unresolved;
  // q2: wrong -> miss. The q1 question has quotes and a tab inside a quoted field.
  const auto out = score_ok("--metric mmbench --refs " + bench("mmbench.tsv") + " --preds " +
                            bench("mmbench_preds.jsonl"));
  CHECK(out["questions"] == 3);
  CHECK(out["hits"] == 1);
  CHECK(out["accuracy"].get<double>() == Approx(1.0 / 3));
  CHECK(out["unresolved"] == 1);
  CHECK(out["unresolved_questions"] == nlohmann::json::array({1}));
  CHECK(out["per_category"]["ocr"].get<double>() == Approx(0.5));
  CHECK(out["per_l2_category"]["reasoning"].get<double>() == 0.0);

  const auto preds = write_temp("mmb_preds.json", R"([{"index":0,"prediction":"A"}])");
  auto r = run_owl2("score --metric mmbench --refs " + bench("mmbench.tsv") + " --preds " + preds);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("mmb_preds.json: no prediction for index 1000000"));
  const auto tsv = write_temp("mmb.tsv", "index\tA\tB\tanswer\n7\tx\ty\tF\n");
  r = run_owl2("score --metric mmbench --refs " + tsv + " --preds " + preds);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("mmb.tsv: row 2 (index 7): answer 'F' is not a letter A-E"));
  const auto extra = write_temp("mmb_extra.json", R"([{"index":7,"prediction":"A"},{"index":8,"prediction":"A"}])");
  r = run_owl2("score --metric mmbench --refs " + write_temp("mmb2.tsv", "index\tA\tB\tanswer\n7\tx\ty\tA\n") +
               " --preds " + extra);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("mmb_extra.json: index 8 is not in"));
}

TEST_CASE("owl2 score --metric scienceqa reports all and IMG accuracy", "[eval][scienceqa][cli]") {
  // 1: "B" right (image); 2: "The answer is A." right (no image); 3: "A" wrong (image); 4: "C" beyond 2 choices.
  const auto out = score_ok("--metric scienceqa --refs " + bench("scienceqa_problems.json") + " --preds " +
                            bench("scienceqa_preds.jsonl"));
  CHECK(out["questions"] == 4);
  CHECK(out["accuracy"].get<double>() == Approx(50.0));
  CHECK(out["img_questions"] == 3);
  CHECK(out["img_accuracy"].get<double>() == Approx(100.0 / 3));
  const auto preds = write_temp("sqa.jsonl", "{\"question_id\": \"99\", \"text\": \"A\"}\n");
  const auto r = run_owl2("score --metric scienceqa --refs " + bench("scienceqa_problems.json") + " --preds " + preds);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("sqa.jsonl: question_id 99 is not in"));
  const auto no_refs = run_owl2("score --metric scienceqa --preds " + preds);
  CHECK(no_refs.rc == 2);
  CHECK_THAT(no_refs.out, Contains("--metric scienceqa needs --refs FILE"));
}

TEST_CASE("owl2 score --metric gqa: exact match over balanced questions after rstrip('.') and lower-case",
          "[eval][gqa][cli]") {
  // 1 "Yes." -> "yes" right (binary); 2 "The table" wrong (open); 3 "left" right (open); 4 unbalanced, ignored.
  const auto out = score_ok("--metric gqa --refs " + bench("gqa_questions.json") + " --preds " + bench("gqa_preds.json"));
  CHECK(out["questions"] == 3);
  CHECK(out["accuracy"].get<double>() == Approx(2.0 / 3));
  CHECK(out["binary"].get<double>() == Approx(1.0));
  CHECK(out["open"].get<double>() == Approx(0.5));
  const auto r = run_owl2("score --metric gqa --refs " + bench("gqa_questions.json") + " --preds " +
                          write_temp("gqa_short.json", R"([{"questionId":"1","prediction":"yes"}])"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("gqa_short.json: no prediction for questionId 2"));
}

TEST_CASE("owl2 score --metric seed: exact string match per question type", "[eval][seed][cli]") {
  // 101 "A" right; 102 "B." wrong (no stripping); 103 "C" right; 104 (video) has no prediction.
  const auto out = score_ok("--metric seed --refs " + bench("seed.json") + " --preds " + bench("seed_preds.jsonl"));
  CHECK(out["questions"] == 3);
  CHECK(out["missing"] == 1);
  CHECK(out["accuracy"].get<double>() == Approx(2.0 / 3));
  CHECK(out["image"].get<double>() == Approx(2.0 / 3));
  CHECK(out["per_type"]["Scene Understanding"].get<double>() == Approx(0.5));
  CHECK(out["per_type"]["Instance Identity"].get<double>() == Approx(1.0));
  const auto r = run_owl2("score --metric seed --refs " + bench("seed.json") + " --preds " +
                          write_temp("seed_bad.jsonl", "{\"question_id\": [1], \"prediction\": \"A\"}\n"));
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("seed_bad.jsonl: line 1: 'question_id' must be an integer or a string, found array [1]"));
}

}  // namespace owl2_test_eval_bench_files
