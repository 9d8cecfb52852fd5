// What ZeRO stage 3 shards, decided in one place for the trainer and the planner: apply_training_policies()
// builds its sharded stacks from kZero3Stacks, and make_plan() divides by the world size exactly the parameters
// zero3_shards() names (docs/distributed.md, "ZeRO stage 3"; docs/plan.md).
#pragma once
#include <string>
#include <string_view>

namespace owl2 {

struct Zero3Stack {
  const char* name;    // the stack ("decoder")
  const char* prefix;  // its blocks' parameter names: prefix + block index + "."
};
// The repeated blocks of the three towers, in the order a forward pass runs them. The vision tower and the
// abstractor are not run for a text-only micro-batch; when another rank's micro-batch has images, the trainer runs
// them on a blank placeholder image whose output reaches the loss times zero, so every rank makes the same per-block
// collectives (Trainer::step). The embeddings, lm_head, norms and the abstractor's queries and visual_fc are not in
// blocks: they form the root unit, sharded between steps (trainable and frozen alike) and gathered for a whole step,
// their gradients reduced as at stage 2.
inline constexpr Zero3Stack kZero3Stacks[] = {{"vision", "model.vision_model.encoder.layers."},
                                              {"abstractor", "model.visual_abstractor.encoder.layers."},
                                              {"decoder", "model.layers."}};
// Whether a stack runs only for micro-batches with images.
inline bool zero3_stack_is_visual(std::string_view name) { return name == "vision" || name == "abstractor"; }

// True when stage 3 shards this parameter: inside a block of a sharded stack. Trainable ones are sharded with
// their gradients and optimizer state; frozen ones in a shard of their own, in the compute dtype.
inline bool zero3_shards(std::string_view name) {
  for (const auto& s : kZero3Stacks) {
    if (name.substr(0, std::string_view(s.prefix).size()) == s.prefix) return true;
  }
  return false;
}

// The block a sharded parameter belongs to ("model.layers.3" for "model.layers.3.mlp.up_proj.weight").
inline std::string zero3_block(std::string_view name) {
  for (const auto& s : kZero3Stacks) {
    const std::string_view prefix(s.prefix);
    if (name.substr(0, prefix.size()) != prefix) continue;
    const auto dot = name.find('.', prefix.size());
    return std::string(name.substr(0, dot == std::string_view::npos ? name.size() : dot));
  }
  return {};
}

}  // namespace owl2
