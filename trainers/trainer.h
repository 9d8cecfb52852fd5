// The optimization step: accumulate micro-batches with the loss normalized by the supervised tokens of the
// whole global batch, synchronize the gradients, guard against non-finite ones, schedule the LR, clip and step
// AdamW (through a GradientSync, whatever the strategy); plus the training state as named tensors for
// checkpoints. The model is any module with a summed-loss function.
#pragma once
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/batch.h"
#include "owl2/infer/lockstep.h"
#include "owl2/io/safetensors.h"
#include "trainers/config.h"
#include "trainers/param_rules.h"
#include "trainers/plan.h"
#include "trainers/parallel/distributed.h"
#include "trainers/parallel/gradient_sync.h"
#include "trainers/parallel/zero.h"
#include "trainers/parallel/zero3.h"
#include "trainers/precision.h"

namespace owl2 {

// Sum of the per-token cross-entropy over the supervised tokens of one micro-batch (differentiable).
using LossSumFn = std::function<torch::Tensor(const Batch&)>;

struct StepResult {
  int64_t step = 0;         // index of this step (0-based)
  double loss = 0;          // mean over the supervised tokens of the global batch
  double grad_norm = 0;     // global L2 norm before clipping
  double lr = 0;            // scheduled peak-group LR (lr_scale 1)
  int64_t tokens = 0;       // supervised tokens in the global batch (all ranks)
  int64_t samples = 0;      // over all ranks
  bool skipped = false;     // non-finite gradients, or no supervised token
  double comm_wait_s = 0;   // wall time this rank was blocked in collectives during the step
  double grad_wait_s = 0;   // of which waiting for the gradient reduction after backward
};

class Trainer {
 public:
  // Applies cfg.freeze, resolves cfg.param_groups and builds the gradient sync (gradient_sync.h) that
  // cfg.distributed.zero_stage and the world size of `comm` pick: replicated AdamW on one rank; with a
  // multi-rank `comm`, parameters broadcast from rank 0 and gradients all-reduced (data parallelism), or ZeRO
  // stage 1 or 2 sharding the optimizer state (and gradients) over the ranks (also with one rank, so that its
  // checkpoints reshard to any world size). Stage 3 also shards the parameters of the blocks of `stacks` and
  // installs their runners (zero3.h); it needs at least one stack. The loss is normalized by the supervised
  // tokens of the global batch over all ranks. `placement` (stage 3 only; ShardPlacement in parallel/zero.h): the
  // training device of a model built on the host, only this rank's shards being put on it, and the parameters
  // whose values arrive after the construction, through absorb() (build_training in trainers/setup.h).
  Trainer(torch::nn::Module& model, LossSumFn loss_sum, const RunConfig& cfg, std::shared_ptr<Comm> comm = nullptr,
          const std::vector<ShardedStack>& stacks = {}, ShardPlacement placement = {});

  // ZeRO 3, a pending parameter whose values are written: into this rank's shards, then freed (collective, in the
  // same order on every rank); finish_absorbing() after the last, naming any never written.
  void absorb(const torch::Tensor& param) { sync_->absorb(param); }
  void finish_absorbing() { sync_->finish_absorbing(); }

  // One optimizer step over the micro-batches of a global batch.
  StepResult step(const std::vector<Batch>& micro_batches);
  // The same with each micro-batch's supervised tokens (Batch::label_tokens) counted beforehand on the host
  // (the prefetcher does it before its copy), so that counting reads nothing back from the device.
  StepResult step(const std::vector<Batch>& micro_batches, const std::vector<int64_t>& label_tokens);

  // The dtype policy (train.precision); checkpoints take the model state from it (fp32 masters in bf16).
  MixedPrecision& precision() { return *precision_; }

  int64_t step_count() const { return step_; }
  int64_t nonfinite_in_a_row() const { return nonfinite_in_a_row_; }
  const std::string& freeze_table() const { return freeze_table_; }
  std::string groups_table() const { return describe_param_groups(groups_); }

