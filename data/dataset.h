// Raw training samples (image bytes + conversation turns or a caption) from WebDataset tar shards,
// JSONL + image folders, LLaVA JSON instruction files and weighted mixtures of them; bad input is
// skipped, counted per reason and reported. Formats and semantics: docs/datasets.md.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <vector>

#include "data/choices.h"

namespace owl2::data {

// One conversation turn; `from` is "system", "human" or "gpt".
struct Turn {
  std::string from;
  std::string value;
};

// What a dataset yields: encoded image bytes (in placeholder order) and either turns or a caption.
struct RawSample {
  std::string source;                    // the dataset's name (its path)
  std::string id;
  std::vector<std::string> images;       // encoded bytes (PNG, JPEG, ...), one per image
  std::vector<std::string> image_paths;  // where each came from: a file, or "shard.tar:member"
  std::vector<Turn> turns;               // instruction data; empty for image-text pairs
  std::string caption;                   // image-text pairs; empty for instruction data
};

// Cheap facts about a sample, known without reading its images (for grouping and length batching).
struct SampleInfo {
  int num_images = 0;
  int64_t text_chars = 0;  // characters of caption or turns
};

// An indexable dataset. get() and info() are thread-safe; get() throws std::runtime_error (naming the
// path) if the bytes can no longer be read.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual size_t size() const = 0;
  virtual RawSample get(size_t index) const = 0;
  virtual SampleInfo info(size_t index) const = 0;
  virtual const std::string& name() const = 0;
  // The sample without its image bytes (images empty; image_paths, turns and caption as get() gives them):
  // what the packer tokenizes to learn a sample's length. The default reads the images and drops them.
  virtual RawSample text(size_t index) const {
    RawSample s = get(index);
    s.images.clear();
    return s;
  }
};

// Reasons for skipping input (the keys of BadInputLog::counts()).
namespace bad {
inline constexpr const char* kCorruptTar = "corrupt_tar";                // damaged/truncated archive or member
inline constexpr const char* kMissingImage = "missing_image";            // image file or tar member absent
inline constexpr const char* kMissingCaption = "missing_caption";        // pair without .txt / caption
inline constexpr const char* kMalformedJson = "malformed_json";          // a JSON line or member that does not parse
inline constexpr const char* kBadEntry = "bad_entry";                    // parses, but fields are missing or mistyped
inline constexpr const char* kPlaceholderMismatch = "placeholder_mismatch";  // <|image|> count != image count
inline constexpr const char* kCorruptImage = "corrupt_image";            // image bytes that do not decode
inline constexpr const char* kTransformError = "transform_error";        // the loader's transform threw
}  // namespace bad

// Counts skipped input per reason and per file, and prints the first few messages of each reason
// (then every 1000th) to `out`. Thread-safe.
class BadInputLog {
 public:
  explicit BadInputLog(std::ostream* out = nullptr, int messages_per_reason = 5);
  // `where` is the file (plus ":line" or ":member" when known); `file` groups counts for worst_files().
  void report(const std::string& reason, const std::string& file, const std::string& where,
              const std::string& detail);
  size_t total() const;
  std::map<std::string, size_t> counts() const;
  // Files with the most bad input, most first (at most k).
  std::vector<std::pair<std::string, size_t>> worst_files(size_t k = 5) const;
  // "missing_image 3, malformed_json 1" (empty when nothing was skipped).
  std::string summary() const;

 private:
  mutable std::mutex mu_;
  std::ostream* out_;
  int messages_per_reason_;
  std::map<std::string, size_t> counts_;
  std::map<std::string, size_t> per_file_;
};

// Throws std::runtime_error if bad / (good + bad) > max_fraction, naming the dataset, the counts per
// reason and the worst files of `log`.
void check_bad_fraction(const std::string& dataset, size_t good, size_t bad, double max_fraction,
                        const BadInputLog& log);

struct ReadOptions {
  std::shared_ptr<BadInputLog> log;  // where skipped input is reported; a fresh stderr log if null
  double max_bad_fraction = 0.01;    // above this share of skipped entries, opening fails (1 disables)
  bool check_files = true;           // stat image files at open; missing ones skip their sample
  std::string image_root;            // base of relative image paths; default: the folder of the file
  int64_t video_frames = 8;          // frames sampled from each "video" sample (data/video.h)
  VideoLayout video_layout = VideoLayout::kFramesFirst;  // how they stand in the prompt (data/choices.h)
};

