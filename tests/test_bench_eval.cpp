// `owl2 eval --bench`: the readers and prompts of every benchmark on hand-made files in the public formats
// (tests/fixtures/bench), errors for malformed files, MMBench's rotation and circular scoring, the prediction
// cache (sharding, merging, resume), and the whole path through the binary on the synthetic benchmarks.
#include <catch2/catch.hpp>
#include <stdlib.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "data/video.h"
#include "eval/bench_suite.h"
#include "eval/benchmarks.h"
#include "eval/score_files.h"
#include "tests/eval_helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_bench_eval {

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::run_owl2;
using owl2::test::source_path;
using owl2::test::temp_dir;
namespace ev = owl2::eval;
namespace data = owl2::data;
namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& bench) { return source_path("tests/fixtures/bench/" + bench); }

std::vector<ev::BenchItem> read_bench(const std::string& name, const std::string& dir = "") {
  return ev::find_bench(name).read(dir.empty() ? fixture(name) : dir);
}

// The message of the std::invalid_argument that `f` throws ("" if none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

std::string write_file(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
  return path;
}

const std::string kShort = "Answer the question using a single word or phrase.";
const std::string kOption = "Answer with the option\xE2\x80\x99s letter from the given choices directly.";

}  // namespace

TEST_CASE("bench readers: VQAv2, OK-VQA, VizWiz and TextVQA prompts as evaluate_vqa.py and LLaVA build them",
          "[eval][bench]") {
  const auto vqa = read_bench("vqav2");
  REQUIRE(vqa.size() == 3);
  CHECK(vqa[0].id == "420");
  CHECK(vqa[0].prompt ==
        "USER: <|image|>What is the man holding? Answer the question using a single word or phrase. ASSISTANT: ");
  REQUIRE(vqa[0].images.size() == 1);
  CHECK(vqa[0].images[0].path == fixture("vqav2") + "/val2014/COCO_val2014_000000000042.jpg");
  CHECK(vqa[2].meta["question_id"] == 70);

  // Test-dev: its own image folder, and no annotations: the upload file gets the EvalAI-processed answers.
  const auto dev = read_bench("vqav2", fixture("vqav2_testdev"));
  REQUIRE(dev.size() == 2);
  CHECK(dev[1].images[0].path == fixture("vqav2_testdev") + "/test2015/COCO_test2015_000000262144.jpg");
  const std::string up = temp_dir("owl2_bench_upload");
  const auto s = ev::score_bench(ev::find_bench("vqav2"), fixture("vqav2_testdev"), dev, {"It's a dog.", "Two"}, up);
  CHECK_FALSE(s.has_score);
  CHECK(s.files.empty());
  CHECK(read_text(up + "/results_evalai.json") ==
        R"([{"answer":"it 's dog","question_id":262144000},{"answer":"2","question_id":262144001}])");

  const auto ok = read_bench("okvqa");
  REQUIRE(ok.size() == 1);
  CHECK(ok[0].prompt == "USER: <|image|>What sport can you use this for? " + kShort + " ASSISTANT: ");

  const auto viz = read_bench("vizwiz");
  REQUIRE(viz.size() == 2);
  CHECK(viz[1].id == "VizWiz_val_00000001.jpg");
  CHECK(viz[1].prompt ==
        "USER: <|image|>What is this?\nWhen the provided information is insufficient, respond with "
        "'Unanswerable'.\n" +
            kShort + " ASSISTANT: ");
  CHECK(viz[1].images[0].path == fixture("vizwiz") + "/val/VizWiz_val_00000001.jpg");

  const auto tv = read_bench("textvqa", fixture("textvqa"));
  const auto tv_ocr = read_bench("textvqa_ocr", fixture("textvqa"));
  REQUIRE(tv.size() == 2);
  REQUIRE(tv_ocr.size() == 2);
  CHECK(tv[0].prompt == "USER: <|image|>what is the brand of this camera? " + kShort + " ASSISTANT: ");
  CHECK(tv_ocr[0].prompt ==
        "USER: <|image|>what is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, "
        "Single-Use\n" +
            kShort + " ASSISTANT: ");
  CHECK(tv_ocr[1].prompt == "USER: <|image|>what does the small white text spell?\n" + kShort + " ASSISTANT: ");
  CHECK(tv[0].images[0].path == fixture("textvqa") + "/train_images/003a8ae2ef43b901.jpg");
}

TEST_CASE("bench readers: GQA, ScienceQA-IMG, POPE, MME", "[eval][bench]") {
  const auto gqa = read_bench("gqa");
  REQUIRE(gqa.size() == 2);
  CHECK(gqa[0].id == "20843034");  // file order, not sorted
  CHECK(gqa[1].prompt == "USER: <|image|>Is it an outdoors scene?\n" + kShort + " ASSISTANT: ");
  CHECK(gqa[1].images[0].path == fixture("gqa") + "/images/n161313.jpg");
  CHECK(ev::find_bench("gqa").postprocess("Black.") == "black");

  // Test split, image problems only: 4 and 9 (5 has no image, 11 is train).
  const auto sqa = read_bench("scienceqa");
  REQUIRE(sqa.size() == 2);
  CHECK(sqa[0].id == "4");
  CHECK(sqa[0].prompt ==
        "USER: <|image|>Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\n"
        "C. Arizona\nD. Oklahoma\nAnswer with the option's letter from the given choices directly. "
        "ASSISTANT: ");
  CHECK(sqa[1].prompt ==
        "USER: <|image|>Context: People can use the engineering-design process to develop solutions "
        "to problems.\nIdentify the question that Tom's experiment can best answer.\nA. Do ping pong "
        "balls stop rolling?\nB. Do ping pong balls travel farther?\nAnswer with the option's letter "
        "from the given choices directly. ASSISTANT: ");
  CHECK(sqa[0].images[0].path == fixture("scienceqa") + "/images/test/4/image.png");

  // Splits in the order adversarial, popular, random; popular is absent.
  const auto pope = read_bench("pope");
  REQUIRE(pope.size() == 5);
  CHECK(pope[0].id == "adversarial/1");
  CHECK(pope[3].id == "random/1");
  CHECK(pope[3].prompt == "USER: <|image|>Is there a snowboard in the image?\n" + kShort + " ASSISTANT: ");
  CHECK(pope[3].images[0].path == fixture("pope") + "/val2014/COCO_val2014_000000310196.jpg");

  // "Please answer yes or no." is cut from the prompt, leaving the space before "\n" (spec §5.2).
  const auto mme = read_bench("mme");
  REQUIRE(mme.size() == 4);
  CHECK(mme[0].prompt == "USER: <|image|>Is there a train in this image? \n" + kShort + " ASSISTANT: ");
  CHECK(mme[0].group == mme[1].group);
  CHECK(mme[0].meta["question"] == "Is there a train in this image? Please answer yes or no.");
  CHECK(mme[0].meta["gt"] == "Yes");
  CHECK(mme[2].meta["task"] == "landmark");
  CHECK(mme[2].images[0].path == fixture("mme") + "/landmark/images/0006adf999ccc899.jpg");
  // --limit counts images for MME: one image, both questions.
  CHECK(ev::limit_groups(mme, 1).size() == 2);
}

TEST_CASE("bench readers: MMBench, SEED, Q-Bench, MMMU, captions, MMLU", "[eval][bench]") {
  const auto mmb = read_bench("mmbench");
  // 4 rows of question 0 (copies in the file), 1 + 2 added copies of question 1, 1 + 1 of question 2.
  REQUIRE(mmb.size() == 9);
  CHECK(mmb[0].prompt ==
        "USER: <|image|>The picture was taken at night.\nWhat is the main color of the car?\n"
        "A. red\nB. blue\nC. green\nD. white\n" +
            kOption + " ASSISTANT: ");
  CHECK(mmb[1].prompt ==
        "USER: <|image|>N/A\nWhich animal is shown?\nA. cat\nB. dog\nC. bird\n" + kOption + " ASSISTANT: ");
  CHECK(mmb[2].id == "1000001");
  CHECK(mmb[2].prompt ==
        "USER: <|image|>N/A\nWhich animal is shown?\nA. dog\nB. bird\nC. cat\n" + kOption + " ASSISTANT: ");
  CHECK(mmb[4].prompt ==
        "USER: <|image|>N/A\nIs the sign \"open\"?\nA. yes, it is\nB. no\n" + kOption + " ASSISTANT: ");
  CHECK(mmb[0].images[0].bytes == "x");
  CHECK(mmb[1].images[0].bytes == "y");
  CHECK(mmb[2].images[0].bytes == "y");  // an added copy shows its main row's image
  CHECK(ev::limit_groups(mmb, 1).size() == 4);

  // The test split has no answer column: no copies are added, the submission file gets the predictions.
  const auto mmb_test = read_bench("mmbench", fixture("mmbench_test"));
  REQUIRE(mmb_test.size() == 2);
  const std::string sub = temp_dir("owl2_bench_mmb_test");
  const auto s = ev::score_bench(ev::find_bench("mmbench"), fixture("mmbench_test"), mmb_test, {"A", "B\tx"}, sub);
  CHECK_FALSE(s.has_score);
  CHECK(read_text(sub + "/submission.tsv") ==
        "index\tquestion\thint\tA\tB\tC\tD\tE\tprediction\tcategory\tl2-category\tsplit\n"
        "5\tWhich object is on the table?\t\ta cup\ta book\t\t\t\tA\tobject_localization\t"
        "finegrained_perception (instance-level)\ttest\n"
        "1000005\tWhich object is on the table?\t\ta book\ta cup\t\t\t\t\"B\tx\"\tobject_localization\t"
        "finegrained_perception (instance-level)\ttest\n");

  const auto seed = read_bench("seed");
  REQUIRE(seed.size() == 2);  // the video question is left out
  CHECK(seed[0].prompt == "USER: <|image|>How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four\n" +
                              kOption + " ASSISTANT: ");
  CHECK(seed[1].images[0].path == fixture("seed") + "/SEED-Bench-image/1234_567.jpg");

  const auto qb = read_bench("qbench");
  REQUIRE(qb.size() == 3);
  CHECK(qb[1].prompt ==
        "USER: <|image|>How is the lighting of the image?\nA. Dim\nB. Bright\nC. Normal\n" + kOption + " ASSISTANT: ");
  CHECK(qb[1].images[0].path == fixture("qbench") + "/images/spaq_koniq/10004.jpg");

  // MMMU: each "<image k>" (question and options) becomes "<|image|>", images in marker order.
  const auto mmmu = read_bench("mmmu");
  REQUIRE(mmmu.size() == 3);
  CHECK(mmmu[0].prompt ==
        "USER: <|image|> and <|image|> show two paintings. Which one is older?\nA. <|image|>\n"
        "B. <|image|>\nC. Same age\n" +
            kOption + " ASSISTANT: ");
  REQUIRE(mmmu[0].images.size() == 4);
  CHECK(mmmu[0].images[0].path == fixture("mmmu") + "/images/art1.png");
  CHECK(mmmu[0].images[3].path == fixture("mmmu") + "/images/art2.png");
  CHECK(mmmu[1].prompt == "USER: What is the value of x in <|image|>?\n" + kShort + " ASSISTANT: ");
  CHECK(mmmu[2].images.empty());
  CHECK(ev::find_bench("mmmu").decoding.max_new_tokens == 20);

  const auto coco = read_bench("coco");
  REQUIRE(coco.size() == 2);
  CHECK(coco[0].prompt == "USER: <|image|>Provide a one-sentence caption for the provided image. ASSISTANT: ");
  CHECK(coco[1].images[0].path == fixture("coco") + "/val2014/COCO_val2014_000000060623.jpg");
  CHECK(ev::find_bench("coco").decoding.max_new_tokens == 60);
  CHECK(ev::find_bench("coco").decoding.min_new_tokens == 8);
  const auto flickr = read_bench("flickr30k");
  REQUIRE(flickr.size() == 1);
  CHECK(flickr[0].images[0].path == fixture("flickr30k") + "/flickr30k-images/1007129816.jpg");

  const auto mmlu = read_bench("mmlu");
  REQUIRE(mmlu.size() == 2);
  CHECK(mmlu[0].id == "astronomy/0");
  CHECK(mmlu[0].images.empty());
  CHECK(
      mmlu[0].prompt ==
      "The following are multiple choice questions (with answers) about astronomy.\n\n"
      "You are pushing a truck along a road. Would it be easier to accelerate this truck on Mars? Why?\nA. Yes\nB. No\n"
      "C. Maybe\nD. Never\nAnswer: A\n\n"
      "Where do most short-period comets come from, and how do we know?\nA. The Kuiper belt\nB. The asteroid belt\n"
      "C. The Oort cloud\nD. The Sun\nAnswer: A\n\n"
      "What is true for a type-Ia (\"type one-a\") supernova?\nA. This type occurs in binary systems.\n"
      "B. This type occurs in young galaxies.\nC. This type produces gamma-ray bursts.\n"
      "D. This type produces high amounts of X-rays.\nAnswer:");
}

TEST_CASE("bench readers: malformed annotation files name the file and the entry", "[eval][bench]") {
  const std::string dir = temp_dir("owl2_bench_bad");
  const std::string q = dir + "/v2_OpenEnded_mscoco_val2014_questions.json";
  write_file(q, R"({"questions": [{"image_id": 1, "question": "a?", "question_id": 7},
                                   {"image_id": 2, "question": "b?", "question_id": 7}]})");
  CHECK(error_of([&] { read_bench("vqav2", dir); }) ==
        q + ": questions[1]: duplicate question_id 7 (first at questions[0])");
  write_file(q, R"({"questions": [{"image_id": 1, "question": "a?", "question_id": "7"}]})");
  CHECK(error_of([&] { read_bench("vqav2", dir); }) ==
        q + ": questions[0]: 'question_id' must be an integer, found string \"7\"");
  write_file(q, R"({"questions": [{"image_id": 1, "question_id": 7}]})");
  CHECK(error_of([&] { read_bench("vqav2", dir); }) == q + ": questions[0]: missing key 'question'");
  CHECK_THAT(error_of([&] { read_bench("okvqa", dir); }),
             Contains("no annotation file found (expected one of: OpenEnded_mscoco_val2014_questions.json)"));

  const std::string pope =
      write_file(dir + "/coco_pope_random.json",
                 "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a cat?\", \"label\": \"yes\"}\n"
                 "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a dog?\", \"label\": \"no\"}\n");
  CHECK(error_of([&] { read_bench("pope", dir); }) == pope + ": line 2: duplicate question_id 1 (first at line 1)");

  const std::string tsv =
      write_file(dir + "/mmbench_dev_20230712.tsv", "index\tquestion\tA\tB\tanswer\timage\n0\tq?\tx\ty\tC\teA==\n");
  CHECK(error_of([&] { read_bench("mmbench", dir); }) == tsv + ": row 2 (index 0): answer C has no option text");

  const std::string mmmu = write_file(
      dir + "/MMMU_validation.jsonl",
      R"({"id": "validation_Art_1", "question": "q", "options": 5, "answer": "A", "question_type": "multiple-choice"})");
  CHECK(error_of([&] { read_bench("mmmu", dir); }) ==
        mmmu + ": line 1: 'options' must be a list of strings (or its Python text), found 5");

  fs::create_directories(dir + "/mme/count");
  write_file(dir + "/mme/count/1.png", "x");
  const std::string mme_txt = write_file(dir + "/mme/count/1.txt", "Are there two? Please answer yes or no.\tMaybe\n");
  CHECK(error_of([&] { read_bench("mme", dir + "/mme"); }) == mme_txt + ": line 1: answer 'Maybe' is not Yes/No");

  // Prediction files of the new scorers: duplicates, unknown ids, wrong types.
  const std::string dup = write_file(dir + "/mmmu_preds.jsonl",
                                     "{\"id\": \"validation_Math_3\", \"prediction\": \"1\"}\n"
                                     "{\"id\": \"validation_Math_3\", \"prediction\": \"2\"}\n");
  CHECK(error_of([&] { ev::score_files("mmmu", fixture("mmmu") + "/MMMU_validation.jsonl", dup); }) ==
        dup + ": line 2: duplicate id validation_Math_3 (first at line 1)");
  const std::string unknown = write_file(dir + "/qb_preds.jsonl", "{\"id\": 7, \"prediction\": \"A\"}\n");
  CHECK(error_of([&] { ev::score_files("qbench", fixture("qbench") + "/llvisionqa_dev.json", unknown); }) ==
        unknown + ": id 7 is not in " + fixture("qbench") + "/llvisionqa_dev.json");
  const std::string typed =
      write_file(dir + "/mmlu_preds.jsonl", "{\"question_id\": \"astronomy/0\", \"prediction\": 3}\n");
  CHECK(error_of([&] { ev::score_files("mmlu", fixture("mmlu"), typed); }) ==
        typed + ": line 1: 'prediction' must be a string, found number 3");
  const std::string bad_id =
      write_file(dir + "/mmlu_preds2.jsonl", "{\"question_id\": \"astronomy/9\", \"prediction\": \"A\"}\n");
  CHECK(error_of([&] { ev::score_files("mmlu", fixture("mmlu"), bad_id); }) ==
        bad_id + ": question_id astronomy/9: " + fixture("mmlu") + "/test/astronomy_test.csv has 2 rows");

  CHECK_THAT(error_of([] { ev::find_bench("vqa3"); }),
             Contains("unknown benchmark 'vqa3': expected one of vqav2, okvqa"));
}

