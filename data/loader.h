// A generic loader over an indexable Dataset: a deterministic per-epoch batch plan (seed, epoch),
// disjoint batches per data-parallel rank, worker threads running a user transform with a bounded,
// order-preserving prefetch queue, length validation before collation, and exact mid-epoch resume.
// Semantics: docs/datasets.md ("Loader").
#pragma once
#include <algorithm>
#include <condition_variable>
#include <exception>
#include <cstdint>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "data/choices.h"
#include "data/dataset.h"
#include "data/stream.h"

namespace owl2::data {

// Where a loader stands: batches already produced in `epoch` for this rank. Small and JSON-serializable,
// so a checkpoint can carry it and a resumed run continues with exactly the batches that would follow.
// A streaming loader (over a ShardStream) also records its stream position: `shard` (>= 0; -1 for an indexed
// loader) in the rank's shard list of the epoch and `sample` groups read from it. That position belongs to one
// rank at one world size; reshard_streams (data/stream.h) turns the positions of all ranks into those of another
// world size, with a `plan` for the rest of the epoch; one that straddled an epoch boundary also says which epoch
// comes next (`then_epoch`, -1: epoch + 1) and its plan (`then_plan`; RankStream). `shards`: the stream's shard
// count (0: not recorded).
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;
  int64_t shard = -1;
  int64_t sample = 0;
  std::vector<ShardStart> plan = {};
  int64_t shards = 0;
  int64_t then_epoch = -1;
  std::vector<ShardStart> then_plan = {};
  bool streaming() const { return shard >= 0; }
};
std::string state_to_json(const LoaderState& s);
LoaderState state_from_json(const std::string& text);  // throws std::invalid_argument naming the bad field

struct LoaderOptions {
  size_t batch_size = 1;     // per rank
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  int num_workers = 2;       // transform threads; 0 runs the transform in the caller's thread
  size_t prefetch = 64;      // examples computed ahead of the consumer (bounded queue), >= 1
  bool shuffle = true;
  bool drop_last = false;    // drop partial batches
  // Batches hold only image samples or only text-only samples; within windows of
  // batch_size * group_window samples of one modality, samples are sorted by length (longest first).
  bool group_by_modality = false;
  size_t group_window = 32;
  int64_t max_length = 0;    // > 0: examples longer than this are dropped or truncated (length_policy)
  LengthPolicy length_policy = LengthPolicy::kDrop;
  // More failed samples (get/transform threw) than this share of those taken is an error naming the
  // worst files, checked once at least bad_check_after samples were taken (1 disables).
  double max_bad_fraction = 0.01;
  int64_t bad_check_after = 200;
  // Packing (docs/datasets.md, "Packing"): > 0 places samples into rows of at most pack_tokens tokens by a
  // best-fit over a look-ahead of pack_buffer samples; batch_size then counts rows. Needs the planned_length
  // hook; max_length becomes min(max_length, pack_tokens).
  int64_t pack_tokens = 0;
  size_t pack_buffer = 64;
};

// The epoch's batches (dataset indices) for options.rank. A pure function of the dataset size, the
// samples' info (modality, length; used only when grouping) and the options: the global batch list is
// built from a permutation seeded by (seed, epoch), then rank r takes batches r, r + W, r + 2W, ...
// (the last size % W batches are left out so every rank has the same number).
std::vector<std::vector<size_t>> plan_epoch(const Dataset& dataset, const LoaderOptions& options, int64_t epoch);

// Best-fit packing of `order` (dataset indices; lengths[i] the length of index i, each <= budget) into rows
// of at most `budget` tokens. A row starts with the oldest sample of a look-ahead window of `buffer` samples
// (so no sample waits for more than `buffer` rows), then takes, while any fits, the longest sample of the
// window that fits what is left (the earliest of equals), refilling the window from `order`. Deterministic;
// every index lands in exactly one row, in window order.
std::vector<std::vector<size_t>> pack_rows(const std::vector<size_t>& order, const std::vector<int64_t>& lengths,
                                           int64_t budget, size_t buffer);

