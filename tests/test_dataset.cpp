// Dataset readers: tar shards, JSONL, LLaVA JSON, mixtures, bad-input accounting and `owl2 data verify`.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "data/dataset.h"
#include "data/synth.h"
#include "data/tar.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_dataset {

namespace fs = std::filesystem;
using namespace owl2::data;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("owl2_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

std::string png_of(int64_t i) { return render_scene_png(make_scene(0, "train", i), 32); }

ReadOptions quiet(std::shared_ptr<BadInputLog> log, double max_bad = 1.0) {
  ReadOptions o;
  o.log = std::move(log);
  o.max_bad_fraction = max_bad;
  return o;
}

}  // namespace

TEST_CASE("dataset: synthetic tar shards read back as captioned pairs", "[data][dataset]") {
  const auto dir = temp_dir("ds_tar");
  SynthOptions so;
  so.out_dir = dir.string();
  so.train_images = 25;
  so.heldout_images = 3;
  so.train_text = 2;
  so.heldout_text = 1;
  so.shard_size = 10;
  write_synth_dataset(so);
  auto log = std::make_shared<BadInputLog>();
  const auto ds = open_dataset((dir / "pretrain").string(), quiet(log, 0.0));
  REQUIRE(ds->size() == 25);
  CHECK(log->total() == 0);
  for (size_t i : {0u, 9u, 10u, 24u}) {
    const RawSample s = ds->get(i);
    CHECK(s.caption == make_scene(0, "train", static_cast<int64_t>(i)).caption);
    REQUIRE(s.images.size() == 1);
    CHECK(s.images[0] == owl2::test::read_text((dir / fmt::format("images/train/{:06d}.png", i)).string()));
    CHECK(s.turns.empty());
    CHECK(s.id == fmt::format("{:05d}{:04d}", i / 10, i % 10));
    CHECK(ds->info(i).num_images == 1);
    CHECK(ds->info(i).text_chars == static_cast<int64_t>(s.caption.size()));
  }
  fs::remove_all(dir);
}

TEST_CASE("dataset: gzip-compressed shards read like plain ones", "[data][dataset]") {
  const auto dir = temp_dir("ds_gz");
  write_tar((dir / "s.tar").string(), {{"k1.png", png_of(0)}, {"k1.txt", "first"}, {"k2.png", png_of(1)}, {"k2.txt", "second"}});
  REQUIRE(std::system(("gzip -n " + (dir / "s.tar").string()).c_str()) == 0);
  const auto ds = open_dataset((dir / "s.tar.gz").string(), quiet(std::make_shared<BadInputLog>(), 0.0));
  REQUIRE(ds->size() == 2);
  CHECK(ds->get(1).caption == "second");
  CHECK(ds->get(1).images.at(0) == png_of(1));
  CHECK(ds->get(0).image_paths.at(0) == (dir / "s.tar.gz").string() + ":k1.png");
  fs::remove_all(dir);
}

TEST_CASE("dataset: bad tar members are skipped and counted per reason", "[data][dataset]") {
  const auto dir = temp_dir("ds_badtar");
  write_tar((dir / "00000.tar").string(),
            {{"a.png", png_of(0)}, {"a.txt", "caption a"},
             {"b.txt", "no image"},
             {"c.png", png_of(1)}, {"c.json", "{not json"},
             {"d.png", png_of(2)}, {"d.json", R"({"key": "d"})"},
             {"e.jpg", ""}, {"e.txt", "empty image"},
             {"f.png", png_of(3)}, {"f.json", R"({"caption": "caption from json"})"}});
  // A second shard truncated in the middle of its second member.
  write_tar((dir / "00001.tar").string(), {{"g.png", png_of(4)}, {"g.txt", "caption g"}, {"h.png", std::string(3000, 'x')}});
  fs::resize_file(dir / "00001.tar", 512 * 5 + 100);

  auto log = std::make_shared<BadInputLog>();
  const auto ds = open_tar_shards(dir.string(), quiet(log));
  REQUIRE(ds->size() == 3);
  CHECK(ds->get(0).caption == "caption a");
  CHECK(ds->get(1).caption == "caption from json");
  CHECK(ds->get(2).caption == "caption g");
  const auto counts = log->counts();
  CHECK(counts.at(bad::kMissingImage) == 1);    // b
  CHECK(counts.at(bad::kMalformedJson) == 1);   // c
  CHECK(counts.at(bad::kMissingCaption) == 1);  // d
  CHECK(counts.at(bad::kCorruptTar) == 2);      // e (empty image), shard 1 truncated
  CHECK(log->total() == 5);
  CHECK(log->worst_files(1).at(0).first == (dir / "00000.tar").string());

  // Over the limit: the error names the counts and the worst file.
  auto log2 = std::make_shared<BadInputLog>();
  CHECK_THROWS_WITH(open_tar_shards(dir.string(), quiet(log2, 0.5)),
                    Catch::Contains("5 of 8 entries are bad") && Catch::Contains("00000.tar (4 bad)") &&
                        Catch::Contains("missing_caption 1"));
  fs::remove_all(dir);
}