TEST_CASE("MMBench: rotated copies and circular scoring with unresolved answers", "[eval][bench][mmbench]") {
  const auto items = read_bench("mmbench");
  std::map<std::string, std::string> answer;  // index -> ground-truth letter of that copy
  for (const auto& it : items) answer[it.id] = it.meta.at("answer").get<std::string>();
  // Copies of question 1 (cat, dog, bird; answer C): copy n shows option (i + n) mod 3 at letter i.
  CHECK(answer["1"] == "C");
  CHECK(answer["1000001"] == "B");
  CHECK(answer["2000001"] == "A");
  CHECK(nlohmann::json(items[3].meta.at("options")) == nlohmann::json{{"A", "bird"}, {"B", "cat"}, {"C", "dog"}});
  CHECK(answer["1000002"] == "B");

  // Question 0: every copy right -> hit. Question 1: one copy cannot be matched offline -> 0, unresolved.
  // Question 2: one copy picks the wrong option -> 0, not unresolved.
  const std::map<std::string, std::string> said = {
      {"0", "B"},      {"1000000", "A."},          {"2000000", "(D)"}, {"3000000", "The answer is C"},
      {"1", "C"},      {"1000001", "I am unsure"}, {"2000001", "A"},   {"2", "yes, it is"},
      {"1000002", "A"}};
  std::vector<std::string> preds;
  for (const auto& it : items) preds.push_back(said.at(it.id));
  const std::string out = temp_dir("owl2_bench_mmb");
  const auto s = ev::score_bench(ev::find_bench("mmbench"), fixture("mmbench"), items, preds, out);
  const auto& m = s.scores["mmbench"];
  CHECK(m["questions"] == 3);
  CHECK(m["hits"] == 1);
  CHECK(m["unresolved"] == 1);
  CHECK(m["unresolved_questions"] == nlohmann::ordered_json::array({1}));
  CHECK(m["accuracy"].get<double>() == Approx(1.0 / 3));
  CHECK(s.headline == Approx(100.0 / 3));
  // The refs written for `owl2 score` hold the added copies.
  CHECK_THAT(read_text(out + "/mmbench_circular.tsv"),
             Contains("1000001\tWhich animal is shown?\t\tdog\tbird\tcat\t\t\tB\t"));
}

