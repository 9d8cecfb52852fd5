// `owl2 plan`: parameter counts from the config alone, memory per device (weights, gradients, optimizer
// state, activations with and without checkpointing) and model FLOPs per step, so an OOM shows up before
// the run. The formulas are documented in docs/plan.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainers/config.h"

namespace owl2 {

// Parameters per top-level module (model.vision_model, model.visual_abstractor, model.layers, ...).
struct ComponentCount {
  std::string name;
  int64_t params = 0;
  int64_t trainable = 0;  // under the config's freeze rules
};

// (parameter name, number of elements), as the model registers them; the CLI takes them from the model
// built on the meta device, so no weight is allocated.
using NamedSizes = std::vector<std::pair<std::string, int64_t>>;

// What one rank holds between optimizer steps, in bytes, by what it is: the model's parameters as held (ZeRO 3:
// the trainable block parameters released) and ZeRO 3's parameter shard; gradients and gradient buffers; AdamW
// moments and fp32 master weights.
struct RankBytes {
  int64_t weights = 0, grads = 0, optimizer = 0;
  int64_t total() const { return weights + grads + optimizer; }
};

// RankBytes for a run of `cfg` at `world_size` ranks and ZeRO stage `zero_stage` over the model's parameters
// (`params`, in registration order), decided the way the Trainer decides them: the freeze rules, the parameter
// groups' order, the stage-3 blocks (trainers/sharding.h), the gradient buckets and their padding (ZeroLayout,
// distributed.bucket_mb) and the dtypes of train.precision and distributed.reduce_dtype. Every rank holds the
// same. Assumes every trainable parameter gets a gradient (one unused on every rank holds none in a replicated
// run). Trainer::held_bytes() measures the same from the tensors.
RankBytes rank_bytes_between_steps(const RunConfig& cfg, const NamedSizes& params, int zero_stage, int64_t world_size);

struct PlanInputs {
  int64_t world_size = 1;
  int zero_stage = -1;       // 0 plain data parallel, 1 optimizer state, 2 + gradients, 3 + weights sharded;
                             // -1: the config's distributed.zero_stage
  int64_t text_tokens = 0;   // per sample (0: train.max_length minus the visual tokens)
  int64_t images_per_sample = 1;
};

struct Plan {
  std::vector<ComponentCount> components;
  int64_t total_params = 0, trainable_params = 0;
  RankBytes held;  // between steps, exactly (rank_bytes_between_steps)
  // The peak: held, plus at ZeRO 3 the block that runs and the next one's prefetch (weights_bytes counts them).
  double weights_bytes = 0, grads_bytes = 0, optimizer_bytes = 0;
  // ZeRO 3 (zero3_shards, trainers/sharding.h): the parameters sharded, and the largest block, which a rank
  // holds gathered while it runs (weights_bytes counts it in full).
  int64_t zero3_sharded_params = 0, zero3_largest_block = 0;
  // The two largest blocks' padded buckets and the root unit (the trainable parameters outside blocks, gathered
  // for a whole step), in the compute dtype.
  int64_t zero3_gathered_bytes = 0;
  double activations_bytes = 0, activations_checkpointed_bytes = 0;
  double flops_per_step = 0;  // per device
  std::string report;         // the printed table
};

// Throws std::invalid_argument on impossible inputs (world size, ZeRO stage, batch sizes).
Plan make_plan(const RunConfig& cfg, const NamedSizes& params, const PlanInputs& in);

}  // namespace owl2
