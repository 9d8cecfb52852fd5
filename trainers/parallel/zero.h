// ZeRO stages 1, 2 and 3 on c10d: each rank keeps the AdamW state (stage 2: also the reduced gradients;
// stage 3: also the parameters of the repeated blocks) of its slice of every gradient bucket, updates only
// that slice and all-gathers the parameters (stage 3: a block's, just before it runs); the optimizer state
// is saved per rank and reshards to any world size on load. docs/distributed.md.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "owl2/io/safetensors.h"
#include "trainers/config.h"
#include "trainers/parallel/distributed.h"
#include "trainers/param_rules.h"

namespace owl2 {

struct TrainingCheckpoint;

// The flat layout of the trainable parameters: buckets of about bucket_bytes in reverse registration order
// (the order backward finishes them), each padded with zeros to a multiple of the world size so that a
// reduce-scatter gives every rank an equal slice; rank r owns slice r of every bucket. A segment is a run
// of one parameter's elements inside this rank's shard (slices concatenated in bucket order). With
// `block_of` (per parameter: the ZeRO-3 block it belongs to, or -1), the parameters outside blocks form the
// first `plain_buckets` buckets as above, and block i is bucket plain_buckets + i whatever its size.
struct ZeroLayout {
  struct Bucket {
    std::vector<int64_t> params;   // parameter indices in bucket order
    std::vector<int64_t> offsets;  // each parameter's first element in the bucket
    int64_t padded_numel = 0;      // a multiple of the world size
    int64_t shard_offset = 0;      // where this rank's slice starts in its shard
  };
  struct Segment {
    int64_t param = 0, param_offset = 0, length = 0, shard_offset = 0;
  };
  ZeroLayout(const std::vector<int64_t>& numels, int64_t element_size, int64_t world, int64_t rank,
             int64_t bucket_bytes, const std::vector<int64_t>& block_of = {});
  int64_t slice(const Bucket& b) const { return b.padded_numel / world; }

  int64_t world = 1, rank = 0;
  std::vector<Bucket> buckets;
  std::vector<int64_t> bucket_of;  // per parameter
  std::vector<Segment> segments;   // this rank's, in shard order
  int64_t shard_numel = 0;
  int64_t plain_buckets = 0;       // buckets not belonging to a block
};

// Tensors a rank holds for training beside what the model registers, by what they are: what
// Trainer::held_bytes() counts (each storage once) to compare with rank_bytes_between_steps() (trainers/plan.h).
struct HeldTensors {
  std::vector<at::Tensor> weights, grads, optimizer;
};

// A run of one parameter's AdamW state [offset, offset + length), read from a checkpoint in either layout.
struct AdamWStateRun {
  int64_t param = 0;   // index into the trainable parameters
  int64_t offset = 0;
  int64_t step = 0;
  at::Tensor exp_avg, exp_avg_sq;  // 1-D, same length
};

// The AdamW state of `ck` as runs over `params` (names and sizes must match the checkpoint): ZeRO shards
// ("optimizer.rank-<r>" groups with the manifest extra["zero"]) written at any world size, or the
// replicated layout (one "optimizer" group of per-parameter tensors). Throws naming the first mismatch.
std::vector<AdamWStateRun> adamw_state_runs(const TrainingCheckpoint& ck, const NamedTensors& params);
// The runs assembled into per-parameter tensors in the replicated layout (adamw_state_tensors' names).
NamedTensors adamw_runs_to_tensors(const std::vector<AdamWStateRun>& runs, const NamedTensors& params);
// Checkpoint group name of rank r's optimizer shard.
std::string zero_shard_group(int64_t rank);

// The trainable parameters that a ZeRO checkpoint holds only as its ranks' "values" shards (ZeroOptimizer::
// shard_state), put together one parameter at a time from the groups saved at any world size: what resuming
// and `owl2 checkpoint consolidate` read, never more than one full parameter at once.
class ZeroShardValues {
 public:
  // Which parameters: the trainable ones (manifest "params", shard entries "values" / "segments") or the frozen
  // block parameters of stage 3 (manifest "frozen", "frozen_values" / "frozen_segments").
  enum class Part { kTrainable, kFrozen };
  // `manifest` is the checkpoint's extra["zero"]; `groups[r]` rank r's group (tensors by name, e.g. views of a
  // mapped file). Throws std::invalid_argument naming `origin` and the group or parameter when a group is missing
  // or lacks the values or segments, the manifest has no shapes, or the segments do not cover a parameter.
  ZeroShardValues(const nlohmann::json& manifest, std::vector<std::map<std::string, at::Tensor>> groups,
                  std::string origin, Part part = Part::kTrainable);
  // Whether `ck` is a ZeRO checkpoint whose shards carry the values of `part`.
  static bool present(const TrainingCheckpoint& ck, Part part = Part::kTrainable);
  // ZeroShardValues over the groups of a loaded checkpoint.
  static ZeroShardValues of(const TrainingCheckpoint& ck, const std::string& origin, Part part = Part::kTrainable);
  // The shard entry names of a part: its values and its segments.
  static const char* values_key(Part part) { return part == Part::kTrainable ? "values" : "frozen_values"; }
  static const char* segments_key(Part part) { return part == Part::kTrainable ? "segments" : "frozen_segments"; }