TEST_CASE("bench scoring: the results files of VQAv2, POPE and MME score as the scorers say", "[eval][bench]") {
  const std::string out = temp_dir("owl2_bench_score");
  // VQAv2 (mPLUG-Owl2's VQAEval): "Umbrella." vs 7x umbrella + "an umbrella" (normalized only when GTs differ:
  // punctuation only, so "an umbrella" stays) -> 7 matches -> 1; "two" -> "2" x5 -> 1; "yes" vs 9 no + 1 yes -> 0.3.
  const auto vqa = read_bench("vqav2");
  auto s = ev::score_bench(ev::find_bench("vqav2"), fixture("vqav2"), vqa, {"Umbrella.", "two", "yes"}, out + "/vqa");
  CHECK(s.scores["vqa"]["accuracy"].get<double>() == Approx(100.0 * (1 + 1 + 0.3) / 3).margin(0.005));
  CHECK(s.files[0].refs == fixture("vqav2") + "/v2_mscoco_val2014_annotations.json");
  // --limit: the annotations of the evaluated questions are written next to the results.
  s = ev::score_bench(ev::find_bench("vqav2"), fixture("vqav2"), ev::limit_groups(vqa, 1), {"phone"}, out + "/vqa1");
  CHECK(s.files[0].refs == out + "/vqa1/annotations_subset.json");
  CHECK(s.scores["vqa"]["questions"] == 1);
  CHECK(s.scores["vqa"]["accuracy"].get<double>() == Approx(60.0));

  const auto pope = read_bench("pope");
  s = ev::score_bench(ev::find_bench("pope"), fixture("pope"), pope,
                      {"Yes", "No, there is not.", "no", "Yes.", "There is a dog"}, out + "/pope");
  REQUIRE(s.files.size() == 2);
  CHECK(s.scores["adversarial"]["accuracy"].get<double>() == Approx(2.0 / 3));
  CHECK(s.scores["random"]["accuracy"].get<double>() == Approx(0.5));
  CHECK(s.extra["mean_accuracy"].get<double>() == Approx((2.0 / 3 + 0.5) / 2));
  CHECK(read_text(out + "/pope/answers_random.jsonl") ==
        "{\"question_id\":1,\"text\":\"Yes.\"}\n{\"question_id\":2,\"text\":\"There is a dog\"}\n");

  const auto mme = read_bench("mme");
  s = ev::score_bench(ev::find_bench("mme"), fixture("mme"), mme, {"Yes", "No", "yes", "Yes\tsure"}, out + "/mme");
  // existence: both right (100 + 100); landmark: one right (50 + 0).
  CHECK(s.headline == Approx(250.0));
  CHECK(read_text(out + "/mme/results/landmark.txt") ==
        "0006adf999ccc899.jpg\tIs this a photo of Big Ben? Please answer yes or no.\tYes\tyes\n"
        "0006adf999ccc899.jpg\tIs this a photo of Taj Mahal? Please answer yes or no.\tNo\tYes sure\n");
}

