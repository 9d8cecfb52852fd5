// The synthetic dataset: determinism, rendering, question coverage, file formats; and tar round trips.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <set>

#include "data/synth.h"
#include "data/tar.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_synth {

namespace fs = std::filesystem;
using namespace owl2::data;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("owl2_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// FNV-1a over every file's relative path and bytes, in sorted path order.
uint64_t hash_tree(const fs::path& root) {
  std::vector<std::string> rels;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) rels.push_back(fs::relative(e.path(), root).string());
  std::sort(rels.begin(), rels.end());
  uint64_t h = 1469598103934665603ull;
  const auto eat = [&h](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  };
  for (const auto& r : rels) {
    eat(r);
    eat(owl2::test::read_text((root / r).string()));
  }
  return h;
}

SynthOptions small(const fs::path& out, uint64_t seed) {
  SynthOptions o;
  o.out_dir = out.string();
  o.seed = seed;
  o.train_images = 30;
  o.heldout_images = 9;
  o.train_text = 10;
  o.heldout_text = 5;
  o.shard_size = 12;
  return o;
}

}  // namespace

TEST_CASE("synth: same seed gives byte-identical files, another seed differs", "[data][synth]") {
  const auto a = temp_dir("synth_a"), b = temp_dir("synth_b"), c = temp_dir("synth_c");
  const auto sa = write_synth_dataset(small(a, 7));
  write_synth_dataset(small(b, 7));
  write_synth_dataset(small(c, 8));
  CHECK(hash_tree(a) == hash_tree(b));
  CHECK(hash_tree(a) != hash_tree(c));
  CHECK(sa.pretrain_pairs == 30);
  CHECK(sa.pretrain_shards == 3);  // 12 + 12 + 6
  CHECK(sa.instruct_samples == 40);
  // 3 images of each count; count-1 images get 7 questions (with position), the others 6.
  CHECK(sa.heldout_questions == 3 * 7 + 6 * 6 + 5);
  for (const auto& f : sa.files) CHECK(fs::exists(a / f));
  for (const auto& p : {a, b, c}) fs::remove_all(p);
}

TEST_CASE("synth: rendered pixels match the scene (colour, background, position)", "[data][synth]") {
  int seen_positions = 0;
  for (int64_t i = 0; i < 24; ++i) {
    const Scene s = make_scene(3, "train", i);
    REQUIRE(static_cast<int>(s.placed.size()) == s.count);
    const std::string png = render_scene_png(s, 32);
    const cv::Mat img = cv::imdecode(std::vector<uchar>(png.begin(), png.end()), cv::IMREAD_COLOR);
    REQUIRE(img.rows == 32);
    REQUIRE(img.cols == 32);
    const Rgb c = color_rgb(s.color);
    // Every shape's centre has the colour; the image corner is background.
    for (const auto& p : s.placed) {
      const auto px = img.at<cv::Vec3b>(static_cast<int>(std::lround(p.cy * 32)), static_cast<int>(std::lround(p.cx * 32)));
      CHECK(px == cv::Vec3b(c.b, c.g, c.r));
    }
    CHECK(img.at<cv::Vec3b>(0, 0) == cv::Vec3b(kBackground.b, kBackground.g, kBackground.r));
    if (s.count == 1) {
      // The centre of mass of the coloured pixels lies in the named region.
      double sx = 0, sy = 0, n = 0;
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x)
          if (img.at<cv::Vec3b>(y, x) != cv::Vec3b(0, 0, 0)) sx += x, sy += y, ++n;
      REQUIRE(n > 50);
      sx /= n, sy /= n;
      if (s.position == "left") CHECK(sx < 12);
      if (s.position == "right") CHECK(sx > 20);
      if (s.position == "top") CHECK(sy < 12);
      if (s.position == "bottom") CHECK(sy > 20);
      CHECK_THAT(s.caption, Catch::Contains(s.position));
      ++seen_positions;
    } else {
      CHECK(s.position.empty());
    }
  }
  CHECK(seen_positions == 8);
}