  size_t size() const { return names_.size(); }
  const std::string& name(size_t k) const { return names_[k]; }
  const std::vector<int64_t>& shape(size_t k) const { return shapes_[k]; }
  at::ScalarType dtype() const { return dtype_; }
  // Parameter k in full (a new tensor).
  at::Tensor get(size_t k) const;
  // Elements [offset, offset + out.numel()) of parameter k (flattened) into the 1-D `out`, touching only the
  // shards' pieces that overlap them. Throws std::invalid_argument when the pieces do not cover the range.
  void read(size_t k, int64_t offset, at::Tensor out) const;

 private:
  struct Piece {
    size_t group;
    int64_t param_offset, length, shard_offset;
  };
  std::vector<std::map<std::string, at::Tensor>> groups_;
  std::vector<std::string> names_;
  std::vector<std::vector<int64_t>> shapes_;
  std::vector<std::vector<Piece>> pieces_;
  at::ScalarType dtype_ = at::kFloat;
  std::string origin_;
  Part part_;
};

// Reads elements [offset, offset + out.numel()) of the flattened weight `name` into the 1-D `out` (any dtype:
// copy_ converts): how a checkpoint's weights reach the shards without a rank holding the whole model.
using SliceReader = std::function<void(const std::string& name, int64_t offset, at::Tensor out)>;

// train.precision bf16 under ZeRO: the trainable parameters reach the ZeroOptimizer in float32; it keeps this
// rank's slices of them as the float32 masters (the parameter shard, at every stage) and casts the model's
// copies to `compute`; gradients travel in `reduce` and are summed into the float32 gradient shard; after each
// step the all-gather hands every rank the masters rounded to `compute` (round to nearest even).
struct ShardedMasters {
  at::ScalarType compute = at::kBFloat16;
  at::ScalarType reduce = at::kFloat;
};

// Stage 3: where the ZeroOptimizer keeps its shards, and which parameters it receives after its construction.
struct ShardPlacement {
  // Where the shards, the optimizer state and every gathered parameter live; null: the parameters' device. With
  // another device (`owl2 train` builds the model on the host), each parameter is broadcast from rank 0 through
  // the device one tensor at a time, only this rank's slices are kept on the device, and every parameter ends an
  // empty tensor on the device, its host copy freed: the device never holds more than one full parameter.
  std::optional<at::Device> device;
  // Parameters whose values are not written yet (a model built with ModelBuild::defer_values): the constructor
  // neither broadcasts, casts nor reads them, and keeps them as they are (host tensors whose pages are untouched,
  // so not resident); each one is taken in by absorb() once written (init or load, in any order), which frees it.
  std::vector<at::Tensor> pending;
};

// Gradient reduction, global-norm clipping and AdamW for ZeRO stage 1 (all-reduce, then keep the own
// slice), stage 2 (reduce-scatter: only the own slice of the summed gradient is ever materialized in
// the flat buffers) and stage 3 (stage 2, plus the parameters of each block in `blocks` live only as this rank's
// slice of the block's bucket, frozen ones in a bucket of their own: gather_block() before the block runs, release_block() after,
// and the parameters outside blocks, trainable and frozen, are the root: gathered for a step, released after it;
// reduce_block() after its backward; see trainers/parallel/zero3.h). The math per element is torch::optim::AdamW's,
// so results equal the replicated run. With a null or single-rank comm it runs the same code without
// collectives.
class ZeroOptimizer {
 public:
  // `placement` (ShardPlacement): a device other than the parameters' at stage 3 only; pending parameters at
  // stage 3 only.
  ZeroOptimizer(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                const OptimConfig& optim, int stage, int64_t bucket_bytes,
                const std::vector<std::vector<at::Tensor>>& blocks = {},
                std::optional<ShardedMasters> masters = std::nullopt, ShardPlacement placement = {});