TEST_CASE("bench scoring: Q-Bench, MMMU and MMLU results files", "[eval][bench]") {
  const std::string out = temp_dir("owl2_bench_score2");
  auto s = ev::score_bench(ev::find_bench("qbench"), fixture("qbench"), read_bench("qbench"), {"B", "Dim", "what?"},
                           out + "/qb");
  CHECK(s.scores["qbench"]["accuracy"].get<double>() == Approx(1.0 / 3));
  CHECK(s.scores["qbench"]["unresolved"] == 1);

  s = ev::score_bench(ev::find_bench("mmmu"), fixture("mmmu"), read_bench("mmmu"),
                      {"(A)", "so x = 3.50", "I think it is four"}, out + "/mmmu");
  CHECK(s.scores["mmmu"]["accuracy"].get<double>() == Approx(1.0));
  CHECK(s.scores["mmmu"]["per_subject"]["Math"].get<double>() == Approx(1.0));
  s = ev::score_bench(ev::find_bench("mmmu"), fixture("mmmu"), read_bench("mmmu"), {"no idea", "3.6", "4"},
                      out + "/mmmu2");
  CHECK(s.scores["mmmu"]["accuracy"].get<double>() == Approx(1.0 / 3));
  CHECK(s.scores["mmmu"]["unparsed"] == 1);

  s = ev::score_bench(ev::find_bench("mmlu"), fixture("mmlu"), read_bench("mmlu"), {"A", "B"}, out + "/mmlu");
  CHECK(s.scores["mmlu"]["micro"].get<double>() == Approx(0.5));
  CHECK(s.scores["mmlu"]["macro"].get<double>() == Approx(0.5));
}

