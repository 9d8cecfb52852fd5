// `owl2 eval --bench`: runs a saved model on one benchmark of eval/bench_suite.h: the questions sharded over
// ranks, batched greedy answers appended to a per-rank cache (a rerun generates only what is missing), rank 0
// merging and scoring the public results files.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "data/choices.h"
#include "data/image.h"
#include "data/tokenizer.h"
#include "owl2/model/model.h"

namespace owl2 {

class Comm;
namespace eval {
struct BenchItem;
}

struct BenchRunOptions {
  std::string bench;
  std::string data_dir;
  std::string out_dir;     // the benchmark's files go to out_dir/<bench>/
  int64_t batch_size = 8;  // answers do not depend on it
  int64_t limit = 0;       // first K questions (groups: an MME image, an MMBench question with its copies); 0 = all
  ImageConfig image;       // the eval scripts stretch to a square: ImageMode::kResize (spec §5.2)
  // How a clip's frames stand in the prompt of the video benchmarks (the model's data.video_layout).
  VideoLayout video_layout = VideoLayout::kFramesFirst;
};

struct BenchRunResult {
  nlohmann::ordered_json metrics;  // rank 0 only (null elsewhere); also written to <out>/<bench>/metrics.json
  int64_t questions = 0;           // evaluated questions
  int64_t generated = 0;           // answered by this rank in this run
  int64_t cached = 0;              // taken from the cache by this rank
  std::string table;               // summary table (rank 0)
};

// The prompt `it` is asked with: its own, with a clip's frames (frames-first in the readers) put in `layout`.
// Throws std::logic_error when the prompt lacks the clip's run of placeholders.
std::string bench_item_prompt(const eval::BenchItem& it, VideoLayout layout);

// comm: null for a single process; otherwise every rank calls this and waits at a barrier before rank 0 merges.
BenchRunResult run_benchmark(MPLUGOwl2ForCausalLM& model, const Tokenizer& tokenizer, const BenchRunOptions& options,
                             Comm* comm = nullptr);

}  // namespace owl2
