// Real public files from shared/data/real/ (beside the checkout, as in CI): the CC12M shard through the WebDataset
// reader and the CLIP preprocessing against PIL (tests/fixtures/real/cc12m_golden.json, made by
// scripts/make_real_data_golden.py), a few training steps of the tiny model on it, and the POPE question files
// through `owl2 eval --bench pope` with stand-in images under the COCO names.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/image.h"
#include "eval/bench_suite.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_real_data {

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::run_owl2;
using owl2::test::source_path;
namespace fs = std::filesystem;
namespace ev = owl2::eval;
using nlohmann::json;

namespace {

// shared/data/real/<name>: $OWL2_REAL_DATA if set, else shared/ beside the checkout (here and in CI) or inside it.
// A missing file fails the test, naming the places looked at.
std::string real_data(const std::string& name) {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("OWL2_REAL_DATA")) dirs.emplace_back(env);
  dirs.push_back(fs::path(OWL2_SOURCE_DIR).parent_path() / "shared" / "data" / "real");
  dirs.push_back(fs::path(OWL2_SOURCE_DIR) / "shared" / "data" / "real");
  std::string tried;
  for (const auto& d : dirs) {
    if (fs::exists(d / name)) return (d / name).string();
    tried += " " + (d / name).string();
  }
  FAIL(name << " is missing (looked at" << tried << "): these tests read the public files of shared/data/real/, "
            "which sits beside the checkout; OWL2_REAL_DATA=DIR names another place");
  return {};
}

const json& golden() {
  static const json g = json::parse(read_text(source_path("tests/fixtures/real/cc12m_golden.json")));
  return g;
}

std::shared_ptr<owl2::data::Dataset> cc12m(std::shared_ptr<owl2::data::BadInputLog> log) {
  owl2::data::ReadOptions o;
  o.log = std::move(log);
  o.max_bad_fraction = 0;  // a single skipped pair is an error
  return owl2::data::open_tar_shards(real_data("cc12m-train-0000.tar"), o);
}

// The make_real_data_golden.py checksum of a uint8 tensor (CHW order).
uint64_t checksum(const torch::Tensor& u8) {
  const auto c = u8.contiguous();
  const uint8_t* p = c.data_ptr<uint8_t>();
  uint64_t sum = 0;
  for (uint64_t i = 0; i < static_cast<uint64_t>(c.numel()); ++i) sum += p[i] * ((i * 0x9E3779B97F4A7C15ull) | 1);
  return sum;
}

// A tiny-model run on the CC12M shard (the fixture tokenizer, so the decoder has its 1,000-piece vocabulary).
std::string write_cc12m_run(const std::string& root, const std::string& train) {
  fs::create_directories(root);
  const std::string path = root + "/run.yaml";
  std::ofstream(path) << "include: " << source_path("configs/model/tiny.yaml") << "\n"
                      << "model: {decoder: {vocab_size: 1000}}\n"
                      << "optim: {lr: 1.0e-3, warmup_steps: 1}\n"
                      << "train: {" << train << ", max_length: 256, out_dir: " << root << "/run}\n"
                      << "data: {tokenizer: " << source_path("tests/fixtures/tokenizer/tiny_llama.model")
                      << ", sources: [{path: " << real_data("cc12m-train-0000.tar") << "}], num_workers: 1}\n";
  return path;
}

}  // namespace

TEST_CASE("the CC12M shard through the WebDataset reader: 32 pairs with the captions of the txt members",
          "[real][dataset]") {
  auto log = std::make_shared<owl2::data::BadInputLog>();
  const auto ds = cc12m(log);
  const json& samples = golden()["samples"];
  REQUIRE(samples.size() == 32);
  REQUIRE(ds->size() == 32);
  CHECK(log->total() == 0);
  for (size_t i = 0; i < ds->size(); ++i) {
    const json& g = samples[i];
    const auto s = ds->get(i);
    INFO(g["key"]);
    CHECK(s.id == g["key"].get<std::string>());  // archive order, as Python's tarfile lists it
    CHECK(s.caption == g["caption"].get<std::string>());
    CHECK(s.turns.empty());
    REQUIRE(s.images.size() == 1);
    CHECK_THAT(s.image_paths[0], Contains("cc12m-train-0000.tar:" + g["key"].get<std::string>() + ".jpg"));
    CHECK(ds->info(i).num_images == 1);
    CHECK(ds->info(i).text_chars == static_cast<int64_t>(s.caption.size()));
    if (!owl2::image_decoding_available()) continue;
    const auto rgb = owl2::decode_image(s.images[0], s.image_paths[0]);
    CHECK(rgb.size(0) == g["height"].get<int64_t>());
    CHECK(rgb.size(1) == g["width"].get<int64_t>());
  }
}

