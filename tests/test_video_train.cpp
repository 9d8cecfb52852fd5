// A short fine-tune on synthetic video samples (`owl2 data synth --train-videos`) and the zero-shot video QA
// benchmark path on the synthetic MSRVTT-QA clips: the model must answer the motion questions above chance, and
// the same clips played backwards must turn its direction answers around (a broken frame order fails both).
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "data/video.h"
#include "tests/helpers.h"

namespace owl2_test_video_train {
using namespace owl2;
namespace fs = std::filesystem;

namespace {

// An id as text, whether the file wrote it as a number or a string.
std::string id_text(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

struct Accuracy {
  int direction_right = 0, direction_total = 0, colour_right = 0, colour_total = 0;
  double direction() const { return direction_total ? double(direction_right) / direction_total : 0.0; }
  double colour() const { return colour_total ? double(colour_right) / colour_total : 0.0; }
};

// Per question kind, from the benchmark's predictions and the answers of `test_qa.json` (`flip` maps each
// direction answer to its opposite, for the clips played backwards).
Accuracy score(const std::string& qa_file, const std::string& predictions, bool flip) {
  const std::map<std::string, std::string> opposite{{"right", "left"}, {"left", "right"}, {"up", "down"}, {"down", "up"}};
  std::map<std::string, nlohmann::json> questions;
  for (const auto& q : nlohmann::json::parse(test::read_text(qa_file))) questions[id_text(q.at("id"))] = q;
  Accuracy a;
  std::istringstream in(test::read_text(predictions));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto p = nlohmann::json::parse(line);
    const auto& q = questions.at(id_text(p.at("question_id")));
    std::string answer = q.at("answer").get<std::string>(), said = p.at("prediction").get<std::string>();
    std::transform(said.begin(), said.end(), said.begin(), [](unsigned char c) { return std::tolower(c); });
    while (!said.empty() && (said.back() == '.' || said.back() == ' ')) said.pop_back();
    if (q.at("question").get<std::string>().rfind("which way", 0) == 0) {
      if (flip) answer = opposite.at(answer);
      ++a.direction_total;
      a.direction_right += said == answer;
    } else {
      ++a.colour_total;
      a.colour_right += said == answer;
    }
  }
  return a;
}

}  // namespace

TEST_CASE("synth --train-videos: two questions per clip, answered by what the frames show", "[video][data][synth]") {
  if (!data::video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const std::string root = test::temp_dir("owl2_synth_videos");
  auto synth = test::run_owl2("data synth --out " + root + " --train 2 --heldout 1 --train-text 0 --heldout-text 1 " +
                              "--train-videos 6");
  INFO(synth.out);
  REQUIRE(synth.rc == 0);
  const auto samples = nlohmann::json::parse(test::read_text(root + "/video_train.json"));
  REQUIRE(samples.size() == 12);
  const std::map<std::string, std::array<int, 3>> rgb{
      {"red", {230, 30, 30}}, {"green", {30, 200, 30}}, {"blue", {40, 70, 240}}, {"yellow", {240, 230, 30}}};
  // Centre of the pixels within 60 of `colour` (Motion-JPEG is lossy), or {-1, -1} when there are none.
  auto centre = [](const torch::Tensor& f, const std::array<int, 3>& c) {
    const auto px = f.to(torch::kInt32);
    auto d = (px.select(2, 0) - c[0]).abs() + (px.select(2, 1) - c[1]).abs() + (px.select(2, 2) - c[2]).abs();
    const auto mask = d < 60;
    if (mask.sum().item<int64_t>() == 0) return std::pair<double, double>{-1, -1};
    const auto idx = mask.nonzero().to(torch::kFloat64);
    return std::pair<double, double>{idx.select(1, 1).mean().item<double>(), idx.select(1, 0).mean().item<double>()};
  };
  for (size_t i = 0; i < samples.size(); i += 2) {
    const auto& dir_sample = samples[i];
    const auto& late_sample = samples[i + 1];
    INFO(dir_sample.dump());
    REQUIRE(dir_sample["video"] == late_sample["video"]);
    const std::string q = dir_sample["conversations"][0]["value"];
    CHECK(q.find("<video>") == std::string::npos);
    CHECK_THAT(q, Catch::Matchers::EndsWith("\nAnswer the question using a single word or phrase."));
    const std::string mover = q.substr(std::string("which way does the ").size(),
                                       q.find(" square") - std::string("which way does the ").size());
    const std::string direction = dir_sample["conversations"][1]["value"];
    const std::string late = late_sample["conversations"][1]["value"];
    REQUIRE(rgb.count(mover));
    REQUIRE(rgb.count(late));
    CHECK(mover != late);
    const auto clip = data::decode_all_frames(root + "/" + dir_sample["video"].get<std::string>());
    REQUIRE(clip.frames.size() == 16);
    const auto [x0, y0] = centre(clip.frames.front(), rgb.at(mover));
    const auto [x1, y1] = centre(clip.frames.back(), rgb.at(mover));
    REQUIRE(x0 >= 0);
    REQUIRE(x1 >= 0);
    const std::string seen = std::abs(x1 - x0) > std::abs(y1 - y0) ? (x1 > x0 ? "right" : "left") : (y1 > y0 ? "down" : "up");
    CHECK(seen == direction);
    // The late square is absent from the first frame and present in the last.
    CHECK(centre(clip.frames.front(), rgb.at(late)).first < 0);
    CHECK(centre(clip.frames.back(), rgb.at(late)).first >= 0);
  }
  const auto manifest = nlohmann::json::parse(test::read_text(root + "/manifest.json"));
  CHECK(manifest["video_samples"] == 12);
  CHECK_THAT(test::read_text(root + "/corpus.txt"), Catch::Matchers::Contains("which colour appears last?"));
}

TEST_CASE("a short fine-tune on synthetic clips answers the motion questions above chance, in frame order",
          "[video][train][cli][slow]") {
  if (!data::video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const std::string root = "build/test_video_train";
  fs::remove_all(root);
  auto synth = test::run_owl2("data synth --out " + root +
                              "/data --train 4 --heldout 2 --train-text 2 --heldout-text 1 --train-videos 384");
  INFO(synth.out);
  REQUIRE(synth.rc == 0);
  CHECK_THAT(synth.out, Catch::Matchers::Contains("768 video samples"));
  REQUIRE(test::run_owl2("tokenizer train --text " + root + "/data/corpus.txt --vocab-size 160 --out " + root + "/tok")
              .rc == 0);
  // Held-out clips: the MSRVTT-QA folder of synth-bench (other seeds' scenes than the training clips).
  REQUIRE(test::run_owl2("data synth-bench --out " + root + "/bench --images 40").rc == 0);

  std::ofstream(root + "/run.yaml") << "include: " << test::source_path("configs/model/tiny.yaml") << "\n"
                                    << "model: {initializer_range: 0.12}\n"  // as the demo's (docs/training.md)
                                    << "optim: {lr: 1.0e-3, min_lr: 5.0e-5, warmup_steps: 10}\n"
                                    << "train: {steps: 300, global_batch_size: 16, micro_batch_size: 16, "
                                       "max_length: 256, out_dir: "
                                    << root << "/run, tensorboard: false, log_every: 50}\n"
                                    << "data: {tokenizer: " << root << "/tok.model, sources: [{path: " << root
                                    << "/data/video_train.json}], video_frames: 8, image_mode: resize, num_workers: 2}\n";
  auto train = test::run_owl2("train --config " + root + "/run.yaml");
  INFO(train.out);
  REQUIRE(train.rc == 0);

  // The same clips backwards, under the same names and questions.
  const std::string bench = root + "/bench/msrvtt_qa", reversed = root + "/reversed";
  fs::create_directories(reversed + "/videos");
  fs::copy_file(bench + "/test_qa.json", reversed + "/test_qa.json");
  for (const auto& e : fs::directory_iterator(bench + "/videos")) {
    auto frames = data::decode_all_frames(e.path().string()).frames;
    std::reverse(frames.begin(), frames.end());
    data::write_video(reversed + "/videos/" + e.path().filename().string(), frames, 8.0);
  }

  std::map<std::string, Accuracy> acc;
  for (const auto& [name, dir] : {std::pair<std::string, std::string>{"forward", bench}, {"reversed", reversed}}) {
    auto eval = test::run_owl2("eval --model " + root + "/run/final --bench msrvtt_qa --data " + dir + " --out " +
                               root + "/eval_" + name + " --max-new-tokens 3");
    INFO(eval.out);
    REQUIRE(eval.rc == 0);
    acc[name] = score(dir + "/test_qa.json", root + "/eval_" + name + "/msrvtt_qa/msrvtt_qa_predictions.jsonl",
                      name == "reversed");
  }
  const auto& f = acc["forward"];
  const auto& r = acc["reversed"];
  WARN(fmt::format("direction {:.2f} (reversed clips, answers flipped: {:.2f}), colour that appears last {:.2f}; "
                   "chance 0.25",
                   f.direction(), r.direction(), f.colour()));
  REQUIRE(f.direction_total == 40);
  REQUIRE(f.colour_total == 40);
  // Chance is 1/4 for both kinds; a model that ignores the frame order cannot tell the direction. Measured on
  // the 2-core build machine: direction 0.80, colour 1.00, reversed clips 0.60 (their late square comes first, which
  // training never showed).
  CHECK(f.direction() >= 0.55);
  CHECK(f.colour() >= 0.5);
  // Played backwards, a square moving right moves left: the answers follow the frames.
  CHECK(r.direction() >= 0.4);
}

}  // namespace owl2_test_video_train
