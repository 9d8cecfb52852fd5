// The documented random init of the model (docs/model.md "Init"), run once on a freshly constructed model whose
// weights are not loaded next: constructors only register uninitialised tensors.
#pragma once
#include <cstdint>
#include <functional>

#include "owl2/model/abstractor.h"
#include "owl2/model/model.h"
#include "owl2/model/vision.h"

namespace owl2 {

// Standard deviation of every normal-initialised tensor by default (the reference's initializer_range).
inline constexpr double kInitStd = 0.02;

// Seeds the default generators (torch::manual_seed(seed)) and writes every parameter once: normal(0, std)
// for Linear, PatchConv and Embedding weights, the class token, the ViT positions, the learnable queries and
// vit_eos; zeros for Linear biases; ones / zeros for LayerNorm weight / bias; ones for RMSNorm. The model has
// no buffers. The same seed and std give bit-identical tensors. `std` is ModelConfig::initializer_range.
void init_weights(MPLUGOwl2ForCausalLM& model, uint64_t seed, double std = kInitStd);
// Hooks of a streamed init (ZeRO 3's start-up: trainers/setup.h, build_training).
struct InitHooks {
  // Parameters left alone, with nothing drawn for them (adapters added to the model after it was built), so that the
  // others get the values the model without them gets.
  std::function<bool(const torch::Tensor&)> skip;
  // Called with each parameter right after it is written, in the order of the draws; it may take the values and
  // free the tensor (the values drawn are the same).
  std::function<void(torch::Tensor&)> written;
};
void init_weights(MPLUGOwl2ForCausalLM& model, uint64_t seed, double std, const InitHooks& hooks);
// The same scheme for a component built on its own (`owl2 init` draws the abstractor; tests use a lone ViT).
void init_weights(VisionModel& vision, uint64_t seed, double std = kInitStd);
void init_weights(VisualAbstractor& abstractor, uint64_t seed, double std = kInitStd);

}  // namespace owl2
