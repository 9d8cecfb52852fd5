// Video as frames (data/video.h): frame sampling, decoding N frames against decoding all of them, bad clips, and
// a video sample against the same frames given as an image list.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "data/example.h"
#include "data/image.h"
#include "data/template.h"
#include "data/video.h"
#include "eval/bench_suite.h"
#include "eval/score_files.h"
#include "owl2/io/state_dict.h"
#include "owl2/model/init.h"
#include "trainers/config.h"
#include "trainers/infer/bench_eval.h"
#include "trainers/io/model_dir.h"
#include "tests/helpers.h"

namespace owl2_test_video {
using namespace owl2;
using namespace owl2::data;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;
using Idx = std::vector<int64_t>;

// `n` frames of a 48x64 clip: a bright square moving right over a dark background whose shade steps per frame,
// so that every frame differs from every other.
std::vector<torch::Tensor> moving_square(int64_t n) {
  std::vector<torch::Tensor> frames;
  for (int64_t i = 0; i < n; ++i) {
    auto f = torch::full({48, 64, 3}, static_cast<int64_t>(10 + 7 * i), torch::kUInt8);
    f.slice(0, 16, 32).slice(1, 2 + 3 * i, 18 + 3 * i).select(2, 0).fill_(250);
    frames.push_back(f);
  }
  return frames;
}

TEST_CASE("video frame sampling takes segment centres, for short and long clips and more frames than the clip has",
          "[video]") {
  CHECK(video_frame_indices(10, 4) == Idx{1, 3, 6, 8});
  CHECK(video_frame_indices(5, 5) == Idx{0, 1, 2, 3, 4});
  CHECK(video_frame_indices(1000, 8) == Idx{62, 187, 312, 437, 562, 687, 812, 937});
  CHECK(video_frame_indices(3, 5) == Idx{0, 0, 1, 2, 2});
  CHECK(video_frame_indices(1, 3) == Idx{0, 0, 0});
  CHECK(video_frame_indices(7, 1) == Idx{3});
  CHECK_THROWS_WITH(video_frame_indices(0, 4), Contains("0 frames"));
  CHECK_THROWS_WITH(video_frame_indices(4, 0), Contains("at least 1"));
}

TEST_CASE("decoding N frames equals decoding every frame and picking the same ones, bit for bit", "[video]") {
  if (!video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto dir = test::temp_dir("owl2_video");
  // WebM (VP8) is the container whose frame count FFmpeg only estimates: the count-checking pass matters there.
  for (const std::string ext : {".avi", ".mp4", ".webm"}) {
    INFO(ext);
    const auto path = dir + "/clip" + ext;
    write_video(path, moving_square(13));
    const auto all = decode_all_frames(path);
    REQUIRE(all.total == 13);
    REQUIRE(all.frames.size() == 13);
    CHECK(all.frames[0].sizes() == torch::IntArrayRef({48, 64, 3}));
    // The square moved: the codec keeps it where it was drawn (lossy, but far from the background).
    CHECK(all.frames[12][24][50][0].item<int>() > 200);
    CHECK(all.frames[0][24][50][0].item<int>() < 100);
    for (int64_t n : {1, 4, 8, 13, 20}) {
      const auto some = decode_video(path, n);
      REQUIRE(some.indices == video_frame_indices(13, n));
      REQUIRE(some.frames.size() == static_cast<size_t>(n));
      for (size_t k = 0; k < some.frames.size(); ++k) CHECK(torch::equal(some.frames[k], all.frames[some.indices[k]]));
    }
    // Frames go through the dataset as BMP and decode to the same pixels.
    CHECK(torch::equal(decode_image(encode_frame_bmp(all.frames[5]), "frame"), all.frames[5]));
  }
}

TEST_CASE("an animated GIF (TGIF's format) decodes frame by frame", "[video][python]") {
  if (!video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto dir = test::temp_dir("owl2_video_gif");
  const std::string script = "from PIL import Image\n"
                             "frames = [Image.new('RGB', (40, 30), (20 * i, 60, 200 - 20 * i)) for i in range(6)]\n"
                             "for i, f in enumerate(frames): f.paste((255, 255, 0), (5 * i, 10, 5 * i + 8, 18))\n"
                             "frames[0].save('" + dir + "/clip.gif', save_all=True, append_images=frames[1:], duration=100, loop=0)\n";
  std::ofstream(dir + "/make.py") << script;
  REQUIRE(std::system((std::string(OWL2_PYTHON) + " " + dir + "/make.py").c_str()) == 0);
  const auto all = decode_all_frames(dir + "/clip.gif");
  REQUIRE(all.total == 6);
  CHECK(all.frames[0].sizes() == torch::IntArrayRef({30, 40, 3}));
  // GIF is lossless for these few colours: the yellow square sits where it was drawn in each frame.
  CHECK(all.frames[5][14][28][0].item<int>() == 255);
  CHECK(all.frames[5][14][28][2].item<int>() == 0);
  const auto some = decode_video(dir + "/clip.gif", 4);
  REQUIRE(some.indices == Idx{0, 2, 3, 5});
  for (size_t k = 0; k < 4; ++k) CHECK(torch::equal(some.frames[k], all.frames[some.indices[k]]));
}

TEST_CASE("a GIF written by owl2 decodes to the same pixels, frame by frame, through FFmpeg", "[video]") {
  if (!video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto dir = test::temp_dir("owl2_video_gif_write");
  // The moving square (2 colours a frame) and a 64x48 clip of 200 colours in a pattern that compresses badly,
  // so that the LZW table fills up and restarts several times within a frame.
  std::vector<torch::Tensor> busy;
  for (int64_t t = 0; t < 3; ++t) {
    auto f = torch::empty({48, 64, 3}, torch::kUInt8);
    auto a = f.accessor<uint8_t, 3>();
    for (int64_t y = 0; y < 48; ++y)
      for (int64_t x = 0; x < 64; ++x) {
        const int64_t c = (y * 64 + x) * 7919 % 199 + t;  // 0..200
        a[y][x][0] = static_cast<uint8_t>(c);
        a[y][x][1] = static_cast<uint8_t>(255 - c);
        a[y][x][2] = static_cast<uint8_t>(c * 3 % 256);
      }
    busy.push_back(f);
  }
  for (const auto& [name, frames] : {std::pair<std::string, std::vector<torch::Tensor>>{"square", moving_square(9)},
                                     {"busy", busy}}) {
    INFO(name);
    const std::string path = dir + "/" + name + ".gif";
    write_video(path, frames, 8.0);
    CHECK(test::read_text(path).rfind("GIF89a", 0) == 0);
    const auto back = decode_all_frames(path);
    REQUIRE(back.frames.size() == frames.size());
    for (size_t k = 0; k < frames.size(); ++k) CHECK(torch::equal(back.frames[k], frames[k]));
  }
  // More colours than one palette holds is refused, naming the file.
  auto noisy = torch::arange(0, 300 * 3, torch::kInt64).remainder(256).to(torch::kUInt8).reshape({10, 30, 3});
  noisy.select(2, 1).copy_(torch::arange(0, 300, torch::kInt64).div(256, "floor").to(torch::kUInt8).reshape({10, 30}));
  CHECK_THROWS_WITH(write_video(dir + "/noisy.gif", {noisy}), Contains(dir + "/noisy.gif") && Contains("256 distinct"));
}

TEST_CASE("a missing, empty or corrupt video is an error naming the file", "[video]") {
  if (!video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto dir = test::temp_dir("owl2_video_bad");
  CHECK_THROWS_WITH(decode_video(dir + "/none.mp4", 4), Contains(dir + "/none.mp4: no such file"));
  std::ofstream(dir + "/empty.mp4").close();
  CHECK_THROWS_WITH(decode_video(dir + "/empty.mp4", 4), Contains("video " + dir + "/empty.mp4"));
  std::ofstream(dir + "/junk.avi") << std::string(4096, 'x');
  CHECK_THROWS_WITH(decode_video(dir + "/junk.avi", 4), Contains("video " + dir + "/junk.avi"));
  // A clip cut in half keeps what can be read, or fails naming the file; it never returns fewer frames.
  write_video(dir + "/cut.avi", moving_square(10));
  const auto bytes = test::read_text(dir + "/cut.avi");
  std::ofstream(dir + "/cut_half.avi", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  try {
    const auto v = decode_video(dir + "/cut_half.avi", 4);
    CHECK(v.frames.size() == 4);
  } catch (const std::runtime_error& e) {
    CHECK_THAT(e.what(), Contains(dir + "/cut_half.avi"));
  }
}

TEST_CASE("a video sample equals the image-list sample of the same frames: prompt, ids and pixels", "[video][data]") {
  if (!video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto dir = test::temp_dir("owl2_video_sample");
  write_video(dir + "/clip.avi", moving_square(9));
  const auto frames = decode_video(dir + "/clip.avi", 4).frames;
  nlohmann::json image_list = nlohmann::json::array();
  for (size_t k = 0; k < frames.size(); ++k) {
    const auto name = "frame" + std::to_string(k) + ".bmp";
    std::ofstream(dir + "/" + name, std::ios::binary) << encode_frame_bmp(frames[k]);
    image_list.push_back(name);
  }
  const std::string question = "Which way does the square move?";
  const nlohmann::json entries = {
      {{"id", "tagged"}, {"video", "clip.avi"},
       {"conversations", {{{"from", "human"}, {"value", "<video>\n" + question}}, {{"from", "gpt"}, {"value", "right"}}}}},
      {{"id", "untagged"}, {"video", "clip.avi"},
       {"conversations", {{{"from", "human"}, {"value", question}}, {{"from", "gpt"}, {"value", "right"}}}}},
      {{"id", "images"}, {"image", image_list},
       {"conversations", {{{"from", "human"}, {"value", "<|image|><|image|><|image|><|image|>" + question}},
                          {{"from", "gpt"}, {"value", "right"}}}}}};
  std::ofstream(dir + "/set.json") << entries.dump();
  ReadOptions ro;
  ro.video_frames = 4;
  const auto ds = open_dataset(dir + "/set.json", ro);
  REQUIRE(ds->size() == 3);
  CHECK(ds->info(0).num_images == 4);
  CHECK(ds->text(0).image_paths.size() == 4);
  auto tok = std::make_shared<const Tokenizer>(test::source_path("tests/fixtures/tokenizer/tiny_llama.model"));
  ExampleOptions eo;
  eo.image.size = 28;
  const ExampleBuilder builder(tok, eo);
  const auto reference = builder(ds->get(2));
  for (size_t i : {0, 1}) {
    INFO(ds->get(i).id);
    CHECK(ds->get(i).turns.at(0).value == ds->get(2).turns.at(0).value);
    const auto e = builder(ds->get(i));
    CHECK(e.input_ids == reference.input_ids);
    CHECK(e.labels == reference.labels);
    REQUIRE(e.images.size() == 4);
    for (size_t k = 0; k < 4; ++k) CHECK(torch::equal(e.images[k], reference.images[k]));
  }
  // A video entry with an image placeholder, or with an image too, is skipped and counted.
  const nlohmann::json bad = {
      {{"id", "both"}, {"video", "clip.avi"}, {"image", "frame0.bmp"},
       {"conversations", {{{"from", "human"}, {"value", "<|image|>hi"}}, {{"from", "gpt"}, {"value", "x"}}}}},
      {{"id", "placeholder"}, {"video", "clip.avi"},
       {"conversations", {{{"from", "human"}, {"value", "<image>hi"}}, {{"from", "gpt"}, {"value", "x"}}}}},
      {{"id", "ok"}, {"video", "clip.avi"},
       {"conversations", {{{"from", "human"}, {"value", "hi"}}, {{"from", "gpt"}, {"value", "x"}}}}}};
  std::ofstream(dir + "/bad.json") << bad.dump();
  auto log = std::make_shared<BadInputLog>();
  ro.log = log;
  ro.max_bad_fraction = 1;
  CHECK(open_dataset(dir + "/bad.json", ro)->size() == 1);
  CHECK(log->counts() == std::map<std::string, size_t>{{"bad_entry", 1}, {"placeholder_mismatch", 1}});
}

}  // namespace owl2_test_video

namespace owl2_test_video {

// Writes `text` to dir/name, creating the folders.
void put(const std::string& dir, const std::string& name, const std::string& text) {
  fs::create_directories(fs::path(dir + "/" + name).parent_path());
  std::ofstream(dir + "/" + name, std::ios::binary) << text;
}

TEST_CASE("data.video_layout numbered: a line per frame before the text, in training samples and user messages",
          "[video][data][config]") {
  CHECK(video_frame_slots(3, VideoLayout::kFramesFirst) == "<|image|><|image|><|image|>");
  const std::string numbered = "Frame 1: <|image|>\nFrame 2: <|image|>\nFrame 3: <|image|>\n";
  CHECK(video_frame_slots(3, VideoLayout::kNumbered) == numbered);
  CHECK_THROWS_WITH(video_frame_slots(0, VideoLayout::kNumbered), Contains("0 frames"));
  // Training samples: with a <video> tag, without one, and as a question/answer pair (JSONL): the same human turn.
  const auto dir = test::temp_dir("owl2_video_layout");
  const std::string question = "Which way does the square move?";
  const nlohmann::json entries = {
      {{"id", "tagged"}, {"video", "clip.avi"},
       {"conversations", {{{"from", "human"}, {"value", "<video>\n" + question}}, {{"from", "gpt"}, {"value", "right"}}}}},
      {{"id", "untagged"}, {"video", "clip.avi"},
       {"conversations", {{{"from", "human"}, {"value", question}}, {{"from", "gpt"}, {"value", "right"}}}}}};
  std::ofstream(dir + "/set.json") << entries.dump();
  std::ofstream(dir + "/set.jsonl") << nlohmann::json{{"video", "clip.avi"}, {"question", question}, {"answer", "right"}}.dump()
                                    << "\n";
  ReadOptions ro;
  ro.video_frames = 3;
  ro.check_files = false;
  for (const auto layout : {VideoLayout::kFramesFirst, VideoLayout::kNumbered}) {
    ro.video_layout = layout;
    const std::string want = video_frame_slots(3, layout) + question;
    const auto json = open_dataset(dir + "/set.json", ro), lines = open_dataset(dir + "/set.jsonl", ro);
    REQUIRE(json->size() == 2);
    REQUIRE(lines->size() == 1);
    CHECK(json->text(0).turns.at(0).value == want);  // text(): the entry without reading the clip
    CHECK(json->text(1).turns.at(0).value == want);
    CHECK(lines->text(0).turns.at(0).value == want);
    CHECK(json->info(0).num_images == 3);
  }
  // owl2 generate --video and owl2 chat's /video: the clip's placeholders in the layout, then the text.
  CHECK(user_message("<|image|> " + question, 3, numbered) == numbered + question);
  CHECK(user_message(question, 4, "<|image|>" + numbered) == "<|image|>" + numbered + question);  // an image, a clip
  CHECK_THROWS_WITH(user_message(question, 2, numbered), Contains("3 placeholders spelled for 2 images"));
  // The video benchmarks: the readers' frames-first prompt, put in the model's layout when it is evaluated.
  eval::BenchItem item;
  item.id = "q1";
  item.prompt = "USER: <|image|><|image|><|image|>What is shown? ASSISTANT: ";
  item.video = "clip.avi";
  item.video_frames = 3;
  CHECK(bench_item_prompt(item, VideoLayout::kFramesFirst) == item.prompt);
  CHECK(bench_item_prompt(item, VideoLayout::kNumbered) == "USER: " + numbered + "What is shown? ASSISTANT: ");
  item.video_frames = 4;
  CHECK_THROWS_WITH(bench_item_prompt(item, VideoLayout::kNumbered), Contains("no 4 frame placeholders"));
  // The config key, printed and read back; a wrong value names the key and the choices.
  const auto cfg = parse_config_text("data: {video_layout: numbered}");
  CHECK(cfg.data.video_layout == VideoLayout::kNumbered);
  CHECK(parse_config_text(to_yaml(cfg)).data.video_layout == VideoLayout::kNumbered);
  CHECK(parse_config_text("data: {}").data.video_layout == VideoLayout::kFramesFirst);
  CHECK_THROWS_WITH(parse_config_text("data: {video_layout: last}"),
                    Contains("data.video_layout") && Contains("frames_first|numbered"));
}

TEST_CASE("video QA benchmarks: readers of the public formats, the 8-frame prompt, exact-match scores equal owl2 score",
          "[video][eval]") {
  const auto root = test::temp_dir("owl2_video_bench");
  const std::string frames8 = "<|image|><|image|><|image|><|image|><|image|><|image|><|image|><|image|>";
  const std::string tail = "\nAnswer the question using a single word or phrase. ASSISTANT: ";
  // MSRVTT-QA: video_id integers, clips videos/video<id>.mp4 (the readers only check that clips exist).
  put(root + "/msrvtt", "videos/video7010.mp4", "x");
  put(root + "/msrvtt", "videos/video7011.mp4", "x");
  put(root + "/msrvtt", "test_qa.json",
      R"([{"question": "what is a cat doing?", "answer": "playing", "video_id": 7010, "id": 0},
          {"question": "how many people are dancing?", "answer": "two", "video_id": 7011, "id": 1},
          {"question": "who is singing?", "answer": "woman", "video_id": 7010, "id": 2}])");
  // MSVD-QA as JSON lines with clip names.
  put(root + "/msvd", "videos/abc_1_5.avi", "x");
  put(root + "/msvd", "test.jsonl",
      "{\"question\": \"what is the man riding?\", \"answer\": \"horse\", \"video\": \"abc_1_5.avi\", \"question_id\": \"q1\"}\n");
  // TGIF-QA FrameQA: the TSV and gifs/<gif_name>.gif.
  put(root + "/tgif", "gifs/tumblr_abc.gif", "x");
  put(root + "/tgif", "Test_frameqa_question.tsv",
      "gif_name\tquestion\tanswer\tvid_id\tkey\ttype\ntumblr_abc\twhat is the color of the car\tred\tgif_1\t7\t2\n");

  const auto& msrvtt = eval::find_bench("msrvtt_qa");
  const auto items = msrvtt.read(root + "/msrvtt");
  REQUIRE(items.size() == 3);
  CHECK(items[0].prompt == "USER: " + frames8 + "what is a cat doing?" + tail);
  CHECK(items[0].video == root + "/msrvtt/videos/video7010.mp4");
  CHECK(items[0].video_frames == 8);
  CHECK(items[0].images.empty());
  CHECK(items[2].id == "2");
  const auto msvd = eval::find_bench("msvd_qa").read(root + "/msvd");
  REQUIRE(msvd.size() == 1);
  CHECK(msvd[0].id == "q1");
  CHECK(msvd[0].video == root + "/msvd/videos/abc_1_5.avi");
  const auto tgif = eval::find_bench("tgif_qa").read(root + "/tgif");
  REQUIRE(tgif.size() == 1);
  CHECK(tgif[0].prompt == "USER: " + frames8 + "what is the color of the car" + tail);
  CHECK(tgif[0].video == root + "/tgif/gifs/tumblr_abc.gif");

  // "Playing." and "2" match after the VQA normalization; "man" does not match "woman".
  const auto out = root + "/out";
  const auto score = eval::score_bench(msrvtt, root + "/msrvtt", items, {"Playing.", "2", "man"}, out);
  CHECK(score.headline == Approx(200.0 / 3));
  CHECK(score.scores["video_qa"]["correct"] == 2);
  const auto cli = test::run_owl2("score --metric video_qa --refs " + out + "/msrvtt_qa_refs.json --preds " + out +
                                  "/msrvtt_qa_predictions.jsonl");
  INFO(cli.out);
  REQUIRE(cli.rc == 0);
  const auto j = nlohmann::json::parse(cli.out.substr(cli.out.find('{')));
  CHECK(j["accuracy"].get<double>() == score.scores["video_qa"]["accuracy"].get<double>());
  CHECK(j["questions"] == 3);

  // Bad files name the file and the entry.
  put(root + "/bad", "test_qa.json", R"([{"question": "q", "answer": "a", "video_id": 99}])");
  CHECK_THROWS_WITH(msrvtt.read(root + "/bad"), Contains("test_qa.json: entry 0: no clip for '99'"));
  put(root + "/bad2", "Test_frameqa_question.tsv", "name\tquestion\tanswer\nx\ty\tz\n");
  CHECK_THROWS_WITH(eval::find_bench("tgif_qa").read(root + "/bad2"), Contains("no 'gif_name' column"));
  put(root + "/bad3", "p.jsonl", "{\"question_id\": 0, \"prediction\": \"a\"}\n");
  put(root + "/bad3", "r.json", R"([{"question_id": 0, "answer": "a"}, {"question_id": 1, "answer": "b"}])");
  CHECK_THROWS_WITH(eval::score_files("video_qa", root + "/bad3/r.json", root + "/bad3/p.jsonl"),
                    Contains("no prediction for question_id 1"));
}

TEST_CASE("owl2 eval --bench msrvtt_qa answers from each clip's frames and writes metrics.json", "[video][eval][cli]") {
  if (!video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto root = test::temp_dir("owl2_video_eval");
  // A random tiny model folder (the vocabulary widened to the fixture tokenizer's 1000 pieces).
  const auto model = root + "/model";
  fs::create_directories(model);
  RunConfig cfg = load_config(test::source_path("configs/model/tiny.yaml"), {"model.decoder.vocab_size=1000"});
  cfg.data.tokenizer = copy_tokenizer_into(test::source_path("tests/fixtures/tokenizer/tiny_llama.model"), model);
  std::ofstream(model + "/config.yaml") << to_yaml(cfg);
  MPLUGOwl2ForCausalLM m(cfg.model);
  init_weights(m, 3);
  save_state_dict(*m, model);
  write_video(root + "/data/videos/video1.avi", moving_square(5));
  write_video(root + "/data/videos/video2.avi", moving_square(12));
  put(root + "/data", "test_qa.json",
      R"([{"question": "where does it move?", "answer": "right", "video_id": 1, "id": 0},
          {"question": "what color is it?", "answer": "red", "video_id": 2, "id": 1}])");
  const auto r = test::run_owl2("eval --model " + model + " --bench msrvtt_qa --data " + root + "/data --out " + root +
                                "/out --max-new-tokens 3");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const auto metrics = nlohmann::json::parse(test::read_text(root + "/out/msrvtt_qa/metrics.json"));
  CHECK(metrics["scores"]["video_qa"]["questions"] == 2);
  const auto preds = test::read_text(root + "/out/msrvtt_qa/msrvtt_qa_predictions.jsonl");
  CHECK(std::count(preds.begin(), preds.end(), '\n') == 2);
}

}  // namespace owl2_test_video