TEST_CASE("dataset: JSONL pairs and questions, with bad lines counted", "[data][dataset]") {
  const auto dir = temp_dir("ds_jsonl");
  write(dir / "imgs/x.png", png_of(0));
  write(dir / "imgs/y.png", png_of(1));
  write(dir / "data.jsonl",
        "{\"id\": \"p1\", \"image\": \"imgs/x.png\", \"caption\": \"a caption\"}\n"
        "\n"
        "{\"image\": \"imgs/y.png\", \"text\": \"text alias\"}\n"
        "{\"image\": \"imgs/x.png\", \"caption\": \n"
        "{\"image\": \"imgs/missing.png\", \"caption\": \"gone\"}\n"
        "{\"caption\": \"no image\"}\n"
        "{\"question_id\": 7, \"image\": \"imgs/y.png\", \"question\": \"Q?\", \"prompt\": \"Q?\\nShort.\", \"answer\": \"yes\"}\n"
        "{\"question\": \"What is 1 plus 1?\", \"answer\": \"2\"}\n"
        "[1, 2]\n");
  auto log = std::make_shared<BadInputLog>();
  const auto ds = open_jsonl((dir / "data.jsonl").string(), quiet(log));
  REQUIRE(ds->size() == 4);
  CHECK(ds->get(0).id == "p1");
  CHECK(ds->get(0).caption == "a caption");
  CHECK(ds->get(0).images.at(0) == png_of(0));
  CHECK(ds->get(1).id == "3");  // line number when no id
  CHECK(ds->get(1).caption == "text alias");
  const RawSample q = ds->get(2);
  REQUIRE(q.turns.size() == 2);
  CHECK(q.turns[0].value == "<|image|>\nQ?\nShort.");
  CHECK(q.turns[1].value == "yes");
  CHECK(q.images.at(0) == png_of(1));
  const RawSample t = ds->get(3);
  CHECK(t.images.empty());
  CHECK(t.turns[0].value == "What is 1 plus 1?");
  const auto counts = log->counts();
  CHECK(counts.at(bad::kMalformedJson) == 1);
  CHECK(counts.at(bad::kMissingImage) == 2);  // missing file, caption without image
  CHECK(counts.at(bad::kBadEntry) == 1);      // a list, not an object
  CHECK(log->total() == 4);

  // Image root override: the same lines resolved elsewhere find no files.
  ReadOptions o = quiet(std::make_shared<BadInputLog>());
  o.image_root = (dir / "nowhere").string();
  CHECK(open_jsonl((dir / "data.jsonl").string(), o)->size() == 1);  // only the text-only question
  fs::remove_all(dir);
}