// The packed epoch for options.rank (options.pack_tokens > 0): batches of batch_size rows, each row a list of
// dataset indices. The same permutation as plan_epoch; with group_by_modality, image and text-only samples are
// packed into separate rows and batches. Rank r takes batches r, r + W, ... of the one global list, so W ranks
// see together what 1 rank sees over W consecutive batches. `lengths` holds every sample's planned length.
std::vector<std::vector<std::vector<size_t>>> plan_packed_epoch(const Dataset& dataset, const LoaderOptions& options,
                                                                int64_t epoch, const std::vector<int64_t>& lengths);

// Counts of what the loader changed or left out, over the loader's lifetime.
struct LoaderCounters {
  int64_t taken = 0;           // samples taken from the prefetch queue
  int64_t examples = 0;        // examples that reached collate
  int64_t transform_errors = 0;
  int64_t dropped_too_long = 0;
  int64_t truncated = 0;
  int64_t empty_batches = 0;   // batches with no example left (skipped; the position still advances)
};

// Example: what the transform makes of one RawSample; Batch: what collate makes of a batch of them.
template <class Example, class Batch>
class Loader {
 public:
  using Transform = std::function<Example(RawSample&&)>;
  using Collate = std::function<Batch(std::vector<Example>&&)>;
  // Packing: the examples of a batch and the row of each (non-decreasing from 0).
  using PackedCollate = std::function<Batch(std::vector<Example>&&, const std::vector<size_t>& row_of)>;
  struct LengthHooks {
    std::function<int64_t(const Example&)> length;             // e.g. tokens + visual tokens per image
    std::function<void(Example&, int64_t max_length)> truncate;  // needed for LengthPolicy::kTruncate
    // Packing: a sample's length from its dataset index, without transforming it (called once per index,
    // from up to num_workers threads). It must not be less than length() of the sample's example.
    std::function<int64_t(size_t index)> planned_length = {};
    PackedCollate packed_collate = {};  // packing: collates a batch of rows
  };

  Loader(std::shared_ptr<const Dataset> dataset, LoaderOptions options, Transform transform, Collate collate,
         LengthHooks hooks = {}, std::shared_ptr<BadInputLog> log = nullptr)
      : Loader(std::move(dataset), nullptr, std::move(options), std::move(transform), std::move(collate),
               std::move(hooks), std::move(log)) {}

  // Streaming (docs/datasets.md, "Streaming"): batches of batch_size consecutive samples of this rank's stream;
  // an epoch ends when the rank's shards do (ranks may differ by a batch or so). The stream's rank, world size
  // and seed are its own (the state's seed is the stream's); options.rank, world_size, seed and shuffle do not
  // apply, and group_by_modality and packing are refused. The log defaults to the stream's.
  Loader(std::shared_ptr<ShardStream> stream, LoaderOptions options, Transform transform, Collate collate,
         LengthHooks hooks = {}, std::shared_ptr<BadInputLog> log = nullptr)
      : Loader(nullptr, std::move(stream), std::move(options), std::move(transform), std::move(collate),
               std::move(hooks), std::move(log)) {}

