// Caption scoring against pycocoevalcap: PTB tokenization, BLEU-1..4, ROUGE-L, CIDEr-D, `owl2 score`
// on the COCO formats, and the error messages for malformed files. Golden values: scripts/make_eval_golden.py.
#include <catch2/catch.hpp>

#include "eval/caption_metrics.h"
#include "eval/ptb_tokenizer.h"
#include "eval/score_files.h"
#include "tests/eval_helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_eval_captions {

using Catch::Matchers::Contains;
using owl2::eval::CaptionSet;
using owl2::test::load_fixture;
using owl2::test::run_owl2;
using owl2::test::source_path;
using owl2::test::write_temp;

namespace {

constexpr double kTol = 1e-6;

// Scores a caption set and compares every corpus and per-image number with the pycocoevalcap golden.
void check_scores(const CaptionSet& set, const nlohmann::json& golden) {
  const auto b = owl2::eval::bleu(set);
  const auto r = owl2::eval::rouge_l(set);
  const auto c = owl2::eval::cider_d(set);
  for (int k = 0; k < 4; ++k) {
    INFO("Bleu_" << k + 1);
    CHECK(b.corpus[k] == Approx(golden["Bleu_" + std::to_string(k + 1)].get<double>()).margin(kTol).epsilon(0));
  }
  CHECK(r.corpus == Approx(golden["ROUGE_L"].get<double>()).margin(kTol).epsilon(0));
  CHECK(c.corpus == Approx(golden["CIDEr"].get<double>()).margin(kTol).epsilon(0));
  const auto& per = golden["per_image"];
  REQUIRE(per.size() == set.hyps.size());
  for (size_t i = 0; i < per.size(); ++i) {
    INFO("image " << per[i]["image_id"]);
    CHECK(b.per_image[i][3] == Approx(per[i]["Bleu_4"].get<double>()).margin(kTol).epsilon(0));
    CHECK(r.per_image[i] == Approx(per[i]["ROUGE_L"].get<double>()).margin(kTol).epsilon(0));
    CHECK(c.per_image[i] == Approx(per[i]["CIDEr"].get<double>()).margin(kTol).epsilon(0));
  }
}

CaptionSet java_tokenized_set(const nlohmann::json& golden) {
  CaptionSet set;
  for (const auto& img : golden["tokenized"]) {
    set.hyps.push_back(img["hyp"]);
    set.refs.push_back(img["refs"].get<std::vector<std::string>>());
  }
  return set;
}

}  // namespace

TEST_CASE("PTB tokenization equals the Stanford PTBTokenizer pipeline on the tricky strings", "[eval][ptb]") {
  const auto golden = load_fixture("ptb_golden.json");
  REQUIRE(golden["cases"].size() > 400);
  std::vector<std::string> raw;
  for (const auto& c : golden["cases"]) raw.push_back(c["raw"]);
  const auto batch = owl2::eval::coco_tokenize_batch(raw);
  for (size_t i = 0; i < raw.size(); ++i) {
    INFO("raw: " << raw[i]);
    CHECK(batch[i] == golden["cases"][i]["tokenized"].get<std::string>());
    CHECK(owl2::eval::coco_tokenize(raw[i]) == batch[i]);  // none of these depends on the next line
  }
}

TEST_CASE("PTB batch tokenization looks at the next caption for a final single letter", "[eval][ptb]") {
  const auto golden = load_fixture("ptb_golden.json")["batch"];
  const auto raw = golden["raw"].get<std::vector<std::string>>();
  const auto expected = golden["tokenized"].get<std::vector<std::string>>();
  const auto got = owl2::eval::coco_tokenize_batch(raw);
  REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    INFO(raw[i] << " / next: " << (i + 1 < raw.size() ? raw[i + 1] : "(end)"));
    CHECK(got[i] == expected[i]);
  }
  CHECK(owl2::eval::coco_tokenize_batch({"next to a.", "A dog"}) == std::vector<std::string>{"next to a", "a dog"});
  CHECK(owl2::eval::coco_tokenize_batch({"next to a.", "large dog"}) ==
        std::vector<std::string>{"next to a.", "large dog"});
}

TEST_CASE("PTB tokens keep the lower-cased bracket names that coco-caption does not drop", "[eval][ptb]") {
  CHECK(owl2::eval::ptb_tokens("A (red) t-shirt.") ==
        std::vector<std::string>{"a", "-lrb-", "red", "-rrb-", "t-shirt", "."});
  CHECK(owl2::eval::coco_tokenize("A (red) t-shirt.") == "a -lrb- red -rrb- t-shirt");
  CHECK(owl2::eval::coco_tokenize("Isn't it the man's?") == "is n't it the man 's");
  CHECK(owl2::eval::lower_utf8("ÉCOLE Ĳ Ł Ÿ") == "école ĳ ł Ÿ");
}

TEST_CASE("BLEU, ROUGE-L and CIDEr-D match pycocoevalcap on the Java-tokenized fixture", "[eval][captions]") {
  const auto golden = load_fixture("captions_golden.json");
  check_scores(java_tokenized_set(golden), golden["scores"]);
}

