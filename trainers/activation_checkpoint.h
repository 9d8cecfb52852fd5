// Activation checkpointing: run a block without keeping its activations and recompute it in backward,
// with the RNG and autocast state of the forward pass restored for the recompute.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "owl2/model/block_runner.h"

namespace owl2 {

// out = fn(inputs), but only the inputs are saved; parameters used inside `fn` receive their gradients during
// the recompute (reentrant style). Inputs that do not require grad get no gradient. Works when no input requires
// grad but parameters inside do (frozen embeddings feeding a trainable block).
// `hooks` run around the block (ZeRO stage 3 gathers a block's parameters in `before` and releases them in
// `after_forward` and `after_backward`; the latter also reduces the block's gradients).
struct CheckpointHooks {
  std::function<void()> before;          // before the forward pass and before the recompute
  std::function<void()> after_forward;   // after the forward pass (no graph kept)
  std::function<void()> after_backward;  // after backward through the recompute
};
at::Tensor checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs, const CheckpointHooks& hooks = {});

// A BlockRunner that checkpoints every block (install it on a stack of the model); the block index is not needed.
inline BlockRunner checkpointing_runner() {
  return [](int64_t /*index*/, const BlockFn& fn, const std::vector<at::Tensor>& inputs) {
    return checkpoint(fn, inputs);
  };
}

}  // namespace owl2
