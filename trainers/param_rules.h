// What is trained and how fast: ordered freeze rules and parameter groups over parameter names
// (first match wins), applied to a model from outside; plus the ViT's layer-wise LR decay.
#pragma once
#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "owl2/model/glob.h"
#include "trainers/config.h"

namespace owl2 {

// The module a parameter belongs to for the per-module tables: "model.vision_model.encoder.layers.3.mlp.fc1.weight"
// -> "model.vision_model", "lm_head.weight" -> "lm_head".
std::string top_level(const std::string& name);

// Sets requires_grad on every parameter by the first matching rule. Throws std::invalid_argument when a rule
// matches no parameter, or when a parameter matches no rule (a rules list should end with "*").
// Returns a table (one line per top-level module: trainable / frozen parameter counts).
std::string apply_freeze_rules(torch::nn::Module& model, const std::vector<FreezeRule>& rules);

// The freeze rules a run applies: cfg.freeze, or with LoRA (lora.rank > 0) the adapters and the parameters of
// lora.modules_to_save trainable and everything else frozen.
std::vector<FreezeRule> effective_freeze_rules(const RunConfig& cfg);

// True when `rules` are RunConfig's default parameter groups.
bool default_param_groups(const std::vector<ParamGroupRule>& rules);

// A resolved optimizer group: the tensors and their LR scale and weight decay.
struct ParamGroup {
  std::string name;
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;
  double lr_scale = 1.0;
  double weight_decay = 0.0;
  int64_t numel = 0;
};

// The groups by name alone (what resolve_param_groups does to a model, and `owl2 plan` to a config): each group's
// members as indices into `trainable` (the trainable parameter names in registration order), groups in rule
// order and, with vision_layer_decay < 1, by ViT layer id within a rule. Throws as resolve_param_groups.
struct GroupMembers {
  std::string name;
  std::vector<size_t> members;
  double lr_scale = 1.0;
  double weight_decay = 0.0;
};
std::vector<GroupMembers> assign_param_groups(const std::vector<std::string>& trainable,
                                              const std::vector<ParamGroupRule>& rules, double default_weight_decay,
                                              double vision_layer_decay, int64_t vision_layers,
                                              bool drop_unmatched = false);

// Assigns every trainable parameter to the first matching group rule; throws std::invalid_argument when a rule
// matches no trainable parameter (unless drop_unmatched: the default groups under LoRA, where no bias may train) or a trainable parameter is left unclaimed. With vision_layer_decay < 1, the
// groups are split further by ViT depth: block i of L gets decay^(L - i), the embeddings decay^(L + 1), and the
// ViT post-LN and everything outside the ViT 1 (BEiT-style layer ids).
std::vector<ParamGroup> resolve_param_groups(torch::nn::Module& model, const std::vector<ParamGroupRule>& rules,
                                             double default_weight_decay, double vision_layer_decay,
                                             int64_t vision_layers, bool drop_unmatched = false);

// A printable table of the groups (name, tensors, parameters, lr scale, weight decay).
std::string describe_param_groups(const std::vector<ParamGroup>& groups);

// Linear warm-up to the peak over `warmup` steps (step 0 gets peak/warmup), then cosine to `min_lr` at `total`.
double cosine_lr(int64_t step, int64_t total, int64_t warmup, double peak, double min_lr);

}  // namespace owl2