 private:
  Loader(std::shared_ptr<const Dataset> dataset, std::shared_ptr<ShardStream> stream, LoaderOptions options,
         Transform transform, Collate collate, LengthHooks hooks, std::shared_ptr<BadInputLog> log)
      : dataset_(std::move(dataset)),
        stream_(std::move(stream)),
        opt_(options),
        transform_(std::move(transform)),
        collate_(std::move(collate)),
        hooks_(std::move(hooks)),
        log_(log ? std::move(log) : stream_ ? std::shared_ptr<BadInputLog>(stream_, &stream_->log())
                                            : std::make_shared<BadInputLog>(&std::cerr)) {
    if (stream_ && (opt_.pack_tokens > 0 || opt_.group_by_modality))
      throw std::invalid_argument("loader: a streaming loader cannot pack or group by modality");
    if (stream_) opt_.seed = stream_->seed();
    if (opt_.pack_tokens < 0) throw std::invalid_argument("loader: pack_tokens must be >= 0");
    if (opt_.pack_tokens > 0) {
      if (!hooks_.planned_length || !hooks_.length || !hooks_.packed_collate)
        throw std::invalid_argument("loader: packing needs the planned_length, length and packed_collate hooks");
      if (opt_.pack_buffer < 1) throw std::invalid_argument("loader: pack_buffer must be >= 1");
      opt_.max_length = opt_.max_length > 0 ? std::min(opt_.max_length, opt_.pack_tokens) : opt_.pack_tokens;
    }
    if (!dataset_ && !stream_) throw std::invalid_argument("loader: dataset is null");
    if (opt_.batch_size < 1) throw std::invalid_argument("loader: batch_size must be >= 1");
    if (opt_.world_size < 1 || opt_.rank < 0 || opt_.rank >= opt_.world_size)
      throw std::invalid_argument(fmt::format("loader: rank {} is outside world size {}", opt_.rank, opt_.world_size));
    if (opt_.prefetch < 1) throw std::invalid_argument("loader: prefetch must be >= 1");
    if (opt_.num_workers < 0) throw std::invalid_argument("loader: num_workers must be >= 0");
    if (opt_.max_length > 0 && !hooks_.length)
      throw std::invalid_argument("loader: max_length is set but no length hook was given");
    if (opt_.max_length > 0 && opt_.length_policy == LengthPolicy::kTruncate && !hooks_.truncate)
      throw std::invalid_argument("loader: length policy 'truncate' needs a truncate hook");
    reset({opt_.seed, 0, 0, stream_ ? 0 : -1, 0});
  }

 public:
  ~Loader() { stop_workers(); }
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch of this epoch, or nullopt at its end (then call set_epoch(epoch + 1)).
  std::optional<Batch> next() {
    if (stream_) return next_streamed();
    while (pos_ < static_cast<int64_t>(plan_.size())) {
      const auto& indices = plan_[static_cast<size_t>(pos_)];
      std::vector<Example> examples;
      examples.reserve(indices.size());
      std::vector<size_t> row_of;  // packing: the row of each example kept
      const std::vector<size_t>* rows = packing() ? &rows_[static_cast<size_t>(pos_)] : nullptr;
      size_t row = 0, row_end = rows && !rows->empty() ? (*rows)[0] : 0;
      for (size_t k = 0; k < indices.size(); ++k) {
        while (rows && k >= row_end) row_end += (*rows)[++row];
        Taken t = take();
        if (!keep(t.example)) continue;
        examples.push_back(std::move(*t.example));
        if (rows) row_of.push_back(row);
      }
      ++pos_;
      check_bad();
      if (examples.empty()) {
        ++counters_.empty_batches;
        continue;
      }
      counters_.examples += static_cast<int64_t>(examples.size());
      if (rows) return hooks_.packed_collate(std::move(examples), row_of);
      return collate_(std::move(examples));
    }
    return std::nullopt;
  }

  // Starts `epoch` from its first batch.
  void set_epoch(int64_t epoch) { reset({seed_, epoch, 0, stream_ ? 0 : -1, 0}); }
  // Starts the epoch after this one: epoch + 1, or after a resharded resume that straddled an epoch boundary the
  // epoch and plan it planned (LoaderState::then_epoch).
  void next_epoch() {
    if (then_epoch_ < 0) return set_epoch(epoch_ + 1);
    LoaderState s{seed_, then_epoch_, 0, 0, then_plan_.empty() ? 0 : then_plan_.front().sample, then_plan_};
    reset(s);
  }
  LoaderState state() const {
    if (stream_) {
      return {seed_,      epoch_,     pos_, stream_pos_.shard, stream_pos_.sample, stream_->plan(),
              static_cast<int64_t>(stream_->num_shards()), then_epoch_, then_plan_};
    }
    return {seed_, epoch_, pos_};
  }
  void load_state(const LoaderState& s) { reset(s); }
  size_t num_batches() const { return plan_.size(); }  // streaming: 0 (not known ahead)
  bool streaming() const { return stream_ != nullptr; }
  const std::vector<std::vector<size_t>>& plan() const { return plan_; }  // dataset indices per batch
  // Packing: the number of samples in each row of each batch (plan()[b] is its rows one after the other).
  const std::vector<std::vector<size_t>>& row_sizes() const { return rows_; }
  bool packing() const { return opt_.pack_tokens > 0; }
  const std::vector<int64_t>& planned_lengths() const { return lengths_; }
  LoaderCounters counters() const { return counters_; }
  const BadInputLog& bad_input() const { return *log_; }

