// Lockstep: how ranks whose model passes are collectives keep making the same passes (generate_in_lockstep in
// generate.h). Kept apart from the model so that the trainer can hand one out without including it.
#pragma once
#include <functional>

namespace owl2 {

// Generation by ranks whose forward passes are collectives: under ZeRO 3 every decoder layer (and, when sharded, every
// ViT and abstractor block) is all-gathered as it runs, so the ranks must make the same passes in the same order
// even though each answers its own prompts, finishes them after its own number of tokens, or has none at all.
// `any` is an OR over the ranks (itself a collective); `vision`: the vision tower and abstractor issue collectives
// too, so a rank without images runs them on a blank image when another rank has some.
struct Lockstep {
  std::function<bool(bool mine)> any;
  bool vision = false;
};

}  // namespace owl2