TEST_CASE("WebDataset shards named by a brace pattern or a JSON shard list read as the tar itself", "[real][dataset]") {
  namespace data = owl2::data;
  const fs::path shard = real_data("cc12m-train-0000.tar");
  const std::string dir = owl2::test::temp_dir("owl2_shard_names");
  // Two copies of the real shard, named as a sharded dataset would be.
  for (const char* name : {"/part-00.tar", "/part-01.tar"}) fs::copy_file(shard, dir + name);
  std::ofstream(dir + "/shards.json") << R"(["part-00.tar", "part-01.tar"])";
  data::ReadOptions o;
  o.max_bad_fraction = 0;
  const auto one = data::open_tar_shards(shard.string(), o);
  const auto pattern = data::open_dataset(dir + "/part-{00..01}.tar", o);
  const auto list = data::open_dataset(dir + "/shards.json", o);
  REQUIRE(one->size() == 32);
  for (const auto& ds : {pattern, list}) {
    REQUIRE(ds->size() == 64);
    for (size_t i = 0; i < ds->size(); ++i) {
      const auto a = ds->get(i), b = one->get(i % 32);
      CHECK(a.caption == b.caption);
      CHECK(a.images == b.images);
      CHECK(a.image_paths.at(0).find(i < 32 ? "part-00.tar:" : "part-01.tar:") != std::string::npos);
    }
  }
  CHECK(data::is_shard_list(dir + "/shards.json"));
  CHECK_THROWS_WITH(data::open_dataset(dir + "/part-{00..02}.tar", o),
                    Catch::Matchers::Contains("part-02.tar does not exist (3 shards named)"));
  std::ofstream(dir + "/bad.json") << R"(["part-00.tar", 7])";
  CHECK_THROWS_WITH(data::open_dataset(dir + "/bad.json", o), Catch::Matchers::Contains("bad.json: entry 1 is not a string"));
}

TEST_CASE("CC12M JPEGs preprocess within 1e-6 of PIL + CLIPImageProcessor in all three modes", "[real][image]") {
  if (!owl2::image_decoding_available()) return;
  // One intra-op thread: the tensors are small, and under CTest's parallel load a pool is 3x slower (measured).
  struct OneThread {
    int before = torch::get_num_threads();
    OneThread() { torch::set_num_threads(1); }
    ~OneThread() { torch::set_num_threads(before); }
  } one_thread;
  const auto ds = cc12m(nullptr);
  const json& g = golden();
  std::vector<float> lut_values;
  for (const auto& row : g["lut"])
    for (const auto& v : row) lut_values.push_back(v.get<float>());
  REQUIRE(lut_values.size() == 3 * 256);
  const auto lut = torch::tensor(lut_values).view({3, 256});
  const auto mean = torch::tensor(g["mean"].get<std::vector<double>>(), torch::kDouble).view({3, 1, 1});
  const auto stdev = torch::tensor(g["std"].get<std::vector<double>>(), torch::kDouble).view({3, 1, 1});
  const auto channel = torch::arange(3).view({3, 1, 1});
  owl2::ImageConfig cfg;
  cfg.size = g["size"].get<int64_t>();
  double worst_lut = 0, worst_sample = 0;
  int cases = 0;
  for (size_t i = 0; i < ds->size(); ++i) {
    const json& sample = g["samples"][i];
    const auto rgb = owl2::decode_image(ds->get(i).images[0], sample["key"].get<std::string>());
    for (const auto& [mode, want] : sample["modes"].items()) {
      INFO(sample["key"] << " " << mode << " (" << rgb.size(1) << "x" << rgb.size(0) << ")");
      cfg.mode = owl2::parse_image_mode(mode);
      const auto ours = owl2::preprocess_image(rgb, cfg);
      REQUIRE(ours.sizes() == torch::IntArrayRef({3, cfg.size, cfg.size}));
      // The uint8 image ours normalised, and the processor's value for each of its pixels.
      const auto u8 = ((ours.to(torch::kDouble) * stdev + mean) * 255).round().clamp(0, 255).to(torch::kUInt8);
      const double off_lut = (ours - lut.index({channel, u8.to(torch::kLong)})).abs().max().item<double>();
      CHECK(off_lut < 1e-6);
      CHECK(fmt::format("{:016x}", checksum(u8)) == want["checksum"].get<std::string>());
      CHECK(u8.to(torch::kLong).sum({1, 2}).equal(torch::tensor(want["channel_sums"].get<std::vector<int64_t>>())));
      for (const auto& v : want["values"]) {
        const double d = std::abs(ours[v[0].get<int64_t>()][v[1].get<int64_t>()][v[2].get<int64_t>()].item<double>() -
                                  v[3].get<double>());
        CHECK(d < 1e-6);
        worst_sample = std::max(worst_sample, d);
      }
      worst_lut = std::max(worst_lut, off_lut);
      ++cases;
    }
  }
  CHECK(cases == 96);
  WARN("max |ours - processor value of the same uint8| " << worst_lut << ", at the sampled elements " << worst_sample);
}