TEST_CASE("MMMU open answers: parse_open_response and eval_open of the MMMU repository", "[eval][bench][mmmu]") {
  // Expected sets and verdicts from the reference functions run on the same strings.
  auto nums = [](const std::vector<ev::MmmuValue>& v) {
    std::multiset<std::string> out;
    for (const auto& x : v) out.insert(x.is_number ? fmt::format("{:g}", x.number) : "'" + x.text + "'");
    return out;
  };
  using S = std::multiset<std::string>;
  CHECK(nums(ev::mmmu_parse_open("The answer is 42.")) == S{"42"});
  CHECK(nums(ev::mmmu_parse_open("x = 3.50")) == S{"3.5"});
  CHECK(nums(ev::mmmu_parse_open("so the total is 1,234 dollars")) == S{"'1,234 dollars'", "1234", "234"});
  CHECK(nums(ev::mmmu_parse_open("It could be a cat\nthe result is dog")) == S{"'a cat'", "'dog'"});
  CHECK(nums(ev::mmmu_parse_open("B")) == S{"' b'", "'b '"});
  CHECK(nums(ev::mmmu_parse_open("1.005e3 meters")) == S{"'1.005e3 meters'", "1", "1005", "3"});
  CHECK(nums(ev::mmmu_parse_open("Therefore x is 7 and y = 2")) == S{"2"});
  CHECK(nums(ev::mmmu_parse_open("The value is 0.125")) == S{"0.12"});  // round half to even on the binary value
  CHECK(ev::mmmu_eval_open({"1234"}, ev::mmmu_parse_open("so the total is 1,234 dollars")));
  CHECK(ev::mmmu_eval_open({"dog"}, ev::mmmu_parse_open("It could be a cat\nthe result is dog")));
  CHECK(ev::mmmu_eval_open({"1005"}, ev::mmmu_parse_open("1.005e3 meters")));
  CHECK_FALSE(ev::mmmu_eval_open({"0.13"}, ev::mmmu_parse_open("The value is 0.125")));
  CHECK(ev::mmmu_eval_open({"here"}, ev::mmmu_parse_open("nothing here")));
}

TEST_CASE("prediction cache: shards cover every question once, merge, resume, conflicts", "[eval][bench][cache]") {
  std::set<size_t> all;
  for (int64_t r = 0; r < 3; ++r)
    for (size_t i : ev::shard_indices(10, r, 3)) CHECK(all.insert(i).second);
  CHECK(all.size() == 10);
  CHECK(ev::shard_indices(10, 1, 3) == std::vector<size_t>{1, 4, 7});
  CHECK_THROWS_AS(ev::shard_indices(10, 3, 3), std::invalid_argument);

  const std::string dir = temp_dir("owl2_bench_cache");
  std::vector<ev::BenchItem> items(5);
  for (size_t i = 0; i < items.size(); ++i) items[i].id = "q" + std::to_string(i);
  ev::append_predictions(ev::rank_cache_path(dir, 0), {{"q0", "a0"}, {"q2", "a2"}});
  ev::append_predictions(ev::rank_cache_path(dir, 1), {{"q1", "a1"}, {"q3", "a3"}});
  // A killed writer leaves a line without its newline: it is not a cached answer.
  std::ofstream(ev::rank_cache_path(dir, 0), std::ios::app) << "{\"id\": \"q4\", \"predic";
  auto cache = ev::read_prediction_cache(dir);
  CHECK(cache.size() == 4);
  CHECK_FALSE(cache.count("q4"));
  CHECK_THROWS_WITH(ev::merge_prediction_cache(dir, items), Contains("no prediction for id q4"));
  // The resumed rank appends after cutting the fragment off.
  ev::append_predictions(ev::rank_cache_path(dir, 0), {{"q4", "a4"}});
  CHECK(read_text(ev::rank_cache_path(dir, 0)) ==
        "{\"id\":\"q0\",\"prediction\":\"a0\"}\n{\"id\":\"q2\",\"prediction\":\"a2\"}\n{\"id\":\"q4\",\"prediction\":"
        "\"a4\"}\n");
  const auto merged = ev::merge_prediction_cache(dir, items);
  CHECK(merged == std::vector<std::string>{"a0", "a1", "a2", "a3", "a4"});
  CHECK_FALSE(fs::exists(ev::rank_cache_path(dir, 1)));
  CHECK(ev::read_prediction_cache(dir).size() == 5);

  // The same id with two different answers is an error naming both places.
  ev::append_predictions(ev::rank_cache_path(dir, 1), {{"q3", "other"}});
  CHECK(error_of([&] { ev::read_prediction_cache(dir); }) == ev::rank_cache_path(dir, 1) +
                                                                 ": line 1: id q3 has a different prediction than at " +
                                                                 ev::merged_cache_path(dir) + ": line 4");
  fs::remove(ev::rank_cache_path(dir, 1));
  std::ofstream(ev::rank_cache_path(dir, 1)) << "{\"id\": 3, \"prediction\": \"x\"}\n";
  CHECK(error_of([&] { ev::read_prediction_cache(dir); }) ==
        ev::rank_cache_path(dir, 1) + ": line 1: 'id' must be a string, found number 3");
}

