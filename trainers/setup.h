// The parts a training run is composed of, each from its own slice of the RunConfig: the model (build_model),
// what is applied to it from outside (apply_training_policies), and the data (load_tokenizer, make_loader).
// `owl2 train` (trainers/run.cpp) and `owl2 bench train` build the same model the same way from these.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <vector>

#include "data/batch.h"
#include "data/example.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "owl2/model/model.h"
#include "trainers/config.h"
#include "trainers/parallel/distributed.h"
#include "trainers/parallel/zero3.h"
#include "trainers/trainer.h"

namespace owl2 {

using ExampleLoader = data::Loader<Example, Batch>;

struct ModelBuild {
  torch::Device device = torch::kCPU;
  bool load_init = true;       // false: keep the initial weights even when init.from is set (benchmarks)
  std::ostream* log = nullptr;  // where the init summary goes (rank 0); nullptr: nowhere
};

// Where build_model() builds the model of a run that trains on `device`: the host at ZeRO stage 3, where the
// Trainer then puts only this rank's shards on `device` (so the device never holds the whole model), else `device`.
torch::Device build_device(const RunConfig& cfg, torch::Device device);
// What the Trainer then takes as its shard_device: `device` at ZeRO stage 3, else none (the model is on it).
std::optional<torch::Device> shard_device(const RunConfig& cfg, torch::Device device);

// The model of cfg.model with the weights of init.from (unless how.load_init is false), else initialised once
// by init_weights with train.seed (also under init.allow_missing, for the tensors the checkpoint lacks);
// moved to how.device, in training mode.
MPLUGOwl2ForCausalLM build_model(const RunConfig& cfg, const ModelBuild& how = {});

// What apply_training_policies() leaves for the Trainer to finish.
struct TrainingPolicies {
  // ZeRO stage 3: the stacks whose blocks the Trainer shards (its constructor shards them and installs their
  // runners). Empty at other stages.
  std::vector<ShardedStack> sharded_stacks;
  // lora.rank > 0: the Linear layers that carry an adapter, and the modules trained in full with them.
  std::vector<std::string> lora_modules, lora_saved_modules;
};

// The seed of the LoRA A matrices is train.seed plus this (their own generator: the global RNG is untouched).
inline constexpr uint64_t kLoraSeedOffset = 0x10a4;

// Applies what is put on the model from outside, every rank alike, in this fixed order:
//  0. LoRA adapters (lora.rank > 0) on lora.targets, before anything collects the parameters (a bad target or
//     lora.modules_to_save pattern is a ConfigError naming it);
//  1. activation checkpointing (train.activation_checkpointing): a checkpointing block runner on each chosen
//     stack;
//  2. the sharding set-up (distributed.zero_stage 3): the decoder layers as the one sharded stack. It comes
//     after checkpointing because ZeRO 3's runners replace the stack's runner and checkpoint every block
//     themselves (zero3.h), so the decoder is checkpointed under stage 3 whatever step 1 chose.
// Precision (train.precision) is not applied here: the Trainer applies it, because its fp32 masters are the
// optimizer's parameters. Neither step touches parameter values or the RNG, so computing the plan's FLOPs
// from the model afterwards still sees every parameter (ZeRO 3 empties the blocks only in the Trainer).
TrainingPolicies apply_training_policies(MPLUGOwl2ForCausalLM& model, const RunConfig& cfg);

// The summed loss of a batch through `model`, for the Trainer.
LossSumFn model_loss_sum(MPLUGOwl2ForCausalLM model);

// The SentencePiece model of data.tokenizer; throws ConfigError when none is set or it has more tokens than
// model.decoder.vocab_size.
std::shared_ptr<const Tokenizer> load_tokenizer(const RunConfig& cfg);

// This rank's loader over data.sources (one dataset, or their weighted mixture): examples built with the
// chat template, image mode and augmentation of cfg.data, micro-batches of train.micro_batch_size, samples
// longer than train.max_length dropped or truncated (data.length_policy) by their spliced length.
ExampleLoader make_loader(const RunConfig& cfg, const DistEnv& env, std::shared_ptr<const Tokenizer> tokenizer);

}  // namespace owl2
