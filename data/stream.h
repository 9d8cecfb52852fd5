// Streaming WebDataset shards: each data-parallel rank reads only its own share of the shards, front to back,
// with memory bounded by one sample, and its position is three integers (epoch, shard, sample) that a checkpoint
// can carry. For image-text pretraining sets too large to index (hundreds of millions of pairs in ~10^5 shards).
// Semantics: docs/datasets.md ("Streaming").
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace owl2::data {

// Where a rank's stream stands: `shard` indexes the rank's shard list of `epoch` (shard_assignment), `sample` counts
// the key groups (good or skipped) already read from that shard.
struct StreamPosition {
  int64_t epoch = 0;
  int64_t shard = 0;
  int64_t sample = 0;
};

// One entry of a resharded epoch (reshard_streams): a shard (index into the full list) and the sample groups of it
// that were already read before the resume.
struct ShardStart {
  int64_t shard = 0;
  int64_t sample = 0;
  bool operator==(const ShardStart&) const = default;
};

// A rank's stream state: its position and, in an epoch that was resharded, its plan (empty: shard_assignment);
// after a resharding that straddled an epoch boundary, also what follows position.epoch: epoch `then_epoch` (-1:
// position.epoch + 1) read by `then_plan` (empty: shard_assignment).
struct RankStream {
  StreamPosition position;
  std::vector<ShardStart> plan;
  int64_t then_epoch = -1;
  std::vector<ShardStart> then_plan;
};

// The shards (indices into the full list of `num_shards`) that `rank` of `world_size` reads in `epoch`, in order:
// entries rank, rank + W, ... of a permutation drawn from (seed, epoch). Every shard goes to exactly one rank per
// epoch; ranks differ by at most one shard.
std::vector<size_t> shard_assignment(size_t num_shards, uint64_t seed, int64_t epoch, int rank, int world_size);

// Resuming streams saved by saved.size() ranks (rank r's state at saved[r]) at `world` ranks: what is left of the
// epoch E the saved ranks stand in (each saved rank's unfinished shards, the current one from the sample group it
// stood at) is dealt out to the new ranks in turn (one shard from each saved rank, then the next ones), so every
// sample group of the epoch is still read exactly once. A new rank that gets nothing starts the next epoch, whose
// shards are its own share (shard_assignment at `world`).
// When the saved ranks straddle an epoch boundary (some still in E, some already in E + 1, as near the end of an
// epoch, or a saved rank carries a `then` of an earlier such resharding), what is left of E + 1 (the shares of the
// ranks still in E whole, the rest of the others') is dealt out the same way, and each new rank reads its part of E,
// then its part of E + 1 (RankStream::then_*), then its own share from E + 2 on; a new rank with nothing left of an
// epoch skips it. Throws std::invalid_argument when the saved ranks span more than two epochs.
std::vector<RankStream> reshard_streams(const std::vector<RankStream>& saved, size_t num_shards, uint64_t seed, int world);

class ShardStream {
 public:
  // `path` names the shards as for open_tar_shards; nothing is opened or stat'ed here. Throws std::runtime_error
  // naming the path when there are fewer shards than ranks (a rank would read nothing).
  ShardStream(const std::string& path, const ReadOptions& options, uint64_t seed, int rank, int world_size);
  ~ShardStream();

  // Moves to `p` (lazily: the shard is opened, and its first p.sample groups skipped unread, by the next next()).
  // With a `plan` (a resharded epoch, reshard_streams) the rank reads plan's shards in epoch p.epoch instead of its
  // shard_assignment, p.shard indexing the plan, and each plan shard from its own start; p.sample counts groups
  // from the shard file's start either way. Throws std::invalid_argument naming the position when p.shard is past
  // the rank's shard list, and naming the entry when a plan names a shard outside the list.
  void seek(const StreamPosition& p, std::vector<ShardStart> plan = {});
  // The plan of the current epoch (empty: its shard_assignment).
  const std::vector<ShardStart>& plan() const { return plan_; }
  // The next good sample of this rank's epoch, or nullopt at its end. Bad groups (no image, no caption, bad JSON)
  // and unreadable or damaged shards are reported to the log, counted and passed over; more than the options'
  // max_bad_fraction of bad groups (checked from 200 groups on) throws std::runtime_error naming the worst files.
  std::optional<RawSample> next();
  // The position after the last sample next() returned (or where seek() put it).
  StreamPosition position() const;

  const std::string& name() const { return name_; }
  size_t num_shards() const { return shards_.size(); }
  uint64_t seed() const { return seed_; }
  // The shard files of this rank in the current epoch, in reading order.
  std::vector<std::string> epoch_shards() const;
  size_t good() const { return good_; }
  size_t bad() const { return bad_; }
  BadInputLog& log() const { return *log_; }

 private:
  struct Open;  // the open shard: its reader and the header read ahead
  bool open_current();
  int64_t start_sample(int64_t shard) const;  // groups of plan shard `shard` read before a reshard (0 without a plan)

  std::string name_;
  std::vector<std::string> shards_;
  ReadOptions options_;
  std::shared_ptr<BadInputLog> log_;
  uint64_t seed_;
  int rank_, world_size_;
  StreamPosition pos_;
  std::vector<size_t> mine_;  // shard_assignment of pos_.epoch, or plan_'s shards
  std::vector<ShardStart> plan_;
  std::unique_ptr<Open> open_;
  size_t good_ = 0, bad_ = 0;
};

}  // namespace owl2::data