  // The optimizer's parameters by name, and its state as named tensors (for checkpoints): per parameter
  // (adamw_state_tensors) when replicated; this rank's shard (ZeroOptimizer::shard_state) with ZeRO.
  const NamedTensors& trainable() const { return trainable_; }
  // The model's parameters and buffers outside trainable() (frozen weights, buffers) as views: what a ZeRO
  // checkpoint's model group holds beside the shards' trainable values. Needs no gather.
  NamedTensors untrained_state() const;
  NamedTensors optimizer_state() { return sync_->state(); }
  void load_optimizer_state(const NamedTensors& state) { sync_->load_state(state); }
  // ZeRO: the manifest that goes with the shards (checkpoint extra["zero"]); null when replicated.
  nlohmann::json optimizer_manifest() const { return sync_->manifest(); }
  // Loads the optimizer state of a checkpoint saved at any world size and ZeRO stage (resharding).
  void load_optimizer_from(const TrainingCheckpoint& ck) { sync_->load(ck); }
  // ZeRO 3: every block's full parameters in the model (saving, evaluating, loading weights; collective),
  // and back to the shards (taking over values loaded meanwhile). bf16 under ZeRO (any stage): also the full
  // float32 masters, on rank 0 only, for precision().model_state() and end_to_fp32(). No-ops otherwise.
  void gather_parameters() { gather(/*masters_root=*/0); }
  void release_parameters();
  // ZeRO 3: forward passes between steps (held-out evaluation) without gathering the model. begin gathers the root
  // unit (collective); the block runners then gather one block at a time as it runs, so every rank must make the
  // same passes: generation goes through generate_in_lockstep with lockstep(). end releases the root. No-ops, and
  // lockstep() null, below stage 3.
  void begin_sharded_passes();
  void end_sharded_passes();
  const Lockstep* lockstep() const { return lockstep_ ? &*lockstep_ : nullptr; }
  // Loads a model state (a checkpoint's "model" tensors, float32 masters in bf16) into the model and the
  // masters, wherever they live (MixedPrecision, or ZeRO's shards; ZeRO 3 blocks gathered for it). Collective.
  void load_model_state(const std::map<std::string, torch::Tensor>& state, const std::string& origin);
  // Loads a checkpoint's weights: `model_group` (its "model" tensors) and the ZeRO shards' parts (the trainable
  // values, stage 3's frozen values; saved at any world size). Without ZeRO: put together and loaded as
  // load_model_state. Under ZeRO each rank reads only what it holds, nothing gathered: the parameters and buffers
  // the model keeps in full, one at a time, and its own slices of the sharded ones (ZeroOptimizer::load_shards).
  // Throws std::runtime_error naming the missing, unexpected and mis-shaped entries; nothing is loaded then.
  void load_checkpoint_weights(const std::map<std::string, torch::Tensor>& model_group,
                               const std::vector<const ZeroShardValues*>& parts, const std::string& origin);
  // The strategy and the machinery under it (null where it does not apply), for metrics and checkpoints.
  const GradientSync& gradient_sync() const { return *sync_; }
  const ZeroOptimizer* zero() const { return sync_->zero(); }
  const DataParallel* data_parallel() const { return sync_->data_parallel(); }
  // The bytes this rank holds now, counted from the tensors, each storage once: the model's parameters and their
  // gradients, the fp32 masters and theirs, and the gradient sync's buffers, shards and optimizer state. Between
  // steps it equals rank_bytes_between_steps() of the run (trainers/plan.h), which `owl2 plan` prints.
  RankBytes held_bytes() const;
  // Step counters travel in the checkpoint's scheduler record.
  void set_counters(int64_t step, int64_t nonfinite_in_a_row);

  // Everything needed for an exact resume in memory (tests): "param.<name>" for every parameter (bf16: the
  // float32 masters), "adamw.<name>.*" (ZeRO: this rank's shard), "trainer.step", "trainer.nonfinite" and
  // "rng.<device>". Under ZeRO 3 or bf16 with ZeRO it gathers (collective: every rank calls it).
  std::map<std::string, torch::Tensor> state();
  // Restores state() (same world size and stage); throws std::invalid_argument naming the first missing or
  // mis-shaped entry. Collective as state().
  void load_state(const std::map<std::string, torch::Tensor>& state);

 private:
  // gather_parameters(), with the full float32 masters (sharded ones) on rank masters_root (all when < 0).
  void gather(int64_t masters_root);
  // ZeRO 3 with trainable vision or abstractor blocks sharded: per micro-batch, whether this rank has no image while
  // another rank's micro-batch at the same place has some (one all-reduce), so it runs the placeholder image.
  std::vector<uint8_t> vision_placeholders(const std::vector<Batch>& micro_batches);
  // The seconds this rank has spent blocked in collectives so far.
  double comm_seconds() const { return comm_ ? comm_->blocked_seconds() : 0; }
  // r.tokens and r.samples over the micro-batches of all ranks (the step's first collectives).
  void count_global_batch(const std::vector<Batch>& micro_batches, const std::vector<int64_t>& label_tokens,
                          StepResult& r);

  torch::nn::Module& model_;
  bool visual_blocks_sharded_ = false;
  std::optional<Lockstep> lockstep_;  // between begin_ and end_sharded_passes at ZeRO 3
  LossSumFn loss_sum_;
  RunConfig cfg_;
  std::vector<ParamGroup> groups_;
  NamedTensors trainable_;
  std::unique_ptr<MixedPrecision> precision_;  // before sync_: bf16 swaps the groups' tensors for fp32 masters
  std::shared_ptr<Comm> comm_;                 // null on one rank
  std::unique_ptr<GradientSync> sync_;
  std::string freeze_table_;
  int64_t step_ = 0;
  int64_t nonfinite_in_a_row_ = 0;
};

}  // namespace owl2
