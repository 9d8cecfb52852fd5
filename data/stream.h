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

// The shards (indices into the full list of `num_shards`) that `rank` of `world_size` reads in `epoch`, in order:
// entries rank, rank + W, ... of a permutation drawn from (seed, epoch). Every shard goes to exactly one rank per
// epoch; ranks differ by at most one shard.
std::vector<size_t> shard_assignment(size_t num_shards, uint64_t seed, int64_t epoch, int rank, int world_size);

class ShardStream {
 public:
  // `path` names the shards as for open_tar_shards; nothing is opened or stat'ed here. Throws std::runtime_error
  // naming the path when there are fewer shards than ranks (a rank would read nothing).
  ShardStream(const std::string& path, const ReadOptions& options, uint64_t seed, int rank, int world_size);
  ~ShardStream();

  // Moves to `p` (lazily: the shard is opened, and its first p.sample groups skipped unread, by the next next()).
  // Throws std::invalid_argument naming the position when p.shard is past this rank's shard list of p.epoch.
  void seek(const StreamPosition& p);
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

  std::string name_;
  std::vector<std::string> shards_;
  ReadOptions options_;
  std::shared_ptr<BadInputLog> log_;
  uint64_t seed_;
  int rank_, world_size_;
  StreamPosition pos_;
  std::vector<size_t> mine_;  // shard_assignment of pos_.epoch
  std::unique_ptr<Open> open_;
  size_t good_ = 0, bad_ = 0;
};

}  // namespace owl2::data