TEST_CASE("owl2 train runs the tiny model on the CC12M shard: every pair and caption token of one epoch",
          "[real][train][cli]") {
  setenv("OMP_NUM_THREADS", "1", 1);  // one intra-op thread per process under CTest's parallel load
  const std::string root = "build/test_real_train";
  fs::remove_all(root);
  // 4 steps of 8 = the 32 pairs once.
  const std::string config = write_cc12m_run(root, "steps: 4, global_batch_size: 8, micro_batch_size: 4");
  const auto r = run_owl2("train --config " + config);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(fs::exists(root + "/run/final/model.safetensors"));
  int64_t caption_tokens = 0;  // supervised: the caption's pieces and EOS (BOS and the image are not)
  for (const auto& s : golden()["samples"]) caption_tokens += s["tokens"].get<int64_t>() + 1;
  std::ifstream f(root + "/run/metrics.jsonl");
  int64_t steps = 0, tokens = 0;
  for (std::string line; std::getline(f, line); ++steps) {
    const json j = json::parse(line);
    INFO(line);
    CHECK(j["step"] == steps);
    CHECK(j["samples"] == 8);
    CHECK(j["skipped_samples"] == 0);
    CHECK(j["skipped_step"] == false);
    REQUIRE(j["loss"].is_number());
    CHECK(std::isfinite(j["loss"].get<double>()));
    if (steps == 0) CHECK(j["loss"].get<double>() == Approx(std::log(1000.0)).margin(0.5));  // near uniform at init
    tokens += j["tokens"].get<int64_t>();
  }
  CHECK(steps == 4);
  CHECK(tokens == caption_tokens);
}

namespace {

// Hand-made answers and what POPE's evaluation makes of them (eval_metrics.md §2.3: the text before the first
// '.', commas deleted, split on single spaces; a word "No", "not" or "no" means no, anything else yes).
struct HandAnswer {
  const char* text;
  bool yes;
};
const std::vector<HandAnswer> kHandAnswers = {
    {"Yes", true},
    {"No", false},
    {"no", false},
    {"NO", true},                                   // only the three spellings count
    {"Yes, there is a dog in the image.", true},
    {"No, there is no dog.", false},
    {"There is not a dog in the image.", false},
    {"Nope", true},
    {"I don't think so", true},
    {"Yes. No.", true},                              // the first sentence only
    {"There is a cat. There is no dog.", true},
    {"no, it is not", false},
    {"Not at all", true},
    {"", true},
    {"nothing", true},
    {"Certainly\tno", true},                         // split on ' ' alone: "Certainly\tno" is one word
    {"It is not.", false},
    {"3.5 no", true},                                // the first "sentence" is "3"
    {"The answer is no", false},
    {"No\nthere is none", true},                     // "No\nthere" is one word
    {"Yes,no", true},                                // commas deleted: "Yesno"
    {"no.", false},
    {",no", false},
};

struct PopeQuestion {
  json question_id;
  std::string image;
  bool yes = false;
};

// The questions of one POPE file as written.
std::vector<PopeQuestion> read_pope_file(const std::string& path) {
  std::vector<PopeQuestion> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    const json j = json::parse(line);
    REQUIRE((j["label"] == "yes" || j["label"] == "no"));
    REQUIRE(j["question_id"].is_number_integer());
    out.push_back({j["question_id"], j["image"].get<std::string>(), j["label"] == "yes"});
  }
  return out;
}

}  // namespace

