// ZeRO stage 3 block runners: a stack's blocks gather their parameters just before they run and release them
// after, in forward and again for the recompute in backward, which also reduce-scatters the block's gradients.
// docs/distributed.md, "ZeRO stage 3".
#pragma once
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "owl2/model/block_runner.h"
#include "trainers/parallel/zero.h"

namespace owl2 {

// A stack of repeated blocks whose parameters ZeRO 3 shards, and where its runner goes.
struct ShardedStack {
  std::string name;                                    // for error messages ("decoder")
  std::vector<std::shared_ptr<torch::nn::Module>> blocks;  // in the order the stack runs them
  BlockRunner* runner = nullptr;                       // the stack's runner slot in the model
};

// Each block's parameters (the ZeroOptimizer's `blocks`), stacks one after the other.
std::vector<std::vector<at::Tensor>> stack_block_params(const std::vector<ShardedStack>& stacks);

// Installs a runner on every stack: the stack's block `index` (what run_block passes) is block first + index of
// `zero`, with first the blocks of the stacks before it, so a pass may run any subset of the blocks in any order.
// Every call checkpoints the block (activation_checkpoint.h): forward gathers, runs without
// a graph and releases; backward gathers, recomputes, backpropagates, reduce_block()s and releases. Each gather
// also starts the all-gather of the block the pass runs next (index + 1 in forward, - 1 in backward, within the
// stack: ZeroOptimizer::prefetch_block), so at most two blocks are held at once. Under
// no-grad (evaluation) it only gathers, runs and releases; with zero.all_gathered() it runs blocks as they are.
// With `prefetch` false each gather waits for its own all-gather only (distributed.prefetch, for measuring).
void install_zero3_runners(ZeroOptimizer& zero, const std::vector<ShardedStack>& stacks, bool prefetch = true);

}  // namespace owl2
