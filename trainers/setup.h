// The parts a training run is composed of, each from its own slice of the RunConfig: the model (build_model),
// what is applied to it from outside (apply_training_policies), and the data (load_tokenizer, make_loader).
// `owl2 train` (trainers/run.cpp) and `owl2 bench train` build the same model the same way from these.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <vector>

#include "data/batch.h"
#include "data/example.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "owl2/model/model.h"
#include "trainers/config.h"
#include "trainers/parallel/distributed.h"
#include "trainers/parallel/zero3.h"
#include "trainers/plan.h"
#include "trainers/trainer.h"

namespace owl2 {

using ExampleLoader = data::Loader<Example, Batch>;

struct ModelBuild {
  torch::Device device = torch::kCPU;
  bool load_init = true;       // false: keep the initial weights even when init.from is set (benchmarks)
  std::ostream* log = nullptr;  // where the init summary goes (rank 0); nullptr: nowhere
  // true: the parameters are registered but not written (their pages untouched, so not resident);
  // write_initial_values() writes them later.
  bool defer_values = false;
};

// The model of cfg.model with the weights of init.from (unless how.load_init is false), else initialised once
// by init_weights with train.seed (also under init.allow_missing, for the tensors the checkpoint lacks);
// moved to how.device, in training mode.
MPLUGOwl2ForCausalLM build_model(const RunConfig& cfg, const ModelBuild& how = {});

// What build_model writes into a model built with defer_values: the init, or the weights of init.from (unless
// how.load_init is false), into the parameters of `only` (null: all of them; the others, e.g. LoRA adapters added
// since, are left alone and the init draws nothing for them). `written` (may be null) is called with each parameter
// right after it is written, in the order of the writes. With `written`, init.from and init.allow_missing together
// are a std::logic_error (some parameters would be written twice).
void write_initial_values(MPLUGOwl2ForCausalLM& model, const RunConfig& cfg, const ModelBuild& how,
                          const std::vector<torch::Tensor>* only, const std::function<void(torch::Tensor&)>& written);

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

// A run's model, what is applied to it and its Trainer, as `owl2 train` and `owl2 bench train` build them.
struct TrainingModel {
  MPLUGOwl2ForCausalLM model{nullptr};
  TrainingPolicies policies;
  NamedSizes sizes;  // each parameter's numel as built, for the plan (ZeRO 3 empties the parameters)
  std::unique_ptr<Trainer> trainer;
};

// build_model, apply_training_policies and the Trainer, for training on how.device. Below ZeRO stage 3 the model is
// built on how.device. At stage 3 no rank holds the whole model, on the host or the device, at any time:
//  - the model is built on the host with its parameters unwritten (ModelBuild::defer_values), so not resident;
//  - the Trainer lays out the shards on how.device (ShardPlacement) with those parameters pending;
//  - write_initial_values then writes one parameter at a time, the init drawing exactly the values it draws for a
//    whole model, or a tensor of init.from, and each is absorbed into this rank's shards and freed at once
//    (broadcast from rank 0 first, through the device).
//  The host's peak is then about one parameter beyond the shards. With init.from and init.allow_missing together
//  the model is written whole on the host first (the init, then the loaded tensors over it) and then sharded.
TrainingModel build_training(const RunConfig& cfg, const ModelBuild& how, std::shared_ptr<Comm> comm);

// The SentencePiece model of data.tokenizer; throws ConfigError when none is set or it has more tokens than
// model.decoder.vocab_size.
std::shared_ptr<const Tokenizer> load_tokenizer(const RunConfig& cfg);

// This rank's loader over data.sources (one dataset, or their weighted mixture): examples built with the
// chat template, image mode and augmentation of cfg.data, micro-batches of train.micro_batch_size, samples
// longer than train.max_length dropped or truncated (data.length_policy) by their spliced length.
ExampleLoader make_loader(const RunConfig& cfg, const DistEnv& env, std::shared_ptr<const Tokenizer> tokenizer);

}  // namespace owl2
