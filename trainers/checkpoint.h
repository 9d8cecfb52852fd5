// Crash-safe training checkpoints: one directory per step with named tensors (model, optimizer, RNG) and a
// state.json (step, scheduler, data-loader position, resolved config, format version, per-file CRC32),
// written atomically; keep the last K; `latest` always names a complete checkpoint; resume takes the
// newest valid one and says which it skipped and why. Also a run's save and resume through the Trainer's API.
#pragma once
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>

#include "data/loader.h"
#include "owl2/io/safetensors.h"

namespace owl2 {

class Trainer;

constexpr int kCheckpointFormatVersion = 1;

struct TrainingCheckpoint {
  int64_t step = 0;
  // One safetensors file per group: "model", "optimizer", "rng", ... (names: [A-Za-z0-9_.-]+).
  std::map<std::string, NamedTensors> tensors;
  nlohmann::json scheduler = nlohmann::json::object();
  nlohmann::json data_position = nlohmann::json::object();
  nlohmann::json extra = nlohmann::json::object();
  std::string config_text;  // the resolved config, as the run printed it
  // This rank's own groups (ZeRO optimizer shards, "optimizer.rank-00001"): every rank passes its own to
  // save(); on resume they appear in `tensors` with the shared groups. Names must differ across ranks.
  std::map<std::string, NamedTensors> rank_tensors;
};

// The ranks of a job that save one checkpoint together. barrier(what) must be a collective over all of them.
struct SaveGroup {
  int64_t rank = 0;
  int64_t world_size = 1;
  std::function<void(const std::string& what)> barrier;
};

struct SkippedCheckpoint {
  std::string dir;
  std::string reason;
};

struct ResumeResult {
  std::optional<TrainingCheckpoint> checkpoint;  // tensors view the mapped files (clone to own)
  std::string dir;                               // the checkpoint taken; empty when none is valid
  std::vector<SkippedCheckpoint> skipped;        // newer or incomplete ones passed over
  std::string summary() const;
};

class CheckpointManager {
 public:
  // `root` holds step-<NNNNNNNNN>/ directories and the `latest` pointer; keep_last >= 1.
  CheckpointManager(std::string root, int keep_last);

  // Writes `root/.tmp-step-N-<pid>/` (every file fsync'd), fsyncs it, renames it to `root/step-N/`, fsyncs
  // root, updates `latest` atomically, then removes all but the newest keep_last checkpoints. Returns the
  // checkpoint directory.
  std::string save(const TrainingCheckpoint& ckpt);
  // The same with several writers (a shared filesystem): rank 0 prepares root/.tmp-step-N/; after a
  // barrier every rank writes its rank_tensors there (rank 0 also the shared groups) and lists them with
  // their CRC32 in rank-<r>.json; after a second barrier rank 0 merges the lists into state.json and
  // renames, updates `latest` and prunes as save() does; a third barrier lets no rank run ahead of it.
  // A rank killed at any point leaves only a .tmp- directory, which resume() skips. All ranks call it.
  std::string save(const TrainingCheckpoint& ckpt, const SaveGroup& group);

  // The newest checkpoint that passes validate(); the ones skipped (newer, incomplete, corrupt) with reasons.
  ResumeResult resume(bool verify_checksums = true) const;

  // Empty if `dir` is a complete, uncorrupted checkpoint; otherwise the reason it is not.
  static std::string validate(const std::string& dir, bool verify_checksums = true);

  std::vector<std::string> complete_checkpoints() const;  // step-* directory names, oldest first
  std::string latest() const;                             // what `latest` names, or "" if absent

  // Test hook, called after each stage of save() ("begin", "file:<group>", "state.json", "synced",
  // "renamed", "latest", "pruned"); a test kills the process from here.
  std::function<void(const std::string& stage)> on_stage;

 private:
  void stage(const std::string& name) const {
    if (on_stage) on_stage(name);
  }
  void clean_leftovers() const;
  // Writes state.json into the finished temporary directory and commits it (rename, latest, prune).
  std::string commit(const std::string& tmp, const TrainingCheckpoint& ckpt, const nlohmann::json& files);
  std::string root_;
  int keep_last_;
};

// Every RNG a run draws from: "cpu" and "cuda.<i>" for each visible device (byte tensors).
// The default generators: "cpu", and "cuda" for the current CUDA device when there is one (the rank's own).
NamedTensors capture_rng_states();
// Restores them; "cuda" goes to the current CUDA device (any index) and is skipped without CUDA. Throws on an
// unknown name.
void restore_rng_states(const NamedTensors& states);

// AdamW state as named tensors "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.max_exp_avg_sq" (amsgrad),
// "<param>.step" (int64 scalar), for the parameters named in `params` that have state.
NamedTensors adamw_state_tensors(torch::optim::AdamW& optimizer, const NamedTensors& params);
// Restores it into `optimizer` (whose param groups hold `params`); a parameter with no entries starts fresh.
// Throws on shape mismatches or entries naming no parameter.
void load_adamw_state(torch::optim::AdamW& optimizer, const NamedTensors& params, const NamedTensors& state);

// A training run's checkpoint of trainer.step_count(), saved by every rank of `group` together: rank 0 writes
// the model (the fp32 masters in bf16; under ZeRO 3 the gathered full blocks) and the RNG states, the
// replicated optimizer state without ZeRO, or each rank its optimizer shard and the manifest with ZeRO
// (docs/distributed.md, "Checkpoints"); plus the step counters, the world size, the data position and the
// resolved config. A streaming loader's position differs per rank: `every_rank` (gathered by the caller, one per
// rank, rank order) is then stored too, as data_position.ranks. All ranks call it (collective). Returns the
// checkpoint directory.
std::string save_training_checkpoint(CheckpointManager& ckpts, Trainer& trainer, const data::LoaderState& data_position,
                                     const std::string& config_text, const SaveGroup& group,
                                     const std::vector<data::LoaderState>& every_rank = {});

// Restores the newest valid checkpoint of `ckpts` into `trainer`: model (and masters), optimizer state (saved at
// any world size and ZeRO stage: it reshards), RNG states and step counters. Returns the data position for
// `rank` of `world_size` (resharded from the saved world size; a streaming position, which is per rank, only
// at the saved world size), or nothing when there is no valid checkpoint. Writes to `log` (rank 0; nullptr: nowhere) the checkpoints it skipped and the one it took.
// Throws when the checkpoint's model does not match the trainer's. All ranks call it (collective).
std::optional<data::LoaderState> resume_training(const CheckpointManager& ckpts, Trainer& trainer, int64_t world_size,
                                                 std::ostream* log, int64_t rank = 0);

}  // namespace owl2