TEST_CASE("synth: held-out split has every question type and well-formed answers", "[data][synth]") {
  const auto dir = temp_dir("synth_heldout");
  write_synth_dataset(small(dir, 1));
  std::ifstream f(dir / "heldout.jsonl");
  std::map<std::string, int> types;
  std::set<int64_t> ids;
  std::string line;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string type = j.at("type");
    const std::string answer = j.at("answer");
    ++types[type];
    ids.insert(j.at("question_id").get<int64_t>());
    if (type == "text") {
      CHECK_FALSE(j.contains("image"));
    } else {
      CHECK(fs::exists(dir / j.at("image").get<std::string>()));
    }
    const std::string prompt = j.at("prompt");
    if (type == "mc") {
      CHECK((answer == "A" || answer == "B" || answer == "C" || answer == "D"));
      CHECK_THAT(prompt, Catch::EndsWith(kMultipleChoicePrompt));
      // The answer letter names an option that appears in the question.
      CHECK_THAT(j.at("question").get<std::string>(), Catch::Contains("\n" + answer + ". "));
    } else if (type != "caption") {
      CHECK_THAT(prompt, Catch::EndsWith(kShortAnswerPrompt));
      CHECK(answer.find(' ') == std::string::npos);  // one word
    }
    if (type == "yesno") CHECK((answer == "yes" || answer == "no"));
    if (type == "count") CHECK((answer == "1" || answer == "2" || answer == "3"));
  }
  for (const char* t : {"caption", "color", "shape", "position", "count", "yesno", "mc", "text"})
    CHECK(types[t] > 0);
  CHECK(ids.size() == 3 * 7 + 6 * 6 + 5);
  fs::remove_all(dir);
}

TEST_CASE("synth: LLaVA JSON has image placeholders on the first human turn only", "[data][synth]") {
  const auto dir = temp_dir("synth_llava");
  write_synth_dataset(small(dir, 2));
  const auto j = nlohmann::json::parse(owl2::test::read_text((dir / "llava_train.json").string()));
  REQUIRE(j.size() == 40);
  int text_only = 0;
  for (const auto& s : j) {
    const auto& conv = s.at("conversations");
    REQUIRE(conv.size() % 2 == 0);
    for (size_t t = 0; t < conv.size(); ++t) {
      CHECK(conv[t].at("from") == (t % 2 ? "gpt" : "human"));
      const std::string v = conv[t].at("value");
      const bool has = v.find("<|image|>") != std::string::npos;
      CHECK(has == (t == 0 && s.contains("image")));
      if (has) CHECK(v.rfind("<|image|>\n", 0) == 0);
    }
    if (!s.contains("image")) ++text_only;
  }
  CHECK(text_only == 10);

  // corpus.txt: the captions, then every turn line without the placeholder.
  const std::string corpus = owl2::test::read_text((dir / "corpus.txt").string());
  CHECK(corpus.rfind(make_scene(2, "train", 0).caption + "\n" + make_scene(2, "train", 1).caption + "\n", 0) == 0);
  CHECK(corpus.find("<|image|>") == std::string::npos);
  CHECK(corpus.find("\n\n") == std::string::npos);
  CHECK_THAT(corpus, Catch::Contains("\nAnswer the question using a single word or phrase.\n"));
  fs::remove_all(dir);
}

