// How a stack runs its blocks: directly, or through a wrapper installed from outside the model (the
// trainer's activation checkpointing). A block's tensor inputs are passed explicitly so that a wrapper can
// save and replay them; whatever else the block needs is captured by value.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace owl2 {

using BlockFn = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;
using BlockRunner = std::function<at::Tensor(const BlockFn& block, const std::vector<at::Tensor>& inputs)>;

inline at::Tensor run_block(const BlockRunner& runner, const BlockFn& block, const std::vector<at::Tensor>& inputs) {
  return runner ? runner(block, inputs) : block(inputs);
}

}  // namespace owl2
