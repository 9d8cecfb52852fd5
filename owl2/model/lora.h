// LoRA adapters on the model's Linear layers (arXiv 2106.09685, as Hugging Face PEFT defines them): a target
// Linear gains `lora_A` [r, in] and `lora_B` [out, r] and computes W x + b + B A dropout(x) * alpha / r
// (alpha / sqrt(r) with rsLoRA). A is drawn as PEFT draws it (Kaiming-uniform with a = sqrt(5), i.e.
// U(-1/sqrt(in), 1/sqrt(in))), B is zero, so a fresh adapter leaves every output unchanged. Targets are globs
// over module names (owl2/model/glob.h), the syntax of the freeze rules. The files (PEFT's layout) are
// owl2/io/lora_files.h; docs/lora.md.
#pragma once
#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

#include "owl2/model/layers.h"
#include "owl2/model/model.h"

namespace owl2 {

struct LoraSpec {
  int64_t rank = 0;  // 0: no adapters
  double alpha = 16.0;
  double dropout = 0.0;
  bool rslora = false;
  // Globs over module names; each must match at least one module, and every module it matches must be a Linear.
  // Default: the decoder's q/o and MLP projections and both modality copies of k/v, each copy its own adapter.
  std::vector<std::string> targets{"model.layers.*.self_attn.q_proj",
                                   "model.layers.*.self_attn.k_proj.multiway.?",
                                   "model.layers.*.self_attn.v_proj.multiway.?",
                                   "model.layers.*.self_attn.o_proj",
                                   "model.layers.*.mlp.gate_proj",
                                   "model.layers.*.mlp.up_proj",
                                   "model.layers.*.mlp.down_proj"};
  // Globs over module names: modules trained in full next to the adapters and saved with them.
  std::vector<std::string> modules_to_save;
};

// The adapter scale: alpha / rank, or alpha / sqrt(rank) with rsLoRA.
double lora_scaling(const LoraSpec& spec);

// The Linear layers `targets` name, in module order. Throws std::invalid_argument naming the pattern when one
// matches no module, or naming the module when a pattern matches one that is not a Linear (a Multiway's copies
// are `...k_proj.multiway.0` / `.1`) or is lm_head (generation reads its weight directly; use modules_to_save).
std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> lora_targets(torch::nn::Module& model,
                                                                             const std::vector<std::string>& targets);

// The modules `modules_to_save` names (a module inside another named one is left out). Throws
// std::invalid_argument naming a pattern that matches no module, or a module that also holds a LoRA target.
std::vector<std::string> lora_modules_to_save(torch::nn::Module& model, const LoraSpec& spec);

// Adds an adapter of spec.rank to every target (on the weight's device and dtype), A drawn from a generator
// seeded with `seed` in module order, B zero. Returns the adapted module names. Throws what lora_targets throws,
// std::invalid_argument for rank < 1, and when a target already carries an adapter.
std::vector<std::string> add_lora(torch::nn::Module& model, const LoraSpec& spec, uint64_t seed);

// Adds an adapter of `rank` to the named Linear without drawing values (A and B uninitialised), for loading.
void add_lora_adapter(torch::nn::Module& model, const std::string& module, int64_t rank, double scaling,
                      double dropout = 0.0);

// The modules that carry an adapter, in module order.
std::vector<std::string> lora_adapted_modules(torch::nn::Module& model);

// Folds every adapter into its Linear (W += scaling * B A, computed in at least float32 and rounded once) and
// removes the adapters, so the model's parameters are the reference layout again. Returns how many were merged.
int64_t merge_lora(torch::nn::Module& model);

// The adapter parameters add_lora would register on a model with these parameters (no module is built):
// `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r] for every 2-D `<module>.weight` whose
// module a target matches (lm_head excepted). For `owl2 plan`.
std::vector<ParameterShape> lora_parameter_shapes(const std::vector<ParameterShape>& base, const LoraSpec& spec);

// True for the parameter names of adapters (`.lora_A.` / `.lora_B.`).
bool is_lora_parameter(const std::string& name);

}  // namespace owl2