TEST_CASE("SEED-Bench video questions: the middle frame from extracted frames or from the clip as LLaVA's script "
          "picks it, and the total becomes the headline",
          "[eval][bench][video]") {
  const std::string dir = temp_dir("owl2_seed_video");
  const auto question = [](const std::string& id, int type, const std::string& data_type, const std::string& data_id,
                           const nlohmann::json& segment = nullptr) {
    nlohmann::json q{{"answer", "A"},     {"choice_a", "a"},      {"choice_b", "b"},      {"choice_c", "c"},
                     {"choice_d", "d"},   {"data_id", data_id},   {"data_type", data_type}, {"question", "Q" + id},
                     {"question_id", id}, {"question_type_id", type}};
    if (!segment.is_null()) q["segment"] = segment;
    return q;
  };
  const nlohmann::json bench{
      {"question_type", {{"Scene Understanding", 1}, {"Action Recognition", 10}, {"Action Prediction", 11},
                         {"Procedure Understanding", 12}}},
      {"questions",
       {question("1", 1, "image", "img.jpg"), question("v10a", 10, "video", "a.webm"),
        question("v11a", 11, "video", "P01/P01_11.MP4", {0.5, 1.5}), question("v10b", 10, "video", "b.avi"),
        question("v11b", 11, "video", "P02/P02_01.avi", {0.5, 1.5}),
        question("v12b", 12, "video", "P03/cam01/P03_coffee.avi", {2, 9}),
        question("v12c", 12, "video", "P04/cam01/P04_tea.avi", {0, 5})}}};
  std::ofstream(dir + "/SEED-Bench.json") << bench.dump();
  const auto touch = [&](const std::string& rel) {
    fs::create_directories(fs::path(dir + "/" + rel).parent_path());
    std::ofstream(dir + "/" + rel) << "x";
  };
  touch("SEED-Bench-video-image/10_v10a.png");                               // LLaVA's extracted middle frame
  touch("SEED-Bench-video-image/v1_video/task11/kitchen_8_frame/v11a/4.png");  // the release's 8 frames
  touch("videos/20bn-something-something-v2/b.avi");                          // source clips
  touch("videos/EPIC-KITCHENS/P02_01.avi");
  touch("videos/BreakfastII_15fps_qvga_sync/P03/cam01/P03_coffee.avi");
  const auto items = read_bench("seed", dir);
  REQUIRE(items.size() == 6);  // v12c has neither frames nor a clip: left out
  CHECK(items[0].images.at(0).path == dir + "/SEED-Bench-image/img.jpg");
  CHECK(items[1].images.at(0).path == dir + "/SEED-Bench-video-image/10_v10a.png");
  CHECK(items[2].images.at(0).path == dir + "/SEED-Bench-video-image/v1_video/task11/kitchen_8_frame/v11a/4.png");
  for (size_t i = 1; i < items.size(); ++i) {
    INFO(items[i].id);
    std::string expected = items[0].prompt;  // the image question's prompt, one <|image|>, with this question
    expected.replace(expected.find("Q1"), 2, "Q" + items[i].id);
    CHECK(items[i].prompt == expected);
  }
  // The clips: the frame LLaVA's extract_video_frames.py takes (get_index(n, 1) = int((n - 1) / 2)).
  REQUIRE(items[3].video == dir + "/videos/20bn-something-something-v2/b.avi");
  REQUIRE(items[3].video_pick);
  CHECK(items[3].video_pick(21, 10.0) == 9);  // the whole clip less its last frame: get_index(20, 1)
  CHECK(items[3].video_pick(2, 10.0) == 0);
  CHECK_THROWS(items[3].video_pick(1, 10.0));  // get_index(0, 1) picks nothing
  REQUIRE(items[4].video == dir + "/videos/EPIC-KITCHENS/P02_01.avi");  // by the data_id's file name
  CHECK(items[4].video_pick(30, 10.0) == 9);  // seconds 0.5-1.5 at 10 fps: frames 5-15, 5 + int(9 / 2)
  CHECK(items[4].video_pick(12, 10.0) == 7);  // the end clamped to frame 11: 5 + int(5 / 2)
  REQUIRE(items[5].video == dir + "/videos/BreakfastII_15fps_qvga_sync/P03/cam01/P03_coffee.avi");
  CHECK(items[5].video_pick(20, 15.0) == 5);  // frames 2-9: 2 + int(6 / 2)
  CHECK(items[5].video_pick(6, 15.0) == 3);   // the end clamped to 6: 2 + int(3 / 2)
  for (size_t i = 3; i < 6; ++i) CHECK(items[i].video_frames == 1);
  // A malformed segment names the file, the entry and the key.
  nlohmann::json bad = bench;
  bad["questions"][4]["segment"] = "0.5-1.5";
  std::ofstream(dir + "/SEED-Bench.json") << bad.dump();
  CHECK_THAT(error_of([&] { read_bench("seed", dir); }),
             Contains("SEED-Bench.json: questions[4]: 'segment' must be [start, end] numbers"));
  std::ofstream(dir + "/SEED-Bench.json") << bench.dump();

  // Scoring: with video questions the headline is the total; v12c is missing.
  const auto score = ev::find_bench("seed").score(dir, items, {"A", "A", "B", "A", "A", "C"}, dir + "/out");
  CHECK(score.headline_name == "accuracy (%)");
  CHECK(score.headline == Approx(100.0 * 4 / 6));
  CHECK(score.scores["seed"]["missing"] == 1);
  CHECK(score.scores["seed"]["video"].get<double>() == Approx(3.0 / 5));

  // The frame decoded from a real clip is the one all frames give at that index, bit for bit.
  if (!data::video_decoding_available()) return;
  std::vector<torch::Tensor> frames;
  for (int k = 0; k < 21; ++k) frames.push_back(torch::full({16, 24, 3}, 10 * k, torch::kUInt8));
  const std::string clip = dir + "/clip.avi";
  data::write_video(clip, frames, 10.0);
  const auto all = data::decode_all_frames(clip);
  REQUIRE(all.total == 21);
  const auto one = data::decode_frame(clip, items[3].video_pick);
  REQUIRE(one.frames.size() == 1);
  CHECK(one.indices == std::vector<int64_t>{9});
  CHECK(torch::equal(one.frames[0], all.frames[9]));
  const auto seg = data::decode_frame(clip, items[4].video_pick);  // through the clip's own frame rate
  CHECK(seg.indices == std::vector<int64_t>{9});
  CHECK_THROWS_WITH(data::decode_frame(clip, [](int64_t total, double) { return total; }),
                    Contains("frame 21 asked for, the clip has 21 frames"));
}