  // Stage 3, a pending parameter (ShardPlacement::pending) once its values are written: broadcast from rank 0
  // (collective: every rank absorbs the same parameters in the same order), this rank's slices copied into the
  // shards (in the shards' dtype), and the parameter released. Throws std::logic_error for a parameter that is not
  // pending.
  void absorb(const at::Tensor& param);
  // After the last absorb(): throws std::runtime_error naming every parameter never absorbed.
  void finish_absorbing() const;
  bool absorbing() const { return !pending_.empty(); }

  // Sharded float32 masters (ShardedMasters): whether this optimizer keeps them.
  bool has_masters() const { return masters_.has_value(); }
  // The full float32 masters by parameter name, all-gathered bucket by bucket (collective): on rank `root`
  // only (the others hold one bucket at a time and get nothing), or on every rank when root < 0.
  NamedTensors gather_masters(int64_t root);
  // This rank's master slices from full float32 values (`state`, keys prefix + parameter name), as a
  // checkpoint's model holds them; the model's own copies are the caller's to load. Throws
  // std::invalid_argument naming a missing or mis-sized entry.
  void load_masters(const std::map<std::string, at::Tensor>& state, const std::string& prefix);

  // Stage 3. Every rank must make the same calls in the same order (they are collectives).
  int64_t block_count() const { return static_cast<int64_t>(block_params_.size()); }
  // All-gathers block i's parameters from the shards and points the parameters at them (taking over a
  // prefetch of block i; a prefetch of another block is completed and dropped first).
  void gather_block(int64_t i);
  // Starts block i's all-gather without waiting (Gloo: async work; NCCL: on the communication stream), so that
  // it runs while the current block computes; gather_block(i) then only waits for it. One prefetch at a time; a
  // no-op for a gathered block, out of range or below 0. The block runners prefetch the block a pass runs next.
  void prefetch_block(int64_t i);
  // Completes and drops a pending prefetch (between steps nothing but the shards is held).
  void drop_prefetch();
  // Points block i's parameters at empty storage (numel 0) again.
  void release_block(int64_t i);
  // After backward through block i: reduce-scatters its parameters' gradients, adds this rank's slice to
  // the shard gradient (accumulating over micro-batches) and drops the full-size gradients.
  void reduce_block(int64_t i);
  // Every block gathered (checkpoint saving, evaluation on one rank, loading weights); block runners then
  // run blocks as they are. release_all() first copies this rank's slices back into the shards (so weights
  // loaded while gathered take effect; with masters only where the model no longer holds the master's
  // rounding, so that the untouched masters keep their float32 precision).
  void gather_all();
  void release_all();
  bool all_gathered() const { return all_gathered_; }
  // Elements of block parameters gathered in full (or being prefetched) at the most at any one time so far (each
  // block counts its padded bucket): what tests read to check that training holds at most two blocks and that
  // saving gathers none.
  int64_t peak_gathered_numel() const { return peak_gathered_; }
  int64_t gathered_numel() const { return gathered_; }  // now
  void reset_peak_gathered() { peak_gathered_ = gathered_; }
  // Elements block i holds gathered: its padded trainable and frozen buckets together.
  int64_t block_gathered_numel(int64_t i) const;
  // Stage 3, the root unit: the trainable parameters outside blocks (embeddings, lm_head, norms, the towers' other
  // parameters), gathered for a whole step (zero_grad) and released after the update (step); also for a sharded
  // evaluation between steps (Trainer::sharded_passes). Collective; no-ops below stage 3 and when already so.
  void gather_root();
  void release_root();
  // Zeroes the shard gradient (before a step's first micro-batch: stage 3 accumulates into it).
  void zero_grad();
  // The parameters whose values live only in this rank's shards (stage 3: every parameter, the blocks' and the
  // root's, trainable and frozen; the model holds them empty between passes), with their shapes.
  std::map<std::string, std::vector<int64_t>> sharded_shapes() const;
  // Loads this rank's slices from `read`: the parameter shard (stage 3 blocks; every trainable parameter's fp32
  // master where it keeps them) and the frozen shard. The parameters the model holds are the caller's to
  // load. Nothing is gathered.
  void load_shards(const SliceReader& read);
  // Stage 3: the names of the frozen parameters it shards (a checkpoint holds them in the ranks' shards as
  // "frozen_values" / "frozen_segments", listed in the manifest's "frozen").
  std::vector<std::string> frozen_names() const {
    std::vector<std::string> out;
    for (const auto& [name, t] : frozen_) out.push_back(name);
    return out;
  }
  // Elements of this rank's parameter shard (stage 3; 0 otherwise).
  int64_t param_shard_numel() const { return param_shard_.defined() ? param_shard_.numel() : 0; }