TEST_CASE("synth: rounds sets the question rounds per image conversation, each type asked once", "[data][synth]") {
  const auto dir3 = temp_dir("synth_rounds3"), dir7 = temp_dir("synth_rounds7");
  SynthOptions o3 = small(dir3, 4), o7 = small(dir7, 4);
  o7.rounds = 7;
  write_synth_dataset(o3);
  write_synth_dataset(o7);
  const auto j3 = nlohmann::json::parse(owl2::test::read_text((dir3 / "llava_train.json").string()));
  const auto j7 = nlohmann::json::parse(owl2::test::read_text((dir7 / "llava_train.json").string()));
  REQUIRE(j3.size() == j7.size());
  int images = 0;
  for (size_t k = 0; k < j7.size(); ++k) {
    const auto& c3 = j3[k].at("conversations");
    const auto& c7 = j7[k].at("conversations");
    CHECK(j3[k].at("id") == j7[k].at("id"));
    if (!j7[k].contains("image")) {
      CHECK(c7 == c3);  // text-only samples do not change
      continue;
    }
    ++images;
    // Every question that applies, once: 7 for one shape (position included), 6 for several.
    const int index = std::stoi(j7[k].at("id").get<std::string>().substr(std::string("synth-train-").size()));
    const size_t expected = make_scene(4, "train", index).count == 1 ? 7 : 6;
    CHECK(c7.size() == 2 * expected);
    std::set<std::string> prompts;
    for (size_t t = 0; t < c7.size(); t += 2) prompts.insert(c7[t].at("value").get<std::string>());
    CHECK(prompts.size() == expected);
    // The default 3 rounds are the first 3 of the same seeded order.
    REQUIRE(c3.size() == 6);
    for (size_t t = 0; t < c3.size(); ++t) CHECK(c3[t] == c7[t]);
  }
  CHECK(images == 30);
  SynthOptions bad = o3;
  bad.rounds = 8;
  CHECK_THROWS_WITH(write_synth_dataset(bad), Catch::Contains("rounds 8"));
  bad.rounds = 0;
  CHECK_THROWS_WITH(write_synth_dataset(bad), Catch::Contains("rounds 0"));
  fs::remove_all(dir3);
  fs::remove_all(dir7);
}

TEST_CASE("tar: written shards index back with offsets that read the same bytes", "[data][tar]") {
  const auto dir = temp_dir("tar_rt");
  std::vector<TarFile> files{{"a.txt", "hello"}, {"b.bin", std::string(1000, '\x7f')}, {"empty", ""},
                             {std::string(120, 'x') + ".long", "long names use a pax or prefix header"}};
  const auto path = (dir / "t.tar").string();
  write_tar(path, files);
  const TarIndex idx = index_tar(path);
  CHECK(idx.error.empty());
  REQUIRE(idx.members.size() == files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    CHECK(idx.members[i].name == files[i].name);
    CHECK(idx.members[i].offset >= 0);
    CHECK(read_tar_member(path, idx.members[i]) == files[i].data);
  }
  // Truncating inside the second member keeps only the first and reports the damage.
  fs::resize_file(path, 512 + 512 + 512 + 100);
  const TarIndex cut = index_tar(path);
  CHECK_FALSE(cut.error.empty());
  REQUIRE(cut.members.size() == 1);
  CHECK(read_tar_member(path, cut.members[0]) == "hello");
  CHECK_THROWS_WITH(index_tar((dir / "missing.tar").string()), Catch::Contains("missing.tar"));
  fs::remove_all(dir);
}

TEST_CASE("synth: shards hold img2dataset triples whose captions match the scenes", "[data][synth][tar]") {
  const auto dir = temp_dir("synth_tar");
  write_synth_dataset(small(dir, 5));
  const auto path = (dir / "pretrain/00001.tar").string();
  const TarIndex idx = index_tar(path);
  REQUIRE(idx.error.empty());
  REQUIRE(idx.members.size() == 36);
  CHECK(idx.members[0].name == "000010000.png");
  CHECK(idx.members[1].name == "000010000.txt");
  CHECK(idx.members[2].name == "000010000.json");
  // Shard 1, item 0 is training image 12.
  const Scene s = make_scene(5, "train", 12);
  CHECK(read_tar_member(path, idx.members[1]) == s.caption);
  const auto meta = nlohmann::json::parse(read_tar_member(path, idx.members[2]));
  CHECK(meta.at("caption") == s.caption);
  CHECK(meta.at("key") == "000010000");
  CHECK(read_tar_member(path, idx.members[0]) == owl2::test::read_text((dir / "images/train/000012.png").string()));
  CHECK(read_tar_member(path, idx.members[0]) == render_scene_png(s, 32));
  fs::remove_all(dir);
}

