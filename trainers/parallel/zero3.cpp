// ZeRO stage 3 block runners; see zero3.h.
#include "trainers/parallel/zero3.h"

#include <fmt/format.h>

#include <stdexcept>

#include "trainers/activation_checkpoint.h"

namespace owl2 {

std::vector<std::vector<at::Tensor>> stack_block_params(const std::vector<ShardedStack>& stacks) {
  std::vector<std::vector<at::Tensor>> out;
  for (const auto& s : stacks) {
    for (const auto& b : s.blocks) out.push_back(b->parameters(/*recurse=*/true));
  }
  return out;
}

void install_zero3_runners(ZeroOptimizer& zero, const std::vector<ShardedStack>& stacks, bool prefetch) {
  int64_t first = 0;
  for (const auto& s : stacks) {
    if (!s.runner) throw std::invalid_argument(fmt::format("ZeRO 3: stack '{}' has no runner slot", s.name));
    const auto n = static_cast<int64_t>(s.blocks.size());
    if (n == 0) continue;
    if (first + n > zero.block_count()) {
      throw std::invalid_argument(fmt::format("ZeRO 3: stack '{}' needs blocks [{}, {}), the optimizer has {}", s.name,
                                              first, first + n, zero.block_count()));
    }
    ZeroOptimizer* z = &zero;
    *s.runner = [z, first, n, prefetch, name = s.name](int64_t index, const BlockFn& fn,
                                                       const std::vector<at::Tensor>& inputs) {
      if (index < 0 || index >= n) {
        throw std::out_of_range(fmt::format("ZeRO 3: stack '{}' ran block {}, it has {}", name, index, n));
      }
      const int64_t i = first + index;
      if (z->all_gathered()) return fn(inputs);
      CheckpointHooks hooks;
      // The first call is the forward pass, a second the recompute in backward: the pass runs the stack's blocks
      // up in forward and down in backward, so the neighbour in that direction is gathered while block i runs.
      auto calls = std::make_shared<int>(0);
      hooks.before = [z, i, first, n, calls, prefetch] {
        const int64_t next = (*calls)++ == 0 ? i + 1 : i - 1;
        z->gather_block(i);
        if (prefetch && next >= first && next < first + n) z->prefetch_block(next);
      };
      hooks.after_forward = [z, i] { z->release_block(i); };
      hooks.after_backward = [z, i] {
        z->reduce_block(i);
        z->release_block(i);
      };
      try {
        return checkpoint(fn, inputs, hooks);
      } catch (...) {
        z->release_block(i);  // between passes a rank holds no block's full parameters
        z->drop_prefetch();
        throw;
      }
    };
    first += n;
  }
  if (first != zero.block_count()) {
    throw std::invalid_argument(
        fmt::format("ZeRO 3: the stacks have {} blocks, the optimizer {}", first, zero.block_count()));
  }
}

}  // namespace owl2