TEST_CASE("caption metrics match pycocoevalcap on the edge cases", "[eval][captions]") {
  const auto golden = load_fixture("captions_golden.json");
  for (const auto& [name, e] : golden["edge"].items()) {
    INFO(name);
    CaptionSet set;
    for (const auto& [id, refs] : e["refs"].items()) {
      set.refs.push_back(refs.get<std::vector<std::string>>());
      set.hyps.push_back(e["hyps"][id]);
    }
    check_scores(set, e["scores"]);
  }
  // A single image: idf = log(1) = 0 for every reference n-gram, so CIDEr-D is 0 whatever the hypothesis.
  CHECK(golden["edge"]["single_image"]["scores"]["CIDEr"].get<double>() == 0.0);
}

TEST_CASE("C++ tokenization of the raw COCO files reproduces the Java tokens and the scores", "[eval][captions]") {
  const auto golden = load_fixture("captions_golden.json");
  const auto files = owl2::eval::load_caption_files(source_path("tests/fixtures/eval/captions_refs.json"),
                                                    source_path("tests/fixtures/eval/captions_preds.json"));
  const auto& tok = golden["tokenized"];
  REQUIRE(files.image_ids.size() == tok.size());
  const CaptionSet set = owl2::eval::tokenize_captions(files.raw);
  for (size_t i = 0; i < tok.size(); ++i) {
    CHECK(files.image_ids[i] == tok[i]["image_id"].get<int64_t>());
    CHECK(set.hyps[i] == tok[i]["hyp"].get<std::string>());
    CHECK(set.refs[i] == tok[i]["refs"].get<std::vector<std::string>>());
  }
  check_scores(set, golden["scores"]);
}

TEST_CASE("caption metrics reject inconsistent sets", "[eval][captions]") {
  CaptionSet set;
  set.hyps = {"a b"};
  CHECK_THROWS_WITH(owl2::eval::cider_d(set), Contains("1 hypotheses but 0 reference lists"));
  set.refs = {{}};
  CHECK_THROWS_WITH(owl2::eval::bleu(set), Contains("image #0 has no reference"));
}

TEST_CASE("owl2 score prints the caption metrics as JSON", "[eval][cli]") {
  const auto golden = load_fixture("captions_golden.json")["scores"];
  const auto r = run_owl2("score --metric captions --refs " + source_path("tests/fixtures/eval/captions_refs.json") +
                          " --preds " + source_path("tests/fixtures/eval/captions_preds.json") + " 2>/dev/null");
  REQUIRE(r.rc == 0);
  const auto out = nlohmann::json::parse(r.out);
  CHECK(out["metric"] == "captions");
  CHECK(out["images"] == 20);
  for (const char* k : {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}) {
    INFO(k);
    CHECK(out[k].get<double>() == Approx(golden[k].get<double>()).margin(kTol).epsilon(0));
  }
  const auto cider = nlohmann::json::parse(
      run_owl2("score --metric cider --refs " + source_path("tests/fixtures/eval/captions_refs.json") +
               " --preds " + source_path("tests/fixtures/eval/captions_preds.json"))
          .out);
  CHECK(cider["CIDEr"].get<double>() == Approx(golden["CIDEr"].get<double>()).margin(kTol).epsilon(0));
  CHECK_FALSE(cider.contains("Bleu_1"));
}

TEST_CASE("owl2 score names the file and the entry of malformed caption files", "[eval][cli]") {
  const std::string refs =
      R"({"images":[{"id":1},{"id":2}],"annotations":[{"image_id":1,"caption":"a cat"},{"image_id":2,"caption":"a dog"}]})";
  const auto refs_path = write_temp("refs.json", refs);
  auto score = [&](const std::string& refs_file, const std::string& preds_text) {
    const auto preds_path = write_temp("preds.json", preds_text);
    return run_owl2("score --metric cider --refs " + refs_file + " --preds " + preds_path);
  };
  auto r = score(refs_path, R"([{"image_id":1,"caption":"a cat"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("preds.json: no caption for image_id 2"));

  r = score(refs_path, R"([{"image_id":1,"caption":"a cat"},{"image_id":2,"caption":"x"},{"image_id":1,"caption":"y"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("preds.json: entry 2: duplicate image_id 1 (first at entry 0)"));

  r = score(refs_path, R"([{"image_id":"1","caption":"a cat"},{"image_id":2,"caption":"x"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("preds.json: entry 0: 'image_id' must be an integer, found string \"1\""));

  r = score(refs_path, R"([{"image_id":1,"caption":"a cat"},{"image_id":2,"caption":"x"},{"image_id":7,"caption":"z"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("preds.json: entry 2: image_id 7 is not in"));

  r = score(refs_path, R"({"image_id":1})");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("preds.json: expected a JSON array of results, found object"));

  const auto bad_refs = write_temp(
      "bad_refs.json", R"({"images":[{"id":1},{"id":2}],"annotations":[{"image_id":1,"caption":"a"},{"image_id":2}]})");
  r = score(bad_refs, R"([{"image_id":1,"caption":"a"},{"image_id":2,"caption":"b"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("bad_refs.json: annotations[1]: missing key 'caption'"));

  const auto no_ref = write_temp("no_ref.json", R"({"images":[{"id":1},{"id":2}],"annotations":[{"image_id":1,"caption":"a"}]})");
  r = score(no_ref, R"([{"image_id":1,"caption":"a"},{"image_id":2,"caption":"b"}])");
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("no_ref.json: image 2 has no reference caption"));

  r = run_owl2("score --metric meteor --refs " + refs_path + " --preds " + refs_path);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("unknown metric 'meteor'"));
}

}  // namespace owl2_test_eval_captions