 private:
  void reset(const LoaderState& s) {
    stop_workers();
    LoaderOptions o = opt_;
    o.seed = s.seed;
    if (stream_) {
      if (!s.streaming())
        throw std::invalid_argument(fmt::format("loader: a streaming loader needs a stream position (shard, sample); "
                                                "this state of epoch {} was saved by an indexed loader", s.epoch));
      if (s.position < 0) throw std::invalid_argument(fmt::format("loader: state position {} is negative", s.position));
      if (s.seed != stream_->seed())
        throw std::invalid_argument(fmt::format("loader: the state was saved with seed {}, but the stream assigns shards "
                                                "with seed {}",
                                                s.seed, stream_->seed()));
      if (s.shards > 0 && static_cast<size_t>(s.shards) != stream_->num_shards())
        throw std::invalid_argument(fmt::format("loader: the state was saved over {} shards, but {} names {}", s.shards,
                                                stream_->name(), stream_->num_shards()));
      stream_->seek({s.epoch, s.shard, s.sample}, s.plan);
      stream_pos_ = stream_->position();
      stream_done_ = ended_ = false;
      plan_.clear();
    } else if (packing()) {
      if (lengths_.empty()) compute_lengths();
      plan_.clear();
      rows_.clear();
      for (auto& batch : plan_packed_epoch(*dataset_, o, s.epoch, lengths_)) {
        plan_.emplace_back();
        rows_.emplace_back();
        for (auto& r : batch) {
          plan_.back().insert(plan_.back().end(), r.begin(), r.end());
          rows_.back().push_back(r.size());
        }
      }
    } else {
      plan_ = plan_epoch(*dataset_, o, s.epoch);
    }
    if (!stream_ && s.streaming())
      throw std::invalid_argument(fmt::format("loader: the state holds a stream position (shard {}, sample {}), but "
                                              "this loader reads an indexed dataset (data.streaming is off)",
                                              s.shard, s.sample));
    if (!stream_ && (s.position < 0 || s.position > static_cast<int64_t>(plan_.size())))
      throw std::invalid_argument(fmt::format("loader: state position {} is outside epoch {} of {} batches",
                                              s.position, s.epoch, plan_.size()));
    seed_ = s.seed;
    epoch_ = s.epoch;
    pos_ = s.position;
    then_epoch_ = s.then_epoch;
    then_plan_ = s.then_plan;
    items_.clear();
    for (size_t b = static_cast<size_t>(pos_); b < plan_.size(); ++b)
      items_.insert(items_.end(), plan_[b].begin(), plan_[b].end());
    next_ticket_ = consumed_ = 0;
    slots_.clear();
    slots_.resize(opt_.prefetch);  // resize, not assign: Example may be move-only
    ready_.assign(opt_.prefetch, 0);
    ends_.assign(opt_.prefetch, 0);
    afters_.assign(opt_.prefetch, StreamPosition{});
    errors_.assign(opt_.prefetch, nullptr);
    stop_ = false;
  }

  // Every sample's planned length, capped at max_length (a longer sample is dropped or truncated to it in
  // next()). A sample whose length cannot be computed gets 1: its transform will fail and be reported there.
  void compute_lengths() {
    const size_t n = dataset_->size();
    lengths_.assign(n, 1);
    const size_t threads = std::max<size_t>(1, static_cast<size_t>(opt_.num_workers));
    std::vector<std::thread> pool;
    for (size_t w = 0; w < threads; ++w) {
      pool.emplace_back([&, w] {
        for (size_t i = w; i < n; i += threads) {
          try {
            lengths_[i] = std::clamp<int64_t>(hooks_.planned_length(i), 1, opt_.max_length);
          } catch (const std::exception&) {
          }
        }
      });
    }
    for (auto& t : pool) t.join();
  }