  // Before the backward of the last micro-batch: hooks then launch each bucket's reduction when it is full.
  void arm();
  // Completes the reductions and returns the global L2 gradient norm over all shards: a float64 tensor of one
  // element on the gradients' device, not read on the host.
  at::Tensor finish();
  // Clips with the global norm (as torch::nn::utils::clip_grad_norm_), steps AdamW on the own segments
  // with the group's lr = lr * lr_scale, then all-gathers the parameters.
  void step(double lr, double max_norm, double grad_norm);
  // Seconds the last finish() spent waiting for gradient collectives; and the last step()'s all-gather.
  double reduce_wait_seconds() const { return reduce_wait_s_; }
  double gather_seconds() const { return gather_s_; }

  const ZeroLayout& layout() const { return layout_; }
  // This optimizer's tensors: the parameter shard (weights; optimizer state when it holds the fp32 masters), the
  // gradient shard and live buckets, the moments, and a pending prefetch.
  void add_held(HeldTensors& out) const;
  int stage() const { return stage_; }
  // This rank's state: "exp_avg" and "exp_avg_sq" (shard_numel), "segments" (int64 [n, 5]: param,
  // param_offset, length, shard_offset, step).
  NamedTensors shard_state() const;
  // The manifest saved with the shards: stage, world size, parameter names and sizes.
  nlohmann::json manifest() const;
  // Loads the runs that overlap this rank's segments (any source world size); a segment whose parameter
  // has state must be covered completely.
  void load_runs(const std::vector<AdamWStateRun>& runs);
  // Loads shard_state() of the same layout (in-memory resume).
  void load_shard_state(const NamedTensors& state);