TEST_CASE("dataset: LLaVA JSON with lists of images, system turns, text-only and bad entries", "[data][dataset]") {
  const auto dir = temp_dir("ds_llava");
  write(dir / "a.png", png_of(0));
  write(dir / "b.png", png_of(1));
  write(dir / "llava.json", R"([
 {"id": "one", "image": "a.png", "conversations": [
   {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a shape"}]},
 {"id": 2, "image": ["a.png", "b.png"], "conversations": [
   {"from": "human", "value": "<|image|><|image|>\nCompare."}, {"from": "gpt", "value": "same"}]},
 {"id": "orca", "conversations": [
   {"from": "system", "value": "You are terse."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
 {"id": "sys", "system": "Top-level system.", "conversations": [
   {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
 {"id": "toomany", "image": "a.png", "conversations": [
   {"from": "human", "value": "<|image|> and <|image|>"}, {"from": "gpt", "value": "x"}]},
 {"id": "role", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
 {"id": "nofile", "image": "c.png", "conversations": [
   {"from": "human", "value": "<|image|>"}, {"from": "gpt", "value": "x"}]},
 {"id": "noconv"},
 "not an object"
])");
  std::ostringstream messages;
  auto log = std::make_shared<BadInputLog>(&messages);
  const auto ds = open_llava_json((dir / "llava.json").string(), quiet(log));
  REQUIRE(ds->size() == 4);
  const RawSample a = ds->get(0);
  CHECK(a.id == "one");
  CHECK(a.turns.at(0).value == "<|image|>\nWhat is it?");
  CHECK(a.images.size() == 1);
  const RawSample two = ds->get(1);
  CHECK(two.id == "2");
  REQUIRE(two.images.size() == 2);
  CHECK(two.images[1] == png_of(1));
  CHECK(ds->info(1).num_images == 2);
  const RawSample orca = ds->get(2);
  REQUIRE(orca.turns.size() == 3);
  CHECK(orca.turns[0].from == "system");
  CHECK(orca.images.empty());
  const RawSample sys = ds->get(3);
  REQUIRE(sys.turns.size() == 3);
  CHECK(sys.turns[0].from == "system");
  CHECK(sys.turns[0].value == "Top-level system.");
  const auto counts = log->counts();
  CHECK(counts.at(bad::kPlaceholderMismatch) == 1);
  CHECK(counts.at(bad::kBadEntry) == 3);
  CHECK(counts.at(bad::kMissingImage) == 1);
  CHECK_THAT(messages.str(), Catch::Contains("id \"toomany\"") && Catch::Contains("2 image placeholders, 1 images") &&
                                 Catch::Contains("from 'robot'"));

  write(dir / "broken.json", "[{\"id\": 1,");
  CHECK_THROWS_WITH(open_llava_json((dir / "broken.json").string(), quiet(log)),
                    Catch::Contains("broken.json: not valid JSON"));
  CHECK_THROWS_WITH(open_dataset((dir / "x.csv").string()), Catch::Contains("unknown dataset kind"));
  fs::remove_all(dir);
}

namespace {

// A dataset of n text samples whose id is "<tag><index>".
class Ids : public Dataset {
 public:
  Ids(std::string tag, size_t n) : tag_(std::move(tag)), n_(n) {}
  size_t size() const override { return n_; }
  const std::string& name() const override { return tag_; }
  SampleInfo info(size_t) const override { return {}; }
  RawSample get(size_t i) const override {
    RawSample r;
    r.source = tag_;
    r.id = tag_ + std::to_string(i);
    return r;
  }

 private:
  std::string tag_;
  size_t n_;
};

}  // namespace

TEST_CASE("dataset: weighted mixture apportions and cycles sources deterministically", "[data][dataset]") {
  auto small = std::make_shared<Ids>("s", 10), large = std::make_shared<Ids>("l", 50);
  const auto mix = make_mixture({{small, 3.0}, {large, 1.0}, {std::make_shared<Ids>("z", 5), 0.0}}, 400, 9);
  REQUIRE(mix->size() == 400);
  std::map<std::string, int> per_id, per_source;
  std::vector<std::string> ids;
  for (size_t i = 0; i < mix->size(); ++i) {
    const auto s = mix->get(i);
    ++per_id[s.id];
    ++per_source[s.source];
    ids.push_back(s.id);
  }
  CHECK(per_source["s"] == 300);
  CHECK(per_source["l"] == 100);
  CHECK(per_source.count("z") == 0);
  for (int i = 0; i < 10; ++i) CHECK(per_id["s" + std::to_string(i)] == 30);  // upsampled evenly
  for (int i = 0; i < 50; ++i) CHECK(per_id["l" + std::to_string(i)] == 2);
  // Same seed, same order; another seed, another order.
  const auto again = make_mixture({{small, 3.0}, {large, 1.0}}, 400, 9);
  const auto other = make_mixture({{small, 3.0}, {large, 1.0}}, 400, 10);
  bool same = true, differs = false;
  for (size_t i = 0; i < 400; ++i) {
    same = same && again->get(i).id == ids[i];
    differs = differs || other->get(i).id != ids[i];
  }
  CHECK(same);
  CHECK(differs);
  // Uneven split: 7 over weights 1:1 is 4 + 3 (largest remainder, ties to the first source).
  const auto odd = make_mixture({{small, 1.0}, {large, 1.0}}, 7, 0);
  int from_small = 0;
  for (size_t i = 0; i < odd->size(); ++i) from_small += odd->get(i).source == "s";
  CHECK(from_small == 4);
  CHECK(make_mixture({{small, 1.0}, {large, 1.0}}, 0, 0)->size() == 60);
  CHECK_THROWS_WITH(make_mixture({{small, -1.0}}, 0, 0), Catch::Contains("weight -1"));
  CHECK_THROWS_WITH(make_mixture({{std::make_shared<Ids>("e", 0), 1.0}}, 0, 0), Catch::Contains("no samples"));
}

TEST_CASE("dataset: bad-input messages are rate limited", "[data][dataset]") {
  std::ostringstream out;
  BadInputLog log(&out, 2);
  for (int i = 1; i <= 2000; ++i) log.report(bad::kMissingImage, "f.jsonl", "f.jsonl:" + std::to_string(i), "gone");
  log.report(bad::kBadEntry, "g.json", "g.json[0]", "odd");
  const std::string s = out.str();
  CHECK_THAT(s, Catch::Contains("f.jsonl:1: gone") && Catch::Contains("f.jsonl:2: gone") &&
                    Catch::Contains("every 1000th") && Catch::Contains("f.jsonl:1000: gone [1000 so far]") &&
                    Catch::Contains("f.jsonl:2000: gone [2000 so far]") && Catch::Contains("g.json[0]: odd"));
  CHECK_THAT(s, !Catch::Contains("f.jsonl:3: gone"));
  CHECK(log.total() == 2001);
  CHECK(log.summary() == "bad_entry 1, missing_image 2000");
  CHECK(log.worst_files().at(0) == std::make_pair(std::string("f.jsonl"), size_t{2000}));
}

TEST_CASE("dataset: owl2 data verify counts bad input and fails over the limit", "[data][dataset][cli]") {
  const auto dir = temp_dir("ds_verify");
  write(dir / "ok1.png", png_of(0));
  write(dir / "ok2.png", png_of(1));
  write(dir / "ok3.png", png_of(2));
  write(dir / "broken.png", png_of(3).substr(0, 40));  // truncated PNG
  write(dir / "d.jsonl",
        "{\"image\": \"ok1.png\", \"caption\": \"a\"}\n"
        "{\"image\": \"ok2.png\", \"caption\": \"b\"}\n"
        "{\"image\": \"ok3.png\", \"caption\": \"c\"}\n"
        "{\"image\": \"broken.png\", \"caption\": \"d\"}\n"
        "{\"image\": \"absent.png\", \"caption\": \"e\"}\n"
        "oops\n");
  const auto r = owl2::test::run_owl2("data verify " + (dir / "d.jsonl").string());
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Catch::Contains("3 good samples, 4 images, 3 bad") && Catch::Contains("corrupt_image: 1") &&
                        Catch::Contains("missing_image: 1") && Catch::Contains("malformed_json: 1") &&
                        Catch::Contains("FAIL"));
  const auto lenient = owl2::test::run_owl2("data verify --max-bad-fraction 0.5 " + (dir / "d.jsonl").string());
  CHECK(lenient.rc == 0);
  CHECK_THAT(lenient.out, Catch::Contains("\nok"));
  CHECK(owl2::test::run_owl2("data verify " + (dir / "nothing.jsonl").string()).rc == 1);

  // In shards, an undecodable image is charged to its shard.
  fs::create_directories(dir / "shards");
  write_tar((dir / "shards/00000.tar").string(), {{"a.png", png_of(0)}, {"a.txt", "ok"}, {"b.png", "not a png"}, {"b.txt", "bad"}});
  const auto shard = owl2::test::run_owl2("data verify " + (dir / "shards").string());
  CHECK(shard.rc == 1);
  CHECK_THAT(shard.out, Catch::Contains("1 good samples, 2 images, 1 bad") &&
                            Catch::Contains((dir / "shards/00000.tar").string() + ": 1") &&
                            Catch::Contains("00000.tar:b.png: image bytes do not decode"));
  fs::remove_all(dir);
}

TEST_CASE("dataset: owl2 data synth output verifies clean in every format", "[data][dataset][cli]") {
  const auto dir = temp_dir("ds_cli_synth");
  const auto r = owl2::test::run_owl2("data synth --out " + dir.string() +
                                      " --seed 3 --train 12 --heldout 3 --train-text 4 --heldout-text 2 --shard-size 5");
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, Catch::Contains("12 pretraining pairs in 3 shards, 16 instruction samples, 21 held-out questions"));
  CHECK(owl2::test::run_owl2("data verify " + (dir / "pretrain").string()).out.find("12 good samples, 12 images, 0 bad") !=
        std::string::npos);
  CHECK(owl2::test::run_owl2("data verify " + (dir / "llava_train.json").string()).out.find("16 good samples, 12 images, 0 bad") !=
        std::string::npos);
  CHECK(owl2::test::run_owl2("data verify " + (dir / "heldout.jsonl").string()).out.find("21 good samples, 19 images, 0 bad") !=
        std::string::npos);
  const auto bad = owl2::test::run_owl2("data synth --out " + dir.string() + " --heldout 0");
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.out, Catch::Contains("heldout 0"));
  fs::remove_all(dir);
}

TEST_CASE("shard patterns: ranges keep their zero padding, alternatives and several braces multiply", "[dataset]") {
  using owl2::data::expand_shard_pattern;
  CHECK(expand_shard_pattern("a.tar") == std::vector<std::string>{"a.tar"});
  CHECK(expand_shard_pattern("s-{000008..000011}.tar") ==
        std::vector<std::string>{"s-000008.tar", "s-000009.tar", "s-000010.tar", "s-000011.tar"});
  CHECK(expand_shard_pattern("s-{8..11}.tar") == std::vector<std::string>{"s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"});
  CHECK(expand_shard_pattern("{a,b}/p{0..1}.tar") ==
        std::vector<std::string>{"a/p0.tar", "a/p1.tar", "b/p0.tar", "b/p1.tar"});
  CHECK(expand_shard_pattern("x{00..99}").size() == 100);
  CHECK_THROWS_WITH(expand_shard_pattern("s-{3..1}.tar"), Catch::Matchers::Contains("'s-{3..1}.tar': the range {3..1} decreases"));
  CHECK_THROWS_WITH(expand_shard_pattern("s-{1..x}.tar"), Catch::Matchers::Contains("not a range of non-negative integers"));
  CHECK_THROWS_WITH(expand_shard_pattern("s-{1..2.tar"), Catch::Matchers::Contains("'{' without '}'"));
  CHECK_THROWS_WITH(expand_shard_pattern("s-1}.tar"), Catch::Matchers::Contains("'}' without '{'"));
  CHECK_THROWS_WITH(expand_shard_pattern("{0..99999}{0..999}"), Catch::Matchers::Contains("more than 10000000 names"));
}

}  // namespace owl2_test_dataset
