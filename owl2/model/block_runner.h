// How a stack runs its blocks: directly, or through a wrapper installed from outside the model (the
// trainer's activation checkpointing, ZeRO-3 sharding). A block's tensor inputs are passed explicitly so that a
// wrapper can save and replay them; whatever else the block needs is captured by value. The wrapper is told
// which block of the stack it runs (0-based), so that it never has to infer it from the order of the calls.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace owl2 {

using BlockFn = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;
using BlockRunner =
    std::function<at::Tensor(int64_t index, const BlockFn& block, const std::vector<at::Tensor>& inputs)>;

inline at::Tensor run_block(const BlockRunner& runner, int64_t index, const BlockFn& block,
                            const std::vector<at::Tensor>& inputs) {
  return runner ? runner(index, block, inputs) : block(inputs);
}

}  // namespace owl2
