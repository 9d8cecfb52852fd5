// How a step turns the micro-batches' gradients into a parameter update: one interface, one implementation per
// strategy (replicated, data-parallel all-reduce, ZeRO 1/2, ZeRO 3), picked once from the config and the world
// size, so that Trainer::step never asks which one it has. docs/distributed.md, "Gradient sync".
#pragma once
#include <stdexcept>
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "owl2/io/safetensors.h"
#include "trainers/config.h"
#include "trainers/param_rules.h"
#include "trainers/parallel/distributed.h"
#include "trainers/parallel/zero.h"
#include "trainers/parallel/zero3.h"
#include "trainers/precision.h"

namespace owl2 {

struct TrainingCheckpoint;

// The calls of one optimizer step, in order: zero_grad(); the micro-batches' backward passes with arm() just before
// the last one (or before finish() on a rank without micro-batches); finish(); the caller reads the norm (with the
// loss) and, when it is finite, calls step(). Every rank makes the same calls (the collectives inside match up).
class GradientSync {
 public:
  enum class Kind { kReplicated, kDataParallel, kZero, kZero3 };
  virtual ~GradientSync() = default;
  virtual Kind kind() const = 0;

  // Drops the gradients of the previous step (also after a skipped, non-finite one).
  virtual void zero_grad() = 0;
  // Before the backward of the last micro-batch: from then on hooks launch the gradient reductions.
  virtual void arm() {}
  // After the last backward: completes the reductions, hands bf16 gradients to the fp32 masters, and returns the
  // global L2 gradient norm before clipping as a float64 tensor of one element, not read on the host.
  virtual at::Tensor finish() = 0;
  // Clips to optim.grad_clip with finish()'s norm (`grad_norm` is its value, read on the host) and updates the
  // parameters with AdamW at learning rate `lr` times each group's lr_scale.
  virtual void step(double lr, double grad_norm) = 0;
  // Seconds the last finish() waited for gradient collectives (the part backward did not hide).
  virtual double grad_wait_seconds() const { return 0; }

  // The optimizer state as named tensors for checkpoints: per parameter (adamw_state_tensors) when replicated;
  // this rank's shard (ZeroOptimizer::shard_state) with ZeRO, described by manifest() (null otherwise).
  virtual NamedTensors state() = 0;
  virtual nlohmann::json manifest() const { return nullptr; }
  // Restores state() of the same layout (in-memory resume).
  virtual void load_state(const NamedTensors& state) = 0;
  // Loads the optimizer state of a checkpoint saved at any world size and ZeRO stage (resharding).
  virtual void load(const TrainingCheckpoint& ck) = 0;

  // Every block's full parameters in the model (collective), and back to the shards taking over values loaded
  // meanwhile; no-ops except at ZeRO 3.
  virtual void gather_parameters() {}
  virtual void release_parameters() {}
  // ZeRO 3: the root unit (the trainable parameters outside blocks) in full between steps, for passes that gather
  // the blocks one at a time (Trainer::begin_sharded_passes). Collective; no-ops otherwise.
  virtual void gather_root() {}
  virtual void release_root() {}
  // ZeRO: this rank's slices of the parameters only its shards hold (ZeroOptimizer::load_shards); a no-op else.
  virtual void load_shards(const SliceReader& /*read*/) {}
  // ZeRO 3 with pending parameters (ShardPlacement::pending): ZeroOptimizer::absorb / finish_absorbing. Other
  // strategies have none pending: absorb throws std::logic_error, finish_absorbing does nothing.
  virtual void absorb(const at::Tensor& /*param*/) {
    throw std::logic_error("absorb: only ZeRO 3 takes parameters in after its construction");
  }
  virtual void finish_absorbing() {}
  // train.precision bf16 under ZeRO, where the optimizer owns the float32 masters as shards: the full masters on
  // rank `root` (every rank when root < 0; collective), and this rank's masters from a model state's float32
  // values (key prefix + name). Elsewhere the masters (if any) are MixedPrecision's: nothing, and a no-op.
  virtual NamedTensors gather_masters(int64_t /*root*/) { return {}; }
  virtual void load_masters(const std::map<std::string, at::Tensor>& /*state*/, const std::string& /*prefix*/) {}

  // The strategy's own tensors (optimizer state, gradient buffers and shards) for memory accounting; the model's
  // parameters and their .grad are the Trainer's to add.
  virtual void add_held(HeldTensors& out) const = 0;

  // The machinery underneath, for metrics and checkpoint layout decisions; null where it does not apply.
  virtual const ZeroOptimizer* zero() const { return nullptr; }
  virtual const DataParallel* data_parallel() const { return nullptr; }
};

// One rank: torch::optim::AdamW over the groups, clipping as torch::nn::utils::clip_grad_norm_ (the same tensor
// operations, split between finish() and step() so that the norm is read only once).
// The model's gradients live in `buckets` when given (DataParallel; with a null comm it only holds them, so that
// they take one contiguous buffer and never keep a larger activation gradient alive as a view); bf16's masters
// get theirs from MixedPrecision.
class ReplicatedSync : public GradientSync {
 public:
  ReplicatedSync(const std::vector<ParamGroup>& groups, const OptimConfig& optim, MixedPrecision& precision,
                 std::unique_ptr<DataParallel> buckets = nullptr);
  Kind kind() const override { return Kind::kReplicated; }
  void zero_grad() override;
  void arm() override;
  at::Tensor finish() override;
  void step(double lr, double grad_norm) override;
  NamedTensors state() override;
  void load_state(const NamedTensors& state) override;
  void load(const TrainingCheckpoint& ck) override;
  void add_held(HeldTensors& out) const override;