TEST_CASE("synth: rejects options that would leave a question type out", "[data][synth]") {
  SynthOptions o = small(temp_dir("synth_bad"), 0);
  o.heldout_images = 0;
  CHECK_THROWS_WITH(write_synth_dataset(o), Catch::Contains("heldout 0"));
  o.heldout_images = 3;
  o.shard_size = 20000;
  CHECK_THROWS_WITH(write_synth_dataset(o), Catch::Contains("shard size 20000"));
  fs::remove_all(o.out_dir);
}

TEST_CASE("synth: attributes and answers are balanced", "[data][synth]") {
  std::map<std::string, int> colors, shapes, positions;
  for (int64_t i = 0; i < 3000; ++i) {
    const Scene s = make_scene(0, "train", i);
    ++colors[s.color];
    ++shapes[s.shape];
    if (s.count == 1) ++positions[s.position];
  }
  REQUIRE(colors.size() == 4);
  REQUIRE(shapes.size() == 3);
  REQUIRE(positions.size() == 4);
  for (const auto& [c, n] : colors) CHECK(std::abs(n - 750) < 90);
  for (const auto& [s, n] : shapes) CHECK(std::abs(n - 1000) < 100);
  for (const auto& [p, n] : positions) CHECK(std::abs(n - 250) < 50);

  // Held-out answers: yes/no about half each, multiple-choice letters spread over A-D.
  const auto dir = temp_dir("synth_balance");
  SynthOptions o = small(dir, 4);
  o.heldout_images = 600;
  write_synth_dataset(o);
  std::ifstream f(dir / "heldout.jsonl");
  std::map<std::string, int> yesno, letters;
  std::string line;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "yesno") ++yesno[j["answer"].get<std::string>()];
    if (j["type"] == "mc") ++letters[j["answer"].get<std::string>()];
  }
  CHECK(std::abs(yesno["yes"] - 300) < 50);
  REQUIRE(letters.size() == 4);
  for (const auto& [l, n] : letters) CHECK(std::abs(n - 150) < 45);
  fs::remove_all(dir);
}

TEST_CASE("tar: shards written by Python's tarfile (GNU and pax, long names, folders) index correctly",
          "[data][tar]") {
  const auto dir = temp_dir("tar_py");
  for (const std::string format : {"GNU_FORMAT", "PAX_FORMAT", "USTAR_FORMAT"}) {
    const auto path = (dir / (format + ".tar")).string();
    const std::string script =
        "import io, tarfile\n"
        "t = tarfile.open('" + path + "', 'w', format=tarfile." + format + ")\n"
        "d = tarfile.TarInfo('sub'); d.type = tarfile.DIRTYPE; t.addfile(d)\n"
        "for i, n in enumerate(['sub/a.txt', 'sub/' + 'x' * (90 if '" + format + "' == 'USTAR_FORMAT' else 150) + '.png', 'ü.json']):\n"
        "    b = (n * (i * 37 + 1)).encode()\n"
        "    m = tarfile.TarInfo(n); m.size = len(b); t.addfile(m, io.BytesIO(b))\n"
        "t.close()\n";
    const auto py = (dir / "make.py").string();
    std::ofstream(py) << script;
    REQUIRE(std::system((std::string(OWL2_PYTHON) + " " + py).c_str()) == 0);
    const TarIndex idx = index_tar(path);
    CHECK(idx.error.empty());
    REQUIRE(idx.members.size() == 3);  // the folder is not a member
    for (size_t i = 0; i < 3; ++i) {
      const std::string& n = idx.members[i].name;
      std::string expected;
      for (size_t k = 0; k < i * 37 + 1; ++k) expected += n;
      CHECK(read_tar_member(path, idx.members[i]) == expected);
    }
    CHECK(idx.members[2].name == "ü.json");
  }
  fs::remove_all(dir);
}

