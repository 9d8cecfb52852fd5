// The synthetic shapes dataset: scenes, rendering, questions and the files they are written to.
#include "data/synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <stdexcept>

#include "data/tar.h"
#include "data/video.h"

namespace owl2::data {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const char* const kShortAnswerPrompt = "\nAnswer the question using a single word or phrase.";
// U+2019 in "option’s", as in the reference's README and MMBench prompt (spec §4.1, §5.2).
const char* const kMultipleChoicePrompt = "\nAnswer with the option\u2019s letter from the given choices directly.";
const Rgb kBackground{0, 0, 0};
const std::array<const char*, 8> kQuestionTypes{"caption", "color", "shape", "position", "count", "yesno", "mc", "text"};

// ---------------------------------------------------------------------------------------------
// Scenes

namespace {

const std::array<const char*, 4> kColors{"red", "green", "blue", "yellow"};
const std::array<const char*, 3> kShapes{"circle", "square", "triangle"};
const std::array<const char*, 4> kPositions{"left", "right", "top", "bottom"};
const std::array<const char*, 4> kCountWords{"zero", "one", "two", "three"};

uint64_t split_id(const std::string& split) {
  if (split == "train") return 1;
  if (split == "heldout") return 2;
  throw std::invalid_argument(fmt::format("synth: unknown split '{}' (expected train or heldout)", split));
}

template <size_t N>
std::string pick(const std::array<const char*, N>& a, Rng& rng) {
  return a[rng.below(N)];
}

}  // namespace

Rgb color_rgb(const std::string& color) {
  if (color == "red") return {230, 30, 30};
  if (color == "green") return {30, 200, 30};
  if (color == "blue") return {40, 70, 240};
  if (color == "yellow") return {240, 230, 30};
  throw std::invalid_argument(fmt::format("synth: unknown colour '{}'", color));
}

Scene make_scene(uint64_t seed, const std::string& split, int64_t index) {
  Rng rng(mix_seed(seed, split_id(split), static_cast<uint64_t>(index)));
  Scene s;
  s.color = pick(kColors, rng);
  s.shape = pick(kShapes, rng);
  s.count = static_cast<int>(index % 3) + 1;
  const auto jitter = [&](double amount) { return (rng.uniform() * 2 - 1) * amount; };
  if (s.count == 1) {
    const size_t p = rng.below(kPositions.size());
    s.position = kPositions[p];
    // One large shape centred in its half of the image.
    const double cx[] = {0.25, 0.75, 0.5, 0.5}, cy[] = {0.5, 0.5, 0.25, 0.75};
    s.placed.push_back({cx[p] + jitter(0.03), cy[p] + jitter(0.03), 0.19 + jitter(0.02)});
    const std::string where = p < 2 ? "on the " + s.position : "at the " + s.position;
    s.caption = fmt::format("a {} {} {}", s.color, s.shape, where);
  } else {
    // Several shapes in distinct quadrants; they cannot overlap.
    const auto quadrants = permutation(4, rng);
    for (int i = 0; i < s.count; ++i) {
      const size_t q = quadrants[static_cast<size_t>(i)];
      s.placed.push_back({(q % 2 ? 0.75 : 0.25) + jitter(0.03), (q / 2 ? 0.75 : 0.25) + jitter(0.03),
                          0.17 + jitter(0.02)});
    }
    s.caption = fmt::format("{} {} {}s", kCountWords[static_cast<size_t>(s.count)], s.color, s.shape);
  }
  return s;
}

std::string render_scene_png(const Scene& scene, int image_size) {
  if (image_size < 16) throw std::invalid_argument(fmt::format("synth: image size {} is below 16", image_size));
  const double n = image_size;
  cv::Mat img(image_size, image_size, CV_8UC3, cv::Scalar(kBackground.b, kBackground.g, kBackground.r));
  const Rgb c = color_rgb(scene.color);
  const cv::Scalar bgr(c.b, c.g, c.r);
  for (const auto& p : scene.placed) {
    const int cx = static_cast<int>(std::lround(p.cx * n)), cy = static_cast<int>(std::lround(p.cy * n));
    const int h = std::max(2, static_cast<int>(std::lround(p.half * n)));
    if (scene.shape == "circle") {
      cv::circle(img, {cx, cy}, h, bgr, cv::FILLED, cv::LINE_8);
    } else if (scene.shape == "square") {
      cv::rectangle(img, cv::Point(cx - h, cy - h), cv::Point(cx + h, cy + h), bgr, cv::FILLED, cv::LINE_8);
    } else {
      const std::vector<cv::Point> tri{{cx, cy - h}, {cx - h, cy + h}, {cx + h, cy + h}};
      cv::fillConvexPoly(img, tri, bgr, cv::LINE_8);
    }
  }
  std::vector<uchar> png;
  if (!cv::imencode(".png", img, png, {cv::IMWRITE_PNG_COMPRESSION, 9}))
    throw std::runtime_error("synth: PNG encoding failed");
  return std::string(png.begin(), png.end());
}

// ---------------------------------------------------------------------------------------------
// Questions

namespace {

struct Question {
  std::string type;      // caption | color | shape | position | count | yesno | mc | text
  std::string question;  // without the answer-format suffix
  std::string prompt;    // the human turn's text (question + suffix), without the image placeholder
  std::string answer;
};

Question short_answer(std::string type, std::string q, std::string a) {
  std::string prompt = q + kShortAnswerPrompt;
  return {std::move(type), std::move(q), std::move(prompt), std::move(a)};
}

std::string plural(const Scene& s) { return s.count == 1 ? s.shape : s.shape + "s"; }

Question ask_color(const Scene& s) {
  return short_answer("color", fmt::format("What color {} the {}?", s.count == 1 ? "is" : "are", plural(s)), s.color);
}
Question ask_shape(const Scene& s) {
  return short_answer("shape",
                      s.count == 1 ? fmt::format("What shape is the {} object?", s.color)
                                   : fmt::format("What shape are the {} objects?", s.color),
                      s.shape);
}
Question ask_position(const Scene& s) {
  return short_answer("position", fmt::format("Where is the {} {}?", s.color, s.shape), s.position);
}
Question ask_count(const Scene& s) {
  return short_answer("count", "How many shapes are there?", std::to_string(s.count));
}
Question ask_yesno(const Scene& s, Rng& rng) {
  std::string color = s.color, shape = s.shape;
  const bool yes = rng.below(2) == 0;
  if (!yes) {
    if (rng.below(2) == 0) {
      while (color == s.color) color = pick(kColors, rng);
    } else {
      while (shape == s.shape) shape = pick(kShapes, rng);
    }
  }
  return short_answer("yesno", fmt::format("Is there a {} {} in the image?", color, shape), yes ? "yes" : "no");
}
Question ask_caption(const Scene& s) {
  const std::string q = "Provide a one-sentence caption for the provided image.";
  return {"caption", q, q, s.caption};
}

// Four options in a seeded order; the answer is the letter of the correct one.
Question ask_mc(const Scene& s, Rng& rng) {
  std::vector<std::string> options;
  std::string q, correct;
  const uint64_t kinds = s.count == 1 ? 4 : 3;
  switch (rng.below(kinds)) {
    case 0:
      q = fmt::format("What color {} the {}?", s.count == 1 ? "is" : "are", plural(s));
      options.assign(kColors.begin(), kColors.end());
      correct = s.color;
      break;
    case 1:
      q = s.count == 1 ? "What shape is the object?" : "What shape are the objects?";
      options.assign(kShapes.begin(), kShapes.end());
      options.push_back("star");  // never drawn: a distractor
      correct = s.shape;
      break;
    case 2:
      q = "How many shapes are there?";
      options = {"1", "2", "3", "4"};
      correct = std::to_string(s.count);
      break;
    default:
      q = fmt::format("Where is the {} {}?", s.color, s.shape);
      options.assign(kPositions.begin(), kPositions.end());
      correct = s.position;
      break;
  }
  const auto order = permutation(options.size(), rng);
  std::string letter;
  for (size_t i = 0; i < order.size(); ++i) {
    const std::string& opt = options[order[i]];
    const char l = static_cast<char>('A' + i);
    q += fmt::format("\n{}. {}", l, opt);
    if (opt == correct) letter = std::string(1, l);
  }
  return {"mc", q, q + kMultipleChoicePrompt, letter};
}

// Text-only tasks with one-word answers.
Question text_task(Rng& rng) {
  static const std::array<const char*, 12> words{"cat", "dog", "sun", "box", "cup", "pen",
                                                 "map", "tree", "fish", "bird", "star", "lamp"};
  switch (rng.below(5)) {
    case 0: {
      const auto a = rng.below(10), b = rng.below(10);
      return short_answer("text", fmt::format("What is {} plus {}?", a, b), std::to_string(a + b));
    }
    case 1: {
      auto a = rng.below(10), b = rng.below(10);
      if (a < b) std::swap(a, b);
      return short_answer("text", fmt::format("What is {} minus {}?", a, b), std::to_string(a - b));
    }
    case 2: {
      std::string w = pick(words, rng);
      std::string r(w.rbegin(), w.rend());
      return short_answer("text", fmt::format("Spell the word {} backwards.", w), r);
    }
    case 3: {
      const char l = static_cast<char>('a' + rng.below(25));
      return short_answer("text", fmt::format("Which letter comes after {} in the alphabet?", l),
                          std::string(1, static_cast<char>(l + 1)));
    }
    default: {
      const std::string w = pick(words, rng);
      return short_answer("text", fmt::format("How many letters are in the word {}?", w), std::to_string(w.size()));
    }
  }
}

// The order in which a training conversation asks `qs`: uniform without weights, else weighted picks without
// replacement.
std::vector<size_t> round_order(const std::vector<Question>& qs, const std::map<std::string, int64_t>& weights,
                                Rng& rng) {
  if (weights.empty()) return permutation(qs.size(), rng);
  std::vector<size_t> left(qs.size()), order;
  for (size_t i = 0; i < left.size(); ++i) left[i] = i;
  auto weight = [&](size_t i) {
    const auto it = weights.find(qs[i].type);
    return static_cast<uint64_t>(it == weights.end() ? 1 : it->second);
  };
  while (!left.empty()) {
    uint64_t total = 0;
    for (size_t i : left) total += weight(i);
    uint64_t u = rng.below(total);
    size_t k = 0;
    while (u >= weight(left[k])) u -= weight(left[k++]);
    order.push_back(left[k]);
    left.erase(left.begin() + static_cast<std::ptrdiff_t>(k));
  }
  return order;
}

// Every question that applies to a scene, in a fixed type order (the held-out split asks all of them).
std::vector<Question> all_questions(const Scene& s, Rng& rng) {
  std::vector<Question> qs{ask_caption(s), ask_color(s), ask_shape(s)};
  if (s.count == 1) qs.push_back(ask_position(s));
  qs.push_back(ask_count(s));
  qs.push_back(ask_yesno(s, rng));
  qs.push_back(ask_mc(s, rng));
  return qs;
}

// `frames` frames of size x size: a grey background and a `mover` square (side size/4) crossing the middle of the
// frame toward `direction` (0 right, 1 left, 2 down, 3 up); from the middle frame on, a `late` square sits in the
// top-left corner, off the mover's path. Telling the direction or the late colour needs more than one frame.
std::vector<torch::Tensor> motion_clip(int size, int64_t frames, int direction, Rgb mover, Rgb late) {
  const int64_t side = size / 4, travel = size - side, mid = (size - side) / 2;
  std::vector<torch::Tensor> out;
  auto paint = [&](torch::Tensor& f, int64_t y, int64_t x, Rgb c) {
    auto block = f.slice(0, y, y + side).slice(1, x, x + side);
    block.select(2, 0).fill_(c.r);
    block.select(2, 1).fill_(c.g);
    block.select(2, 2).fill_(c.b);
  };
  for (int64_t t = 0; t < frames; ++t) {
    auto f = torch::full({size, size, 3}, 128, torch::kUInt8);
    const int64_t along = frames > 1 ? t * travel / (frames - 1) : 0;
    const int64_t pos = direction % 2 == 0 ? along : travel - along;
    if (direction < 2) paint(f, mid, pos, mover);
    else paint(f, pos, mid, mover);
    if (t >= frames / 2) paint(f, 0, 0, late);
    out.push_back(f);
  }
  return out;
}


// Another value of the palette than `not_this`, picked by `rng`.
template <size_t N>
std::string other(const std::array<const char*, N>& a, const std::string& not_this, Rng& rng) {
  std::string v = not_this;
  while (v == not_this) v = pick(a, rng);
  return v;
}

const std::array<const char*, 4> kDirections{"right", "left", "down", "up"};

// One clip of moving squares with its two questions (no answer-format suffix): the direction of the `mover`
// square and the colour that appears last. A pure function of the rng's state.
struct MotionClip {
  int direction = 0;
  std::string mover, late;
  std::string direction_question() const { return fmt::format("which way does the {} square move?", mover); }
  static std::string late_question() { return "which colour appears last?"; }
  std::string direction_answer() const { return kDirections[static_cast<size_t>(direction)]; }
  std::vector<torch::Tensor> frames(int image_size) const {
    return motion_clip(std::max(image_size, 32), 16, direction, color_rgb(mover), color_rgb(late));
  }
};
MotionClip make_motion_clip(Rng& rng) {
  MotionClip c;
  c.direction = static_cast<int>(rng.below(4));
  c.mover = pick(kColors, rng);
  c.late = other(kColors, c.mover, rng);
  return c;
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error(fmt::format("synth: cannot write {}", path.string()));
}

ojson turn(const char* from, const std::string& value) { return ojson{{"from", from}, {"value", value}}; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Files

SynthSummary write_synth_dataset(const SynthOptions& o) {
  if (o.out_dir.empty()) throw std::invalid_argument("synth: --out is required");
  if (o.train_images < 1 || o.heldout_images < 1 || o.train_text < 0 || o.heldout_text < 1)
    throw std::invalid_argument(fmt::format(
        "synth: need train >= 1, heldout >= 1, heldout text >= 1 and train text >= 0 so every question type "
        "is present; got train {}, heldout {}, train text {}, heldout text {}",
        o.train_images, o.heldout_images, o.train_text, o.heldout_text));
  if (o.shard_size < 1 || o.shard_size > 10000)
    throw std::invalid_argument(fmt::format("synth: shard size {} must be in [1, 10000]", o.shard_size));
  if (o.image_size < 16 || o.image_size > 1024)
    throw std::invalid_argument(fmt::format("synth: image size {} must be in [16, 1024]", o.image_size));
  if (o.rounds < 1 || o.rounds > 7)
    throw std::invalid_argument(fmt::format("synth: rounds {} must be in [1, 7]", o.rounds));
  for (const auto& [type, w] : o.question_weights) {
    const bool image_type = type != "text" && std::find_if(kQuestionTypes.begin(), kQuestionTypes.end(), [&](const char* t) {
                                                return type == t;
                                              }) != kQuestionTypes.end();
    if (!image_type)
      throw std::invalid_argument(fmt::format(
          "synth: question weight for '{}': expected one of caption, color, shape, position, count, yesno, mc", type));
    if (w < 1 || w > 1000)
      throw std::invalid_argument(fmt::format("synth: question weight {}={} must be in [1, 1000]", type, w));
  }
  if (o.train_videos < 0)
    throw std::invalid_argument(fmt::format("synth: train videos {} must be >= 0", o.train_videos));
  if (o.train_videos > 0 && !video_decoding_available())
    throw std::invalid_argument("synth: --train-videos needs a build with OpenCV videoio (libopencv-videoio-dev)");

  const fs::path root(o.out_dir);
  for (const char* d : {"images/train", "images/heldout", "pretrain"}) fs::create_directories(root / d);
  SynthSummary summary;

  // Training images: PNG files for the instructions, and the same pairs as img2dataset tar shards.
  ojson llava = ojson::array();
  std::vector<TarFile> shard;
  const auto flush_shard = [&] {
    if (shard.empty()) return;
    const std::string name = fmt::format("pretrain/{:05d}.tar", summary.pretrain_shards++);
    write_tar((root / name).string(), shard);
    summary.files.push_back(name);
    shard.clear();
  };
  for (int64_t i = 0; i < o.train_images; ++i) {
    const Scene s = make_scene(o.seed, "train", i);
    const std::string png = render_scene_png(s, o.image_size);
    const std::string rel = fmt::format("images/train/{:06d}.png", i);
    write_file(root / rel, png);
    summary.files.push_back(rel);

    // img2dataset key: 5-digit shard number then 4-digit index within the shard.
    const std::string key = fmt::format("{:05d}{:04d}", i / o.shard_size, i % o.shard_size);
    ojson meta{{"key", key},          {"caption", s.caption}, {"status", "success"},
               {"width", o.image_size}, {"height", o.image_size}, {"url", "synth://train/" + std::to_string(i)},
               {"color", s.color},    {"shape", s.shape},     {"count", s.count},
               {"position", s.position}};
    shard.push_back({key + ".png", png});
    shard.push_back({key + ".txt", s.caption});
    shard.push_back({key + ".json", meta.dump()});
    ++summary.pretrain_pairs;
    if (static_cast<int64_t>(shard.size()) == 3 * o.shard_size) flush_shard();

    // One conversation per image: `rounds` rounds of different question types in a seeded order, the first
    // with the image.
    Rng rng(mix_seed(o.seed, 11, static_cast<uint64_t>(i)));
    auto qs = all_questions(s, rng);
    const auto order = round_order(qs, o.question_weights, rng);
    ojson conv = ojson::array();
    for (size_t r = 0; r < std::min(qs.size(), static_cast<size_t>(o.rounds)); ++r) {
      const Question& q = qs[order[r]];
      conv.push_back(turn("human", r == 0 ? "<|image|>\n" + q.prompt : q.prompt));
      conv.push_back(turn("gpt", q.answer));
    }
    llava.push_back(ojson{{"id", fmt::format("synth-train-{:06d}", i)}, {"image", rel}, {"conversations", conv}});
  }
  flush_shard();
  for (int64_t i = 0; i < o.train_text; ++i) {
    Rng rng(mix_seed(o.seed, 12, static_cast<uint64_t>(i)));
    const Question q = text_task(rng);
    llava.push_back(ojson{{"id", fmt::format("synth-text-{:06d}", i)},
                          {"conversations", ojson::array({turn("human", q.prompt), turn("gpt", q.answer)})}});
  }
  // Interleave image and text-only samples in a seeded order, as a real mixture would be.
  {
    Rng rng(mix_seed(o.seed, 13));
    const auto order = permutation(llava.size(), rng);
    ojson shuffled = ojson::array();
    for (size_t k : order) shuffled.push_back(llava[k]);
    llava = std::move(shuffled);
  }
  summary.instruct_samples = static_cast<int64_t>(llava.size());
  write_file(root / "llava_train.json", llava.dump(1) + "\n");
  summary.files.push_back("llava_train.json");

  // Training clips of moving squares (video_train.json): per clip one sample per question, the question as the
  // only human turn with no <video> placeholder, so the frames go first, as in the video benchmarks' prompt.
  ojson videos = ojson::array();
  if (o.train_videos > 0) {
    fs::create_directories(root / "videos/train");
    for (int64_t i = 0; i < o.train_videos; ++i) {
      Rng rng(mix_seed(o.seed, 14, static_cast<uint64_t>(i)));
      const MotionClip clip = make_motion_clip(rng);
      const std::string rel = fmt::format("videos/train/{:06d}.avi", i);
      write_video((root / rel).string(), clip.frames(o.image_size), 8.0);
      summary.files.push_back(rel);
      const std::pair<std::string, std::string> qas[] = {{clip.direction_question(), clip.direction_answer()},
                                                         {MotionClip::late_question(), clip.late}};
      for (size_t k = 0; k < 2; ++k) {
        const Question q = short_answer("video", qas[k].first, qas[k].second);
        videos.push_back(ojson{{"id", fmt::format("synth-video-{:06d}-{}", i, k)},
                               {"video", rel},
                               {"conversations", ojson::array({turn("human", q.prompt), turn("gpt", q.answer)})}});
      }
    }
    summary.video_samples = static_cast<int64_t>(videos.size());
    write_file(root / "video_train.json", videos.dump(1) + "\n");
    summary.files.push_back("video_train.json");
  }

  // Every line of training text (captions, then the turns without the image placeholder), for
  // training a small tokenizer on exactly the words the demo uses.
  std::string corpus;
  const auto add_lines = [&corpus](const std::string& text) {
    std::string::size_type start = 0;
    while (start <= text.size()) {
      const auto end = std::min(text.find('\n', start), text.size());
      if (end > start) corpus.append(text, start, end - start).push_back('\n');
      start = end + 1;
    }
  };
  for (int64_t i = 0; i < o.train_images; ++i) add_lines(make_scene(o.seed, "train", i).caption);
  for (const ojson* set : {&llava, &videos})
    for (const auto& sample : *set)
      for (const auto& t : sample["conversations"]) {
        std::string v = t["value"].get<std::string>();
        if (v.rfind("<|image|>", 0) == 0) v.erase(0, std::string("<|image|>").size());
        add_lines(v);
      }
  write_file(root / "corpus.txt", corpus);
  summary.files.push_back("corpus.txt");

  // Held-out split: new images, every applicable question type per image, plus text-only questions.
  std::string eval_lines;
  int64_t qid = 0;
  const auto emit = [&](const Question& q, const std::string& image) {
    ojson line{{"question_id", qid++}};
    if (!image.empty()) line["image"] = image;
    line["question"] = q.question;
    line["prompt"] = q.prompt;
    line["answer"] = q.answer;
    line["type"] = q.type;
    eval_lines += line.dump() + "\n";
  };
  for (int64_t i = 0; i < o.heldout_images; ++i) {
    const Scene s = make_scene(o.seed, "heldout", i);
    const std::string rel = fmt::format("images/heldout/{:06d}.png", i);
    write_file(root / rel, render_scene_png(s, o.image_size));
    summary.files.push_back(rel);
    Rng rng(mix_seed(o.seed, 21, static_cast<uint64_t>(i)));
    for (const auto& q : all_questions(s, rng)) emit(q, rel);
  }
  for (int64_t i = 0; i < o.heldout_text; ++i) {
    Rng rng(mix_seed(o.seed, 22, static_cast<uint64_t>(i)));
    emit(text_task(rng), "");
  }
  summary.heldout_questions = qid;
  write_file(root / "heldout.jsonl", eval_lines);
  summary.files.push_back("heldout.jsonl");

  ojson manifest{{"generator", "owl2 data synth"},
                 {"seed", o.seed},
                 {"image_size", o.image_size},
                 {"train_images", o.train_images},
                 {"heldout_images", o.heldout_images},
                 {"train_text", o.train_text},
                 {"heldout_text", o.heldout_text},
                 {"shard_size", o.shard_size},
                 {"rounds", o.rounds},
                 {"question_weights", o.question_weights},
                 {"train_videos", o.train_videos},
                 {"video_samples", summary.video_samples},
                 {"pretrain_pairs", summary.pretrain_pairs},
                 {"pretrain_shards", summary.pretrain_shards},
                 {"instruct_samples", summary.instruct_samples},
                 {"heldout_questions", summary.heldout_questions},
                 {"colors", kColors},
                 {"shapes", kShapes},
                 {"positions", kPositions}};
  write_file(root / "manifest.json", manifest.dump(2) + "\n");
  summary.files.push_back("manifest.json");
  std::sort(summary.files.begin(), summary.files.end());
  return summary;
}

// ---------------------------------------------------------------------------------------------
// Synthetic benchmarks in the public formats

namespace {

std::string base64_encode(const std::string& bytes) {
  static const char* const kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v =
        (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8) | uint8_t(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out += kAlphabet[(v >> (6 * k)) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}


}  // namespace


std::vector<std::string> write_synth_bench(const SynthBenchOptions& o) {
  if (o.out_dir.empty()) throw std::invalid_argument("synth-bench: --out is required");
  if (o.images < 2) throw std::invalid_argument(fmt::format("synth-bench: need at least 2 images, got {}", o.images));
  const fs::path root(o.out_dir);
  std::vector<std::string> files;
  auto put = [&](const std::string& rel, const std::string& bytes) {
    fs::create_directories((root / rel).parent_path());
    write_file(root / rel, bytes);
    files.push_back(rel);
  };
  std::vector<Scene> scenes;
  std::vector<std::string> pngs;
  for (int64_t i = 0; i < o.images; ++i) {
    scenes.push_back(make_scene(o.seed, "heldout", i));
    pngs.push_back(render_scene_png(scenes.back(), o.image_size));
  }
  auto coco_name = [](int64_t image_id) { return fmt::format("COCO_val2014_{:012d}.png", image_id); };

  // VQAv2: three questions per image, ten answer records each.
  ojson questions = ojson::array(), annotations = ojson::array();
  for (int64_t i = 0; i < o.images; ++i) {
    const Scene& s = scenes[static_cast<size_t>(i)];
    const int64_t image_id = i + 1;
    put("vqav2/val2014/" + coco_name(image_id), pngs[static_cast<size_t>(i)]);
    const std::vector<Question> qs{ask_color(s), ask_shape(s), ask_count(s)};
    for (size_t k = 0; k < qs.size(); ++k) {
      const int64_t qid = image_id * 10 + static_cast<int64_t>(k);
      questions.push_back({{"image_id", image_id}, {"question", qs[k].question}, {"question_id", qid}});
      ojson answers = ojson::array();
      for (int a = 1; a <= 10; ++a)
        answers.push_back({{"answer", qs[k].answer}, {"answer_confidence", "yes"}, {"answer_id", a}});
      const std::string qtype = k == 0 ? "what color is the" : k == 1 ? "what shape is" : "how many";
      annotations.push_back({{"question_type", qtype},
                             {"multiple_choice_answer", qs[k].answer},
                             {"answers", answers},
                             {"image_id", image_id},
                             {"answer_type", k == 2 ? "number" : "other"},
                             {"question_id", qid}});
    }
  }
  put("vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
      ojson{{"info", {{"description", "owl2 synthetic VQAv2-format benchmark"}}},
            {"task_type", "Open-Ended"},
            {"data_type", "mscoco"},
            {"data_subtype", "val2014"},
            {"questions", questions}}
          .dump(1));
  put("vqav2/v2_mscoco_val2014_annotations.json",
      ojson{{"info", {{"description", "owl2 synthetic VQAv2-format benchmark"}}},
            {"data_type", "mscoco"},
            {"data_subtype", "val2014"},
            {"annotations", annotations}}
          .dump(1));

  // POPE: per image one present object and one absent one; the absent one differs by colour and shape
  // (random), by colour only (popular) or by shape only (adversarial).
  for (const char* split : {"adversarial", "popular", "random"}) {
    std::string lines;
    int64_t qid = 1;
    for (int64_t i = 0; i < o.images; ++i) {
      const Scene& s = scenes[static_cast<size_t>(i)];
      Rng rng(mix_seed(o.seed, 31, static_cast<uint64_t>(i)));
      std::string color = s.color, shape = s.shape;
      if (std::string(split) != "adversarial") color = other(kColors, s.color, rng);
      if (std::string(split) != "popular") shape = other(kShapes, s.shape, rng);
      const std::string image = coco_name(i + 1);
      lines += ojson{{"question_id", qid++},
                     {"image", image},
                     {"text", fmt::format("Is there a {} {} in the image?", s.color, s.shape)},
                     {"label", "yes"}}
                   .dump() +
               "\n";
      lines += ojson{{"question_id", qid++},
                     {"image", image},
                     {"text", fmt::format("Is there a {} {} in the image?", color, shape)},
                     {"label", "no"}}
                   .dump() +
               "\n";
    }
    put(fmt::format("pope/coco_pope_{}.json", split), lines);
  }
  for (int64_t i = 0; i < o.images; ++i) put("pope/val2014/" + coco_name(i + 1), pngs[static_cast<size_t>(i)]);

  // MME: three perception tasks, images and their question files side by side (a Yes and a No question).
  for (int64_t i = 0; i < o.images; ++i) {
    const Scene& s = scenes[static_cast<size_t>(i)];
    Rng rng(mix_seed(o.seed, 32, static_cast<uint64_t>(i)));
    const std::string stem = fmt::format("{:04d}", i);
    const char* suffix = " Please answer yes or no.";
    const std::string other_shape = other(kShapes, s.shape, rng), other_color = other(kColors, s.color, rng);
    const int other_count = s.count % 3 + 1;
    const std::map<std::string, std::string> tasks = {
        {"existence", fmt::format("Is there a {} in this image?{}\tYes\nIs there a {} in this image?{}\tNo\n", s.shape,
                                  suffix, other_shape, suffix)},
        {"color", fmt::format("Is the {} {} in the image?{}\tYes\nIs the {} {} in the image?{}\tNo\n", plural(s),
                              s.color, suffix, plural(s), other_color, suffix)},
        {"count", fmt::format("Are there {} shapes in the image?{}\tYes\nAre there {} shapes in the image?{}\tNo\n",
                              s.count, suffix, other_count, suffix)}};
    for (const auto& [task, text] : tasks) {
      put(fmt::format("mme/{}/{}.png", task, stem), pngs[static_cast<size_t>(i)]);
      put(fmt::format("mme/{}/{}.txt", task, stem), text);
    }
  }

  // MMBench: a colour question per image with the four colours as options, and the circular copies as
  // rows of the TSV (index + n * 1,000,000, options rotated by n), as in the official dev file.
  std::string tsv = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\tsplit\timage\tsource\tcomment\n";
  std::string copies;
  for (int64_t i = 0; i < o.images; ++i) {
    const Scene& s = scenes[static_cast<size_t>(i)];
    Rng rng(mix_seed(o.seed, 33, static_cast<uint64_t>(i)));
    const auto order = permutation(kColors.size(), rng);
    std::vector<std::string> opts;
    size_t answer = 0;
    for (size_t k = 0; k < order.size(); ++k) {
      opts.push_back(kColors[order[k]]);
      if (opts.back() == s.color) answer = k;
    }
    const std::string question = fmt::format("What color {} the {}?", s.count == 1 ? "is" : "are", plural(s));
    const std::string hint = i % 2 ? "The image shows coloured shapes on a black background." : "nan";
    const std::string b64 = base64_encode(pngs[static_cast<size_t>(i)]);
    for (size_t n = 0; n < opts.size(); ++n) {
      std::string row = fmt::format("{}\t{}\t{}", i + static_cast<int64_t>(n) * 1000000, question, hint);
      for (size_t k = 0; k < opts.size(); ++k) row += "\t" + opts[(k + n) % opts.size()];
      row += fmt::format("\t{}\tcolor_attribute\tattribute_reasoning\tdev\t{}\tsynthetic\tnan\n",
                         static_cast<char>('A' + (answer + opts.size() - n) % opts.size()), b64);
      (n == 0 ? tsv : copies) += row;
    }
  }
  put("mmbench/mmbench_dev_20230712.tsv", tsv + copies);

  // COCO captions (Karpathy-test style): two references per image.
  ojson images = ojson::array(), caps = ojson::array();
  int64_t ann_id = 1;
  for (int64_t i = 0; i < o.images; ++i) {
    const Scene& s = scenes[static_cast<size_t>(i)];
    const std::string rel = fmt::format("images/{:06d}.png", i);
    put("coco/" + rel, pngs[static_cast<size_t>(i)]);
    images.push_back({{"id", i + 1}, {"file_name", rel}});
    caps.push_back({{"image_id", i + 1}, {"id", ann_id++}, {"caption", s.caption}});
    caps.push_back({{"image_id", i + 1},
                    {"id", ann_id++},
                    {"caption", fmt::format("{} {} {} on a black background", kCountWords[static_cast<size_t>(s.count)],
                                            s.color, plural(s))}});
  }
  put("coco/coco_karpathy_test.json", ojson{{"images", images}, {"annotations", caps}}.dump(1));

  // Video QA (when the build reads and writes video): per scene one clip of a square moving across the frame
  // while a second one appears halfway (motion_clip), and two questions that need more than one frame: the
  // direction of motion and the colour that appears last. The three public formats, each from its own seeds:
  // MSRVTT-QA (test_qa.json by video_id, videos/video<id>.avi), MSVD-QA (the same JSON, videos/vid<id>.avi) and
  // TGIF-QA FrameQA (Test_frameqa_question.tsv, gifs/<gif_name>.gif).
  if (video_decoding_available()) {
    const auto json_qa = [&](const std::string& dir, uint64_t domain, const char* stem) {
      ojson qa = ojson::array();
      for (int64_t i = 0; i < o.images; ++i) {
        Rng rng(mix_seed(o.seed, domain, static_cast<uint64_t>(i)));
        const MotionClip clip = make_motion_clip(rng);
        const std::string rel = fmt::format("{}/videos/{}{}.avi", dir, stem, i + 1);
        write_video((root / rel).string(), clip.frames(o.image_size), 8.0);
        files.push_back(rel);
        qa.push_back({{"question", clip.direction_question()}, {"answer", clip.direction_answer()},
                      {"video_id", i + 1}, {"id", 2 * i}});
        qa.push_back({{"question", MotionClip::late_question()}, {"answer", clip.late}, {"video_id", i + 1},
                      {"id", 2 * i + 1}});
      }
      put(dir + "/test_qa.json", qa.dump(1));
    };
    json_qa("msrvtt_qa", 3, "video");
    json_qa("msvd_qa", 4, "vid");
    std::string tsv = "gif_name\tquestion\tanswer\tvid_id\tkey\ttype\n";
    for (int64_t i = 0; i < o.images; ++i) {
      Rng rng(mix_seed(o.seed, 5, static_cast<uint64_t>(i)));
      const MotionClip clip = make_motion_clip(rng);
      const std::string name = fmt::format("tumblr_synth{:04d}", i + 1);
      const std::string rel = "tgif_qa/gifs/" + name + ".gif";
      write_video((root / rel).string(), clip.frames(o.image_size), 8.0);
      files.push_back(rel);
      tsv += fmt::format("{}\t{}\t{}\tsynth{}\t{}\t3\n", name, clip.direction_question(), clip.direction_answer(),
                         i + 1, 2 * i);
      tsv += fmt::format("{}\t{}\t{}\tsynth{}\t{}\t2\n", name, MotionClip::late_question(), clip.late, i + 1,
                         2 * i + 1);
    }
    put("tgif_qa/Test_frameqa_question.tsv", tsv);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace owl2::data