 protected:
  std::unique_ptr<DataParallel> dp_;

 private:
  std::vector<ParamGroup> groups_;
  NamedTensors trainable_;
  MixedPrecision& precision_;
  double max_norm_;
  std::unique_ptr<torch::optim::AdamW> optim_;
  std::vector<at::Tensor> with_grad_;  // finish(): the parameters that have a gradient
  at::Tensor norm_;                    // finish(): their norm in the gradients' dtype (clip_grad_norm_'s)
};

// Several ranks, replicated optimizer: DataParallel all-reduces the gradients (bucketed, overlapped with the
// last backward), then every rank clips and steps AdamW as ReplicatedSync does.
class DataParallelSync : public ReplicatedSync {
 public:
  DataParallelSync(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                   const OptimConfig& optim, MixedPrecision& precision, int64_t bucket_bytes);
  Kind kind() const override { return Kind::kDataParallel; }
  double grad_wait_seconds() const override { return dp_->wait_seconds(); }
  const DataParallel* data_parallel() const override { return dp_.get(); }
};

// ZeRO 1 and 2: ZeroOptimizer shards the optimizer state (and at stage 2 the gradients); also on one rank, so
// that its checkpoints reshard to any world size. With `precision` in bf16 with sharded masters the optimizer
// keeps this rank's float32 master slices (ShardedMasters) and reduces the gradients in `reduce_dtype`.
class ZeroSync : public GradientSync {
 public:
  ZeroSync(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
           const OptimConfig& optim, MixedPrecision& precision, int stage, int64_t bucket_bytes,
           const std::vector<std::vector<at::Tensor>>& blocks = {}, ReduceDtype reduce_dtype = ReduceDtype::kFp32,
           ShardPlacement placement = {});
  Kind kind() const override { return Kind::kZero; }
  void zero_grad() override;
  void arm() override { zero_->arm(); }
  at::Tensor finish() override;
  void step(double lr, double grad_norm) override { zero_->step(lr, max_norm_, grad_norm); }
  double grad_wait_seconds() const override { return zero_->reduce_wait_seconds(); }
  NamedTensors state() override { return zero_->shard_state(); }
  nlohmann::json manifest() const override { return zero_->manifest(); }
  void load_state(const NamedTensors& state) override { zero_->load_shard_state(state); }
  void load(const TrainingCheckpoint& ck) override;
  NamedTensors gather_masters(int64_t root) override;
  void load_masters(const std::map<std::string, at::Tensor>& state, const std::string& prefix) override;
  const ZeroOptimizer* zero() const override { return zero_.get(); }
  void add_held(HeldTensors& out) const override { zero_->add_held(out); }
  void load_shards(const SliceReader& read) override { zero_->load_shards(read); }
  void absorb(const at::Tensor& param) override { zero_->absorb(param); }
  void finish_absorbing() override { zero_->finish_absorbing(); }

 protected:
  NamedTensors trainable_;
  MixedPrecision& precision_;
  double max_norm_;
  std::unique_ptr<ZeroOptimizer> zero_;
};

// ZeRO 3: ZeRO 2 plus the parameters of the blocks of `stacks` sharded, their runners installed (zero3.h).
// Throws std::invalid_argument without a stack.
class Zero3Sync : public ZeroSync {
 public:
  Zero3Sync(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
            const OptimConfig& optim, MixedPrecision& precision, int64_t bucket_bytes,
            const std::vector<ShardedStack>& stacks, ReduceDtype reduce_dtype = ReduceDtype::kFp32,
            bool prefetch = true, ShardPlacement placement = {});
  Kind kind() const override { return Kind::kZero3; }
  void gather_parameters() override { zero_->gather_all(); }
  void release_parameters() override { zero_->release_all(); }
  void gather_root() override { zero_->gather_root(); }
  void release_root() override { zero_->release_root(); }
};

// The strategy for distributed.zero_stage `zero_stage` at `world_size` ranks: ZeRO at stages 1 to 3 (also on
// one rank), else data parallelism on several ranks and replicated on one.
GradientSync::Kind pick_gradient_sync(int64_t zero_stage, int64_t world_size);
const char* gradient_sync_name(GradientSync::Kind kind);

// Builds the strategy pick_gradient_sync() names for cfg and comm (null: one rank). Multi-rank constructors
// broadcast rank 0's parameters (collective). `placement`: ZeRO 3 only (ShardPlacement).
std::unique_ptr<GradientSync> make_gradient_sync(const RunConfig& cfg, std::shared_ptr<Comm> comm,
                                                 torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                                                 MixedPrecision& precision,
                                                 const std::vector<ShardedStack>& stacks = {},
                                                 ShardPlacement placement = {});

}  // namespace owl2
