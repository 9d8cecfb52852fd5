// A deterministic synthetic dataset of coloured shapes, for the demo and the tests: PNG images,
// captions (WebDataset tar shards), LLaVA-format instructions and held-out evaluation questions.
// Layout and contents: docs/datasets.md.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/rng.h"

namespace owl2::data {

struct SynthOptions {
  std::string out_dir;
  uint64_t seed = 0;
  int image_size = 32;            // square images, >= 16
  int64_t train_images = 2000;    // images of the training split (captions + instructions)
  int64_t heldout_images = 200;   // images of the held-out split (evaluation questions)
  int64_t train_text = 500;       // text-only instruction samples in the training split
  int64_t heldout_text = 50;      // text-only questions in the held-out split
  int64_t shard_size = 1000;      // samples per pretraining tar shard
  int rounds = 3;                 // question rounds per training image conversation, 1..7 (capped at the
                                  // questions that apply: 7 for one shape, 6 for several)
  int64_t train_videos = 0;       // clips of moving squares for video fine-tuning (video_train.json), 0 = none
  // Relative weights (>= 1) of question types when a training conversation picks its rounds: types picked one
  // after another without replacement, each with probability proportional to its weight (unlisted types 1), so a
  // heavier type is asked more often and earlier. Empty: a uniform random order. Keys: kQuestionTypes but text.
  std::map<std::string, int64_t> question_weights;
};

// The question types of the held-out file, in its order.
extern const std::array<const char*, 8> kQuestionTypes;

// One rendered scene: `count` shapes of one colour and kind. A single shape sits in one of the
// regions left/right/top/bottom; two or three shapes sit in distinct quadrants.
struct Scene {
  std::string color;     // red | green | blue | yellow
  std::string shape;     // circle | square | triangle
  int count = 1;         // 1..3 (image index % 3 + 1, so every split has all counts)
  std::string position;  // left | right | top | bottom when count == 1, else ""
  std::string caption;   // "a red circle on the left", "two blue squares"
  struct Placed {
    double cx, cy, half;  // centre and half-size, as fractions of the image side
  };
  std::vector<Placed> placed;  // one per shape, jittered
};

// The scene of image `index` in `split` ("train" or "heldout"); a pure function of (seed, split, index).
Scene make_scene(uint64_t seed, const std::string& split, int64_t index);

// RGB values of the palette and the background.
struct Rgb {
  uint8_t r, g, b;
};
Rgb color_rgb(const std::string& color);  // throws std::invalid_argument for an unknown colour
extern const Rgb kBackground;

// Renders a scene as PNG bytes (image_size x image_size, 8-bit RGB).
std::string render_scene_png(const Scene& scene, int image_size);

struct SynthSummary {
  int64_t pretrain_pairs = 0;
  int64_t pretrain_shards = 0;
  int64_t instruct_samples = 0;  // training conversations (image + text-only)
  int64_t heldout_questions = 0;
  int64_t video_samples = 0;  // video_train.json entries (two questions per clip)
  std::vector<std::string> files;  // every file written, relative to out_dir, sorted
};

// Writes the whole dataset under options.out_dir (created if needed; existing files are overwritten).
// Same options -> byte-identical files.
SynthSummary write_synth_dataset(const SynthOptions& options);

// Small benchmark folders in the public formats of the paper's benchmarks, built from held-out scenes, so that
// `owl2 eval --bench` runs end to end in CI (docs/eval.md): vqav2/ (VQAv2 questions + annotations JSON),
// pope/ (coco_pope_{random,popular,adversarial}.json), mme/ (existence, count, color task folders),
// mmbench/ (mmbench_dev_20230712.tsv with base64 images and the circular copies), coco/ (Karpathy-style
// caption annotations) and, when the build has video support, clips of moving squares with questions on the
// direction of motion and the colour that appears last: msrvtt_qa/ (test_qa.json + videos/video<id>.avi),
// msvd_qa/ (test_qa.json + videos/vid<id>.avi) and tgif_qa/ (Test_frameqa_question.tsv + gifs/<name>.gif). Images are PNG files
// (named .png where the public files use .jpg).
struct SynthBenchOptions {
  std::string out_dir;
  uint64_t seed = 0;
  int image_size = 32;
  int64_t images = 12;  // scenes per benchmark, >= 2
};
// Same options -> byte-identical files. Returns every file written, relative to out_dir, sorted.
std::vector<std::string> write_synth_bench(const SynthBenchOptions& options);

// The VQA-style instruction suffixes (spec §4.1: LLaVA-1.5 prompts).
extern const char* const kShortAnswerPrompt;  // "\nAnswer the question using a single word or phrase."
extern const char* const kMultipleChoicePrompt;  // "\nAnswer with the option’s letter from the given choices directly."

}  // namespace owl2::data