  // One item from the queue: the example (nullopt if it failed), or the end of the rank's stream.
  struct Taken {
    std::optional<Example> example;
    bool end = false;
    StreamPosition after;  // streaming: the stream position after this item
  };

  // Counts a taken example and applies the length policy; false if it is not kept.
  bool keep(std::optional<Example>& ex) {
    ++counters_.taken;
    if (!ex) {
      ++counters_.transform_errors;
      return false;
    }
    if (opt_.max_length > 0) {
      const int64_t len = hooks_.length(*ex);
      if (len > opt_.max_length) {
        if (opt_.length_policy == LengthPolicy::kDrop) {
          ++counters_.dropped_too_long;
          return false;
        }
        hooks_.truncate(*ex, opt_.max_length);
        ++counters_.truncated;
      }
    }
    return true;
  }

  void check_bad() {
    if (counters_.taken >= opt_.bad_check_after)
      check_bad_fraction(name() + " (loader)", static_cast<size_t>(counters_.taken - counters_.transform_errors),
                         static_cast<size_t>(counters_.transform_errors), opt_.max_bad_fraction, *log_);
  }

  const std::string& name() const { return stream_ ? stream_->name() : dataset_->name(); }

  std::optional<Batch> next_streamed() {
    while (!stream_done_) {
      std::vector<Example> examples;
      size_t took = 0;
      while (took < opt_.batch_size) {
        Taken t = take();
        stream_pos_ = t.after;
        if (t.end) {
          stream_done_ = true;
          break;
        }
        ++took;
        if (keep(t.example)) examples.push_back(std::move(*t.example));
      }
      if (took > 0) check_bad();
      if (took == 0 || (stream_done_ && opt_.drop_last && took < opt_.batch_size)) break;
      ++pos_;
      if (examples.empty()) {
        ++counters_.empty_batches;
        continue;
      }
      counters_.examples += static_cast<int64_t>(examples.size());
      return collate_(std::move(examples));
    }
    return std::nullopt;
  }

  // Transforms one sample; a failure is reported and gives nullopt.
  std::optional<Example> transform(RawSample&& s, const std::string& where) {
    const std::string what = s.id.empty() ? where : fmt::format("{} id {}", s.source, s.id);
    try {
      return transform_(std::move(s));
    } catch (const std::exception& e) {
      log_->report(bad::kTransformError, name(), what, e.what());
      return std::nullopt;
    }
  }

  // Loads and transforms one sample of the indexed dataset; a failure is reported and gives nullopt.
  std::optional<Example> produce(size_t index) {
    const std::string what = fmt::format("{} sample {}", dataset_->name(), index);
    RawSample s;
    try {
      s = dataset_->get(index);
    } catch (const std::exception& e) {
      log_->report(bad::kTransformError, dataset_->name(), what, e.what());
      return std::nullopt;
    }
    return transform(std::move(s), what);
  }

  // Streaming: reads the next raw sample (the caller holds read_mu_ or is the only reader).
  std::optional<RawSample> read_stream(StreamPosition& after) {
    std::optional<RawSample> raw = stream_->next();
    after = stream_->position();
    return raw;
  }

  Taken take() {
    if (opt_.num_workers == 0) {
      Taken t;
      if (stream_) {
        std::optional<RawSample> raw = read_stream(t.after);
        if (!raw) t.end = true;
        else t.example = transform(std::move(*raw), stream_->name());
        return t;
      }
      t.example = produce(items_.at(consumed_++));
      return t;
    }
    if (workers_.empty()) start_workers();
    std::unique_lock<std::mutex> lock(mu_);
    const size_t slot = consumed_ % slots_.size();
    cv_.wait(lock, [&] { return ready_[slot] != 0; });
    if (errors_[slot]) {
      std::exception_ptr error = errors_[slot];
      errors_[slot] = nullptr;
      ready_[slot] = 0;
      std::rethrow_exception(error);
    }
    Taken t{std::move(slots_[slot]), ends_[slot] != 0, afters_[slot]};
    slots_[slot].reset();
    ready_[slot] = 0;
    ++consumed_;
    cv_.notify_all();
    return t;
  }