TEST_CASE("owl2 data synth-bench: the public layouts, readable by the benchmark readers, byte-identical per seed",
          "[eval][bench][synth]") {
  const std::string a = temp_dir("owl2_synth_bench_a"), b = temp_dir("owl2_synth_bench_b");
  for (const auto& dir : {a, b}) {
    const auto r = run_owl2("data synth-bench --out " + dir + " --images 3 --seed 5");
    INFO(r.out);
    REQUIRE(r.rc == 0);
  }
  size_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(a)) {
    if (!e.is_regular_file()) continue;
    ++files;
    const std::string rel = fs::relative(e.path(), a).string();
    CHECK(read_text(e.path().string()) == read_text(b + "/" + rel));
  }
  // vqav2 3 + 2 JSON, pope 3 + 3 splits, mme 3 tasks x 3 x (png + txt), mmbench 1, coco 3 + 1; with video
  // msrvtt_qa, msvd_qa and tgif_qa 3 clips + 1 question file each
  CHECK(files == (data::video_decoding_available() ? 46u : 34u));
  CHECK(read_bench("vqav2", a + "/vqav2").size() == 9);
  CHECK(read_bench("pope", a + "/pope").size() == 18);
  CHECK(read_bench("mme", a + "/mme").size() == 18);
  CHECK(read_bench("mmbench", a + "/mmbench").size() == 12);  // 3 questions x 4 circular copies, all in the TSV
  CHECK(read_bench("coco", a + "/coco").size() == 3);
  if (data::video_decoding_available()) {
    const auto qa = read_bench("msrvtt_qa", a + "/msrvtt_qa");
    REQUIRE(qa.size() == 6);
    // The late square is absent from the first frame and present in the last.
    const auto clip = data::decode_all_frames(qa[0].video);
    CHECK(clip.total == 16);
    CHECK(clip.frames.front()[2][2][0].item<int>() == Approx(128).margin(20));
    CHECK(clip.frames.back()[2][2][0].item<int>() != Approx(128).margin(20));
    CHECK(read_bench("msvd_qa", a + "/msvd_qa").size() == 6);
    const auto tgif = read_bench("tgif_qa", a + "/tgif_qa");
    REQUIRE(tgif.size() == 6);
    CHECK_THAT(tgif[0].video, Catch::Matchers::EndsWith("gifs/tumblr_synth0001.gif"));
    // GIF is lossless: the grey background is exactly 128, and the late square appears halfway.
    const auto gif = data::decode_all_frames(tgif[0].video);
    CHECK(gif.total == 16);
    CHECK(gif.frames.front()[2][2][0].item<int>() == 128);
    CHECK(gif.frames[7][2][2][0].item<int>() == 128);
    CHECK(gif.frames[8][2][2][0].item<int>() != 128);
  }
  const auto png = read_text(a + "/vqav2/val2014/COCO_val2014_000000000001.png");
  CHECK(read_bench("mmbench", a + "/mmbench")[0].images[0].bytes == png);  // the base64 column round-trips
}

namespace {

// Synthetic benchmarks, a tokenizer and a tiny model under build/test_bench_<name> (one folder per test case:
// CTest runs them in parallel processes). The model is left at its random initialization (one step at
// lr 1e-9) with the tokenizer's vocabulary, so that its answers are long and differ from question to question:
// a trained two-step model answers "" to everything, which would make the batch-size check vacuous.
const std::string& e2e_root(const std::string& name = "") {
  static const std::string root = [&] {
    const std::string r = "build/test_bench_" + name;
    // One intra-op thread per owl2 process: with CTest running tests in parallel on a small machine, torch's
    // default pool oversubscribes the cores (measured: 6 answers in 0.9 s with one thread, 14 s without).
    setenv("OMP_NUM_THREADS", "1", 1);
    fs::remove_all(r);
    auto run = [](const std::string& args) {
      const auto res = run_owl2(args);
      INFO(args << "\n" << res.out);
      REQUIRE(res.rc == 0);
    };
    run("data synth --out " + r + "/data --train 24 --heldout 2 --train-text 8 --heldout-text 2");
    run("data synth-bench --out " + r + "/bench --images 2");
    run("tokenizer train --text " + r + "/data/corpus.txt --vocab-size 256 --out " + r + "/tok");
    std::ofstream(r + "/run.yaml") << "include: " << source_path("configs/model/tiny.yaml") << "\n"
                                   << "model: {decoder: {vocab_size: 256}}\n"
                                   << "optim: {lr: 1.0e-9, min_lr: 0, warmup_steps: 1}\n"
                                   << "train: {steps: 1, global_batch_size: 4, micro_batch_size: 4, max_length: 200,"
                                   << " save_every: 1, keep_last: 1, out_dir: " << r << "/run}\n"
                                   << "data: {tokenizer: " << r << "/tok.model, sources: [{path: " << r
                                   << "/data/llava_train.json}], num_workers: 1}\n";
    run("train --config " + r + "/run.yaml");
    return r;
  }();
  return root;
}

// Runs `owl2 eval --bench` and returns the metrics JSON it printed on stdout.
nlohmann::json eval_bench(const std::string& bench, const std::string& out, const std::string& extra = "") {
  const std::string& r = e2e_root();
  const auto res = run_owl2("eval --model " + r + "/run/final --bench " + bench + " --data " + r + "/bench/" + bench +
                            " --out " + out + " " + extra);
  INFO(res.out);
  REQUIRE(res.rc == 0);
  const size_t p = res.out.find("{\"bench\"");
  REQUIRE(p != std::string::npos);
  CHECK_THAT(res.out, Contains("benchmark") && Contains("questions"));  // the summary table on stderr
  return nlohmann::json::parse(res.out.substr(p, res.out.find('\n', p) - p));
}

std::map<std::string, std::string> cached(const std::string& dir) { return ev::read_prediction_cache(dir); }

// Every score in the metrics equals `owl2 score` on the files it names.
void check_rescore(const nlohmann::json& m, const std::string& dir) {
  const auto on_disk = nlohmann::json::parse(read_text(dir + "/metrics.json"));
  CHECK(on_disk == m);
  REQUIRE(!m["files"].empty());
  for (const auto& f : m["files"]) {
    const std::string refs = f["refs"].get<std::string>();
    const auto r = run_owl2("score --metric " + f["metric"].get<std::string>() +
                            (refs.empty() ? "" : " --refs " + refs) + " --preds " + f["preds"].get<std::string>());
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(nlohmann::json::parse(r.out) == m["scores"][f["name"].get<std::string>()]);
  }
}

}  // namespace