// WebDataset tar shards in the img2dataset layout (key.{jpg,png,...} + key.txt and/or key.json with
// "caption"): `path` is one .tar (plain or compressed), a folder whose *.tar files are read in name order, a
// brace pattern (`shards-{000000..000099}.tar`, see expand_shard_pattern) or a JSON shard list (a .json file
// holding an array of shard paths, relative to its folder). Members are grouped by key (the basename up to its
// first dot). A shard named by a pattern or a list that does not exist is an error naming it.
std::shared_ptr<Dataset> open_tar_shards(const std::string& path, const ReadOptions& options = {});

// Expands WebDataset-style braces: `{a..b}` is the integers a to b (zero-padded to a's width when a has a
// leading zero or both ends have the same width), `{x,y}` the alternatives; several braces multiply, left to
// right. Throws std::invalid_argument naming the pattern for an unbalanced brace, a decreasing or non-numeric
// range, or more than 10 million names.
std::vector<std::string> expand_shard_pattern(const std::string& pattern);

// The shard files `path` names, in the forms open_tar_shards takes (a folder's shards in name order). With
// check_exist, a shard named by a pattern or list that is not a file is an error naming it (a stat per shard).
std::vector<std::string> resolve_shards(const std::string& path, bool check_exist);

// Whether a member's extension (after the key's first dot) is an image the tar readers take: jpg, jpeg, png,
// webp, bmp, tif, tiff, in any case.
bool is_image_ext(std::string ext);

// The caption of an image-text pair from its .txt member or else the "caption" string of its .json member
// (nullptr: no such member). False when neither gives one; the reason is reported to `log` under `where`.
bool pair_caption(const std::string* txt, const std::string* json_text, const std::string& shard,
                  const std::string& where, BadInputLog& log, std::string& caption);

// Whether `path` is a JSON shard list: a .json file whose top-level array starts with a string (LLaVA JSON
// starts with an object). Reads only the first bytes.
bool is_shard_list(const std::string& path);

// JSONL, one sample per line: {"image": path or [paths], "caption" (or "text"): ...} for pairs,
// {"conversations": [...]} as in LLaVA, or {"question", "answer"} (and optional "prompt") as in
// owl2's held-out files. Image paths are relative to options.image_root.
std::shared_ptr<Dataset> open_jsonl(const std::string& path, const ReadOptions& options = {});

// LLaVA JSON: an array of {"id", "image": path or [paths] (optional), "conversations": [{"from":
// "human"|"gpt"|"system", "value"}]} (a top-level "system" string becomes a leading system turn).
// "<image>" is accepted as an alias of "<|image|>". A file that is not valid JSON is an error.
// Instead of "image", "video": a clip path; its options.video_frames sampled frames are the sample's images, their
// placeholders (options.video_layout, video_frame_slots) all before the text: where "<video>" stands in a turn,
// else in front of the first human turn (the same holds for JSONL entries).
std::shared_ptr<Dataset> open_llava_json(const std::string& path, const ReadOptions& options = {});

// By kind: a folder, *.tar / *.tar.gz, a brace pattern or a JSON shard list -> tar shards, *.jsonl -> JSONL,
// other *.json -> LLaVA JSON.
std::shared_ptr<Dataset> open_dataset(const std::string& path, const ReadOptions& options = {});

// A weighted mixture: source k contributes round(size * w_k / sum w) samples (largest remainder),
// drawn by cycling through seeded permutations of the source (so a small source is repeated and a
// large one subsampled). size 0 means the sum of the source sizes. Deterministic from the seed.
struct MixtureSource {
  std::shared_ptr<Dataset> dataset;
  double weight = 1.0;
};
std::shared_ptr<Dataset> make_mixture(const std::vector<MixtureSource>& sources, size_t size, uint64_t seed);

// `owl2 data verify`: opens a dataset without the bad-fraction limit, reads every sample (and decodes
// every image when `decode`), and counts what was skipped.
struct VerifyReport {
  size_t samples = 0;  // good samples
  size_t bad = 0;      // skipped entries, all reasons
  size_t images = 0;   // images read
  std::map<std::string, size_t> counts;
  std::vector<std::pair<std::string, size_t>> worst_files;
  bool over_limit = false;  // bad / (samples + bad) > max_bad_fraction
};
VerifyReport verify_dataset(const std::string& path, double max_bad_fraction, bool decode, std::ostream* messages);

// Number of "<|image|>" occurrences in a text.
int count_image_placeholders(const std::string& text);

}  // namespace owl2::data
