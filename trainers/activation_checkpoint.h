// Activation checkpointing: run a block without keeping its activations and recompute it in backward,
// with the RNG and autocast state of the forward pass restored for the recompute.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "owl2/block_runner.h"

namespace owl2 {

// out = fn(inputs), but only the inputs are saved; parameters used inside `fn` receive their gradients during
// the recompute (reentrant style). Inputs that do not require grad get no gradient. Works when no input requires
// grad but parameters inside do (frozen embeddings feeding a trainable block).
at::Tensor checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs);

// A BlockRunner that checkpoints every block (install it on a stack of the model).
inline BlockRunner checkpointing_runner() {
  return [](const BlockFn& fn, const std::vector<at::Tensor>& inputs) { return checkpoint(fn, inputs); };
}

}  // namespace owl2