  void start_workers() {
    for (int w = 0; w < opt_.num_workers; ++w) workers_.emplace_back([this] { work(); });
  }

  void work() {
    for (;;) {
      size_t ticket;
      std::optional<RawSample> raw;
      StreamPosition after;
      bool end = false;
      std::exception_ptr error;
      {
        // Streaming: the stream is read in ticket order, one reader at a time; the transforms run in parallel.
        std::unique_lock<std::mutex> read_lock(read_mu_, std::defer_lock);
        if (stream_) read_lock.lock();
        {
          std::unique_lock<std::mutex> lock(mu_);
          // Bounded: never run more than `prefetch` examples ahead of the consumer.
          cv_.wait(lock, [&] {
            return stop_ || ended_ || (!stream_ && next_ticket_ >= items_.size()) ||
                   next_ticket_ < consumed_ + slots_.size();
          });
          if (stop_ || ended_ || (!stream_ && next_ticket_ >= items_.size())) return;
          ticket = next_ticket_++;
        }
        if (stream_) {
          try {
            raw = read_stream(after);
          } catch (...) {  // e.g. over the bad-input limit: the consumer gets the error at this ticket
            error = std::current_exception();
            std::lock_guard<std::mutex> lock(mu_);
            ended_ = true;
            end = true;
          }
          if (!raw && !end) {
            std::lock_guard<std::mutex> lock(mu_);
            ended_ = true;
            end = true;
          }
        }
      }
      std::optional<Example> ex;
      if (stream_) {
        if (raw) ex = transform(std::move(*raw), stream_->name());
      } else {
        ex = produce(items_[ticket]);
      }
      std::lock_guard<std::mutex> lock(mu_);
      const size_t slot = ticket % slots_.size();
      slots_[slot] = std::move(ex);
      ends_[slot] = end ? 1 : 0;
      afters_[slot] = after;
      errors_[slot] = error;
      ready_[slot] = 1;
      cv_.notify_all();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::shared_ptr<const Dataset> dataset_;
  std::shared_ptr<ShardStream> stream_;
  LoaderOptions opt_;
  Transform transform_;
  Collate collate_;
  LengthHooks hooks_;
  std::shared_ptr<BadInputLog> log_;

  uint64_t seed_ = 0;
  int64_t epoch_ = 0;
  int64_t then_epoch_ = -1;              // streaming: LoaderState::then_epoch
  std::vector<ShardStart> then_plan_;    // and its plan
  int64_t pos_ = 0;
  std::vector<std::vector<size_t>> plan_;
  std::vector<size_t> items_;  // dataset indices of the remaining batches, flattened
  std::vector<std::vector<size_t>> rows_;  // packing: samples per row, per batch
  std::vector<int64_t> lengths_;           // packing: planned length per dataset index
  StreamPosition stream_pos_;              // streaming: after the last item taken
  bool stream_done_ = false;               // streaming: the end of the rank's epoch was taken

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::vector<std::optional<Example>> slots_;
  std::vector<char> ready_;
  std::vector<char> ends_;                 // streaming: the slot marks the end of the stream
  std::vector<StreamPosition> afters_;     // streaming: the stream position after the slot's item
  std::vector<std::exception_ptr> errors_;  // streaming: reading the slot's item threw this
  std::mutex read_mu_;                     // streaming: one reader of the stream at a time
  bool ended_ = false;                     // streaming: a worker read the end; no more tickets
  size_t next_ticket_ = 0;
  size_t consumed_ = 0;
  bool stop_ = false;
  LoaderCounters counters_;
};

}  // namespace owl2::data