 private:
  void on_grad(size_t k, const at::Tensor& grad);
  void launch_ready_in_order();
  void launch(size_t b);
  at::Tensor slot(size_t k);  // parameter k's place in its bucket's flat buffer
  at::Tensor master(const ZeroLayout::Segment& s);  // the values a segment's AdamW update writes
  void copy_own_slices_to_shard(int64_t i);  // block i; -1: the root
  bool in_shard(int64_t k) const;  // parameter k's values live in param_shard_ (else the model's copy is the master)
  bool root_gathered_ = false;
  std::map<const c10::TensorImpl*, std::string> pending_;  // ShardPlacement::pending not yet absorbed, by tensor
  bool pending(const at::Tensor& t) const { return !pending_.empty() && pending_.count(t.unsafeGetTensorImpl()); }
  void broadcast_param(at::Tensor& p, const std::string& name);  // from rank 0, through broadcast_device_
  std::optional<at::Device> broadcast_device_;  // ShardPlacement::device
  void refresh_plain_parameters();  // after the step: all-gather the updated slices into the parameters

  std::vector<std::vector<int64_t>> block_params_;  // per block, trainable parameter indices
  std::vector<std::vector<int64_t>> block_frozen_;  // per block, indices into frozen_
  std::vector<int64_t> root_frozen_;                // stage 3: the frozen parameters outside blocks (frozen_ indices)
  std::vector<int64_t> block_of_;                   // per parameter, -1 outside blocks
  std::vector<std::vector<int64_t>> sizes_;         // per parameter (block parameters lose theirs)
  std::vector<uint8_t> block_used_;                 // per parameter: got a gradient this step
  at::Tensor param_shard_;  // stage 3: this rank's block parameter values; with masters: every master slice
  bool all_gathered_ = false;
  std::vector<uint8_t> block_gathered_;  // per block
  int64_t gathered_ = 0, peak_gathered_ = 0;  // elements of gathered and prefetching blocks
  // Stage 3: the frozen parameters, sharded in their own layout (one bucket per block, then one for those outside
  // blocks, no plain buckets) in the compute dtype; no gradient, no optimizer state.
  NamedTensors frozen_;
  std::vector<std::vector<int64_t>> frozen_sizes_;
  ZeroLayout frozen_layout_;
  at::Tensor frozen_shard_;
  const ZeroLayout::Bucket* frozen_bucket(int64_t i) const;  // null when block i has no frozen parameter
  bool block_sharded(int64_t i) const;            // block i has a trainable or a frozen parameter
  struct Gathering {  // a block's all-gathers in flight: trainable and frozen buckets (either may be absent)
    int64_t block = -1;
    at::Tensor flat, frozen;
    c10::intrusive_ptr<c10d::Work> work, frozen_work;
  };
  Gathering prefetch_;
  Gathering start_gather(int64_t i);
  std::optional<ShardedMasters> masters_;
  at::TensorOptions shard_opts_;   // the shards' dtype (float32 with masters) on the parameters' device
  at::ScalarType compute_dtype_;   // the model's trainable parameters
  at::ScalarType reduce_dtype_;    // the gradient buckets and their collectives

  std::shared_ptr<Comm> comm_;
  int stage_;
  OptimConfig optim_;
  NamedTensors params_;
  std::vector<double> lr_scale_, weight_decay_;
  ZeroLayout layout_;
  std::vector<at::Tensor> flat_;      // per bucket: gradients in, parameters out (padded_numel)
  std::vector<at::Tensor> recv_;      // per bucket: the reduce-scatter's output when not in the shard's dtype
  std::vector<int64_t> ready_;
  std::vector<c10::intrusive_ptr<c10d::Work>> work_;
  std::vector<uint8_t> seen_, used_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  at::Tensor grad_shard_, exp_avg_, exp_avg_sq_;  // shard_numel each
  std::vector<int64_t> steps_;                    // per segment; 0: no state yet
  double reduce_wait_s_ = 0, gather_s_ = 0;
};

}  // namespace owl2