TEST_CASE("the POPE question files through owl2 eval --bench pope: hand-made answers score as POPE's evaluation does",
          "[real][eval][bench][cli]") {
  setenv("OMP_NUM_THREADS", "1", 1);
  const std::string root = "build/test_real_pope";
  fs::remove_all(root);
  // A tiny model: one step on the CC12M shard.
  const auto trained = run_owl2("train --config " +
                                write_cc12m_run(root, "steps: 1, global_batch_size: 4, micro_batch_size: 4"));
  INFO(trained.out);
  REQUIRE(trained.rc == 0);
  const std::string model = root + "/run/final";

  // Stand-in images: the CC12M photos, saved under the COCO names the questions ask about.
  std::vector<std::string> standins;
  {
    const auto ds = cc12m(nullptr);
    fs::create_directories(root + "/standins");
    for (size_t i = 0; i < ds->size(); ++i) {
      standins.push_back(fs::absolute(root + "/standins/" + std::to_string(i) + ".jpg").string());
      std::ofstream(standins.back(), std::ios::binary) << ds->get(i).images[0];
    }
  }
  std::map<std::string, std::string> standin_of;  // COCO name -> stand-in
  const auto add_images = [&](const std::string& dir, const std::vector<PopeQuestion>& qs) {
    fs::create_directories(dir + "/val2014");
    for (const auto& q : qs) {
      const std::string next = standins[standin_of.size() % standins.size()];
      standin_of.emplace(q.image, next);  // a name seen before keeps its stand-in
      const std::string link = dir + "/val2014/" + q.image;
      if (!fs::exists(link)) fs::create_symlink(standin_of[q.image], link);
    }
  };

  // 1. The three files as published (3 x 3,000 questions on 500 images), every answer hand-made and put in the
  //    prediction cache, so that the binary reads, post-processes and scores them without generating.
  const std::vector<std::string> splits = {"adversarial", "popular", "random"};
  const std::string full = root + "/pope";
  const std::string out = root + "/out";
  std::map<std::string, std::vector<PopeQuestion>> questions;
  std::map<std::string, std::array<int64_t, 4>> want;  // tp, fp, tn, fn
  std::set<std::pair<size_t, bool>> seen;              // (hand answer, label) pairs the files exercise
  std::vector<std::pair<std::string, std::string>> cache;
  for (size_t s = 0; s < splits.size(); ++s) {
    const std::string name = "coco_pope_" + splits[s] + ".json";
    fs::create_directories(full);
    fs::create_symlink(real_data(name), full + "/" + name);
    questions[splits[s]] = read_pope_file(real_data(name));
    const auto& qs = questions[splits[s]];
    REQUIRE(qs.size() == 3000);
    add_images(full, qs);
    auto& w = want[splits[s]];
    w = {0, 0, 0, 0};
    for (size_t i = 0; i < qs.size(); ++i) {
      const size_t a = (i + s) % kHandAnswers.size();
      const bool pred = kHandAnswers[a].yes, truth = qs[i].yes;
      seen.insert({a, truth});
      ++w[pred && truth ? 0 : pred ? 1 : !truth ? 2 : 3];
      cache.emplace_back(splits[s] + "/" + std::to_string(qs[i].question_id.get<int64_t>()), kHandAnswers[a].text);
    }
  }
  CHECK(standin_of.size() == 500);
  CHECK(seen.size() == 2 * kHandAnswers.size());  // every hand answer meets both labels
  ev::append_predictions(ev::merged_cache_path(out + "/pope"), cache);
  const auto run = run_owl2("eval --model " + model + " --bench pope --data " + full + " --out " + out);
  INFO(run.out);
  REQUIRE(run.rc == 0);
  json m = json::parse(read_text(out + "/pope/metrics.json"));
  CHECK(m["questions"] == 9000);
  CHECK(m["generated"] == 0);
  CHECK(m["cached"] == 9000);
  double f1_sum = 0;
  for (const auto& split : splits) {
    INFO(split);
    const auto [tp, fp, tn, fn] = want[split];
    json& got = m["scores"][split];
    CHECK(got["questions"] == 3000);
    CHECK(got["tp"] == tp);
    CHECK(got["fp"] == fp);
    CHECK(got["tn"] == tn);
    CHECK(got["fn"] == fn);
    const double precision = double(tp) / double(tp + fp), recall = double(tp) / double(tp + fn);
    const double f1 = 2 * precision * recall / (precision + recall);
    CHECK(got["precision"].get<double>() == Approx(precision).epsilon(1e-12));
    CHECK(got["recall"].get<double>() == Approx(recall).epsilon(1e-12));
    CHECK(got["f1"].get<double>() == Approx(f1).epsilon(1e-12));
    CHECK(got["accuracy"].get<double>() == Approx(double(tp + tn) / 3000).epsilon(1e-12));
    CHECK(got["yes_ratio"].get<double>() == Approx(double(tp + fp) / 3000).epsilon(1e-12));
    f1_sum += f1;
    // The answers file: every question of the file, in its order, with the hand-made text.
    std::ifstream answers(out + "/pope/answers_" + split + ".jsonl");
    size_t n = 0;
    for (std::string line; std::getline(answers, line); ++n) {
      const json a = json::parse(line);
      REQUIRE(n < questions[split].size());
      CHECK(a["question_id"] == questions[split][n].question_id);
    }
    CHECK(n == 3000);
    CHECK_FALSE(fs::exists(out + "/pope/coco_pope_" + split + "_subset.json"));  // the whole file was scored
  }
  CHECK(m["headline"]["value"].get<double>() == Approx(100 * f1_sum / 3).epsilon(1e-12));

  // A label that is neither "yes" nor "no" is an error naming the file and the line.
  {
    std::ifstream src(real_data("coco_pope_random.json"));
    std::ofstream bad(root + "/bad_random.json");
    size_t n = 0;
    for (std::string line; std::getline(src, line);) {
      if (++n == 1234) {
        json j = json::parse(line);
        j["label"] = "Yes";
        line = j.dump();
      }
      bad << line << "\n";
    }
  }
  const auto bad = run_owl2("score --metric pope --refs " + root + "/bad_random.json --preds " + out +
                            "/pope/answers_random.jsonl");
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.out, Contains(root + "/bad_random.json: line 1234: label 'Yes' is not yes/no"));

  // 2. The model answers real questions on the stand-ins: lines 1, 2, 7 and 8 of each file (two images).
  const std::string sub = root + "/pope_subset";
  fs::create_directories(sub);
  for (const auto& split : splits) {
    std::ifstream src(real_data("coco_pope_" + split + ".json"));
    std::ofstream dst(sub + "/coco_pope_" + split + ".json");
    std::vector<PopeQuestion> kept;
    size_t n = 0;
    for (std::string line; std::getline(src, line); ++n)
      if (n == 0 || n == 1 || n == 6 || n == 7) {
        dst << line << "\n";
        kept.push_back(questions[split][n]);
      }
    add_images(sub, kept);
  }
  const auto gen = run_owl2("eval --model " + model + " --bench pope --data " + sub + " --out " + root +
                            "/out_subset --batch-size 4");
  INFO(gen.out);
  REQUIRE(gen.rc == 0);
  json g = json::parse(read_text(root + "/out_subset/pope/metrics.json"));
  CHECK(g["questions"] == 12);
  CHECK(g["generated"] == 12);
  REQUIRE(g["files"].size() == 3);
  for (const auto& f : g["files"]) {
    const std::string split = f.at("name").get<std::string>();
    CHECK(g["scores"][split]["questions"] == 4);
    const auto again = run_owl2("score --metric pope --refs " + f.at("refs").get<std::string>() + " --preds " +
                                f.at("preds").get<std::string>());
    INFO(again.out);
    REQUIRE(again.rc == 0);
    CHECK(json::parse(again.out) == g["scores"][split]);
  }
}

}  // namespace owl2_test_real_data
