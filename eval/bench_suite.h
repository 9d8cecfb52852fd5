// The benchmark table behind `owl2 eval --bench`: for each benchmark of the paper, the reader of its public
// files, the prompt builder, the decoding settings, the post-processing and the scorer (eval_metrics.md,
// spec §5.2), plus the prediction cache that makes reruns resume. Model-free: trainers/bench_eval runs the model.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace owl2::eval {

// The instructions the reference eval scripts append (spec §5.2, eval_metrics.md §1.2, §2).
extern const char* const kShortAnswerInstruction;  // "Answer the question using a single word or phrase."
extern const char* const kOptionInstruction;       // "Answer with the option’s letter ..." (U+2019, owl2 scripts)
extern const char* const kOptionInstructionAscii;  // the same with "'" (LLaVA's ScienceQA prompt)
extern const char* const kCaptionInstruction;      // "Provide a one-sentence caption for the provided image."
// Frames sampled from each clip by the video QA benchmarks (data/video.h); the paper does not state its count.
inline constexpr int64_t kVideoBenchFrames = 8;

// "USER: " + one "<|image|>" per image + body + " ASSISTANT: " (the hand-built eval prompt, trailing space kept).
std::string owl2_eval_prompt(const std::string& body, size_t num_images);

struct BenchImage {
  std::string path;   // the file; for in-memory images the name quoted in errors
  std::string bytes;  // encoded image already in memory (MMBench's base64 column); empty: read `path`
};

struct BenchItem {
  std::string id;      // unique in the benchmark: the key of the prediction cache
  std::string group;   // --limit counts groups: an MME image's two questions, an MMBench question's copies
  std::string prompt;  // the full prompt text, template included, "<|image|>" once per image
  std::vector<BenchImage> images;
  std::string video;          // a clip whose video_frames sampled frames are the images (images then empty)
  int64_t video_frames = 0;
  // Set: the clip's one frame this names from its frame count and frame rate is the image instead (video_frames 1).
  std::function<int64_t(int64_t total, double fps)> video_pick;
  nlohmann::ordered_json meta;  // what the results writer needs (the public ids, the ground truth, ...)
};

struct BenchDecoding {
  int64_t max_new_tokens = 10;
  int64_t min_new_tokens = 1;
};

// The files one score came from, so that `owl2 score --metric M --refs R --preds P` reproduces it.
struct ScoredFiles {
  std::string name;  // key in the metrics JSON's "scores"
  std::string metric, refs, preds;
};

struct BenchScore {
  std::vector<ScoredFiles> files;
  nlohmann::ordered_json scores;  // name -> what score_files returned for those files
  std::string headline_name;      // e.g. "accuracy", "perception", "CIDEr x100"
  double headline = 0;            // the number the paper reports, on the paper's scale
  bool has_score = true;          // false for server-scored splits (only an upload file is written)
  nlohmann::ordered_json extra;   // benchmark-level aggregates (POPE's split means)
};

struct BenchDef {
  std::string name;
  std::string description;
  BenchDecoding decoding;
  // All questions of the public files under data_dir, in file order.
  std::function<std::vector<BenchItem>(const std::string& data_dir)> read;
  // A decoded, stripped model output -> what the results file gets.
  std::function<std::string(const std::string&)> postprocess;
  // Writes the public results file(s) for the evaluated items under out_dir (and, when only part of the
  // benchmark was evaluated, the matching part of the annotations) and scores them with the file scorers.
  std::function<BenchScore(const std::string& data_dir, const std::vector<BenchItem>& items,
                           const std::vector<std::string>& predictions, const std::string& out_dir)>
      score;
};

const std::vector<BenchDef>& bench_defs();
// Throws std::invalid_argument listing the benchmark names.
const BenchDef& find_bench(const std::string& name);

// The items of the first `limit` groups (all of them when limit <= 0).
std::vector<BenchItem> limit_groups(const std::vector<BenchItem>& items, int64_t limit);

// Post-processes every prediction and scores them (def.postprocess, def.score).
BenchScore score_bench(const BenchDef& def, const std::string& data_dir, const std::vector<BenchItem>& items,
                       const std::vector<std::string>& raw_predictions, const std::string& out_dir);

// ---- the prediction cache: {out}/predictions.jsonl (merged) and {out}/predictions.rank<R>.jsonl ----

// Indices i of [0, n) with i % world == rank: the questions a rank answers.
std::vector<size_t> shard_indices(size_t n, int64_t rank, int64_t world);

std::string rank_cache_path(const std::string& dir, int64_t rank);
std::string merged_cache_path(const std::string& dir);

// Every cached {id, prediction} of dir (the merged file and all rank files). A last line without its newline
// is an interrupted write and is skipped; a malformed line, or one id with two different predictions, throws
// std::invalid_argument naming the file and the line.
std::map<std::string, std::string> read_prediction_cache(const std::string& dir);

// Appends lines {"id", "prediction"} and flushes (a killed run keeps what it wrote).
void append_predictions(const std::string& path, const std::vector<std::pair<std::string, std::string>>& preds);

// Rank 0 after the barrier: the predictions of `items` in their order from all cache files; writes the merged
// file and removes the rank files. Throws std::runtime_error naming the first id nobody answered.
std::vector<std::string> merge_prediction_cache(const std::string& dir, const std::vector<BenchItem>& items);

// ---- MMBench circular evaluation (eval_metrics.md §2.5) ----

// A TSV row of MMBench, options by letter.
struct MmbenchTsvRow {
  int64_t index = 0;
  std::string question, hint, answer, category, l2_category, split;
  std::map<char, std::string> options;
  std::string image_b64;
};
// The official TSVs already hold the rotated copies (index + n * 1,000,000). For a question that has only its
// main row, the k-1 copies are added: copy n shows original option (i + n) mod k at letter i, and its answer
// letter moves accordingly. Rows keep their order; added copies follow their main row. Rows without an answer
// (the test split) are left as they are.
std::vector<MmbenchTsvRow> mmbench_expand_circular(const std::vector<MmbenchTsvRow>& rows);
// The owl2 MMBench prompt (without the template): hint or "N/A", question, "A. opt" lines, instruction.
std::string mmbench_prompt_body(const MmbenchTsvRow& row);

// ---- small format helpers, exposed for the tests ----
std::string base64_decode(const std::string& text, const std::string& where);  // throws naming `where`
// One CSV file (RFC 4180 quoting) as rows of fields; throws naming the file and line for an open quote.
std::vector<std::vector<std::string>> read_csv(const std::string& path);

}  // namespace owl2::eval