TEST_CASE("owl2 eval --bench vqav2 end to end: rescoring, batch size 1 vs 4, resume from the cache",
          "[eval][bench][cli]") {
  e2e_root("vqav2");
  const std::string out = temp_dir("owl2_bench_e2e");
  const auto one = eval_bench("vqav2", out + "/b1", "--batch-size 1");
  const auto four = eval_bench("vqav2", out + "/b4", "--batch-size 4");
  CHECK(one["questions"] == 6);
  CHECK(one["generated"] == 6);
  CHECK(one["cached"] == 0);
  check_rescore(one, out + "/b1/vqav2");
  CHECK(cached(out + "/b1/vqav2") == cached(out + "/b4/vqav2"));
  CHECK(one["scores"] == four["scores"]);
  CHECK(read_text(out + "/b1/vqav2/results.json") == read_text(out + "/b4/vqav2/results.json"));

  // Drop half of the cached answers and damage the rest: a rerun regenerates only the dropped ones, so the
  // damaged ones come back as they were left (proof that they were not generated again).
  const std::string cache = ev::merged_cache_path(out + "/b4/vqav2");
  std::istringstream lines(read_text(cache));
  std::string kept;
  int n = 0;
  std::map<std::string, std::string> planted;
  for (std::string line; std::getline(lines, line); ++n) {
    if (n % 2) continue;
    auto j = nlohmann::json::parse(line);
    j["prediction"] = "planted " + std::to_string(n);
    planted[j["id"]] = j["prediction"];
    kept += j.dump() + "\n";
  }
  std::ofstream(cache) << kept;
  const auto again = eval_bench("vqav2", out + "/b4", "--batch-size 4");
  CHECK(again["generated"] == 3);
  CHECK(again["cached"] == 3);
  const auto after = cached(out + "/b4/vqav2");
  const auto fresh = cached(out + "/b1/vqav2");
  for (const auto& [id, pred] : after) CHECK(pred == (planted.count(id) ? planted[id] : fresh.at(id)));
  check_rescore(again, out + "/b4/vqav2");

  // --limit evaluates the first questions and scores them against the matching annotations.
  const auto lim = eval_bench("vqav2", out + "/b1", "--limit 2");
  CHECK(lim["questions"] == 2);
  CHECK(lim["generated"] == 0);
  check_rescore(lim, out + "/b1/vqav2");
}

TEST_CASE("owl2 eval --bench pope, mme, mmbench, coco and the three video benchmarks end to end on synthetic files",
          "[eval][bench][cli]") {
  e2e_root("others");
  const std::string out = temp_dir("owl2_bench_e2e2");
  std::map<std::string, std::string> limits = {
      {"pope", ""}, {"mme", "--limit 2"}, {"mmbench", "--limit 2"}, {"coco", "--limit 2"}};
  if (data::video_decoding_available())
    for (const char* b : {"msrvtt_qa", "msvd_qa", "tgif_qa"}) limits[b] = "--limit 3";
  for (const auto& [bench, limit] : limits) {
    INFO(bench);
    const auto m = eval_bench(bench, out, "--batch-size 8 " + limit);
    CHECK(m["generated"] == m["questions"]);
    check_rescore(m, out + "/" + bench);
  }
  const auto pope = nlohmann::json::parse(read_text(out + "/pope/metrics.json"));
  CHECK(pope["questions"] == 12);
  CHECK(pope["files"].size() == 3);
  const auto mme = nlohmann::json::parse(read_text(out + "/mme/metrics.json"));
  CHECK(mme["questions"] == 4);  // two images of the existence task, two questions each
  CHECK(mme["scores"]["mme"]["tasks"]["existence"]["questions"] == 4);
  const auto mmb = nlohmann::json::parse(read_text(out + "/mmbench/metrics.json"));
  CHECK(mmb["questions"] == 8);  // two questions with their three circular copies each
  CHECK(mmb["scores"]["mmbench"]["questions"] == 2);
  const auto coco = nlohmann::json::parse(read_text(out + "/coco/metrics.json"));
  CHECK(coco["scores"]["captions"]["images"] == 2);
  if (data::video_decoding_available()) {
    for (const char* b : {"msrvtt_qa", "msvd_qa", "tgif_qa"}) {
      const auto qa = nlohmann::json::parse(read_text(out + "/" + b + "/metrics.json"));
      CHECK(qa["scores"]["video_qa"]["questions"] == 3);
    }
  }
}

TEST_CASE("owl2 eval --bench under torchrun: 2 ranks answer their shards, rank 0 merges and scores as 1 process",
          "[eval][bench][cli][dist]") {
  const std::string& r = e2e_root("dist");
  const std::string out = temp_dir("owl2_bench_dist");
  const auto single = eval_bench("vqav2", out + "/one", "--batch-size 3");
  const std::string py = OWL2_PYTHON;
  const std::string run = py.substr(0, py.rfind('/')) + "/torchrun --standalone --nproc-per-node 2 --no-python " +
                          OWL2_BINARY + " eval --model " + r + "/run/final --bench vqav2 --data " + r +
                          "/bench/vqav2 --out " + out + "/two --batch-size 3 > " + out + "/two.log 2>&1";
  const int rc = std::system(run.c_str());
  INFO(read_text(out + "/two.log"));
  REQUIRE(rc == 0);
  const auto two = nlohmann::json::parse(read_text(out + "/two/vqav2/metrics.json"));
  CHECK(two["generated"] == 6);
  CHECK(two["scores"] == single["scores"]);
  CHECK(cached(out + "/two/vqav2") == cached(out + "/one/vqav2"));
  CHECK_FALSE(fs::exists(ev::rank_cache_path(out + "/two/vqav2", 1)));  // merged into the cache file
  // The metrics line comes once, from rank 0.
  const std::string log = read_text(out + "/two.log");
  CHECK(log.find("{\"bench\"") == log.rfind("{\"bench\""));
}

}  // namespace owl2_test_bench_eval