TEST_CASE("rng: splitmix64 reference values, unbiased range, permutations", "[data][rng]") {
  Rng r(0);
  CHECK(r.next() == 0xE220A8397B1DCDAFull);  // the published first outputs of splitmix64 from state 0
  CHECK(r.next() == 0x6E789E6AA1B965F4ull);
  Rng u(42);
  std::vector<int> hist(3);
  for (int i = 0; i < 30000; ++i) ++hist[u.below(3)];
  for (int h : hist) CHECK(std::abs(h - 10000) < 400);
  CHECK_THROWS(u.below(0));
  Rng p(7);
  auto perm = permutation(100, p);
  std::vector<size_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < 100; ++i) CHECK(sorted[i] == i);
  CHECK(perm != sorted);
  CHECK(mix_seed(1, 2, 3) != mix_seed(2, 1, 3));
  CHECK(mix_seed(1, 2, 3) == mix_seed(1, 2, 3));
}

}  // namespace owl2_test_synth

namespace owl2_test_synth {

namespace {
// The question type of a human turn of the synthetic set (image conversations only).
std::string turn_type(std::string q) {
  if (q.rfind("<|image|>\n", 0) == 0) q.erase(0, 10);
  if (q.find("\nA. ") != std::string::npos) return "mc";
  if (q.rfind("Is there", 0) == 0) return "yesno";
  if (q.rfind("Provide", 0) == 0) return "caption";
  return "short";
}
}  // namespace

TEST_CASE("synth: question weights ask the heavier types more often and first, and reject bad weights",
          "[data][synth]") {
  const auto plain = temp_dir("synth_w0"), weighted = temp_dir("synth_w1");
  auto o = small(plain, 5);
  o.train_images = 140;
  write_synth_dataset(o);
  o.out_dir = weighted.string();
  o.question_weights = {{"mc", 50}, {"yesno", 10}};
  write_synth_dataset(o);
  // first[t]: conversations whose first round is of type t; any[t]: conversations that ask t at all.
  auto tally = [](const fs::path& dir) {
    std::map<std::string, int> first, any;
    const auto llava = nlohmann::json::parse(owl2::test::read_text((dir / "llava_train.json").string()));
    for (const auto& s : llava) {
      if (!s.contains("image")) continue;
      const auto& c = s["conversations"];
      REQUIRE(c.size() == 6);  // 3 rounds
      std::set<std::string> seen;
      for (size_t i = 0; i < c.size(); i += 2) {
        const auto t = turn_type(c[i]["value"].get<std::string>());
        if (i == 0) ++first[t];
        if (t != "short") CHECK(seen.insert(t).second);  // still distinct questions
      }
      for (const auto& t : seen) ++any[t];
    }
    return std::make_pair(first, any);
  };
  const auto [first0, any0] = tally(plain);
  const auto [first1, any1] = tally(weighted);
  // Uniform: multiple choice is one of 6 or 7 questions, so about 3/6.5 of conversations ask it, 1/6.5 first.
  CHECK(any0.at("mc") < 90);
  CHECK(first0.at("mc") < 40);
  // Weighted 50 (against yes/no's 10 and four or five 1s): the first round of about 77% of the 140, and asked in
  // every one.
  CHECK(first1.at("mc") >= 95);
  CHECK(any1.at("mc") == 140);
  CHECK(any1.at("yesno") > any0.at("yesno"));
  // The held-out split and the text-only samples do not depend on the weights.
  CHECK(owl2::test::read_text((plain / "heldout.jsonl").string()) ==
        owl2::test::read_text((weighted / "heldout.jsonl").string()));

  o.question_weights = {{"text", 2}};
  CHECK_THROWS_WITH(write_synth_dataset(o), Catch::Matchers::Contains("question weight for 'text'"));
  o.question_weights = {{"mc", 0}};
  CHECK_THROWS_WITH(write_synth_dataset(o), Catch::Matchers::Contains("question weight mc=0 must be in [1, 1000]"));
  for (const auto& p : {plain, weighted}) fs::remove_all(p);
}

}  // namespace owl2_test_synth
