// Freeze rules, parameter groups with layer-wise LR decay, and the cosine schedule.
#include "trainers/param_rules.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <stdexcept>

namespace owl2 {

std::string top_level(const std::string& name) {
  const auto a = name.find('.');
  if (a == std::string::npos) return name;
  if (name.compare(0, a, "model") != 0) return name.substr(0, a);
  const auto b = name.find('.', a + 1);
  return b == std::string::npos ? name : name.substr(0, b);
}

namespace {

// BEiT-style ViT layer id: 0 embeddings, i+1 block i, L+1 post-LN; -1 outside the ViT.
int64_t vision_layer_id(const std::string& name, int64_t layers) {
  static const std::string vit = "model.vision_model.";
  if (name.rfind(vit, 0) != 0) return -1;
  const std::string rest = name.substr(vit.size());
  if (rest.rfind("embeddings.", 0) == 0) return 0;
  static const std::string blocks = "encoder.layers.";
  if (rest.rfind(blocks, 0) == 0) return std::stoll(rest.substr(blocks.size())) + 1;
  return layers + 1;
}

}  // namespace

std::string apply_freeze_rules(torch::nn::Module& model, const std::vector<FreezeRule>& rules) {
  if (rules.empty()) throw std::invalid_argument("freeze: no rules given (use [{pattern: \"*\", trainable: true}])");
  std::vector<int64_t> hits(rules.size(), 0);
  std::map<std::string, std::pair<int64_t, int64_t>> table;  // top level -> (trainable, frozen)
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    size_t r = 0;
    while (r < rules.size() && !glob_match(rules[r].pattern, name)) ++r;
    if (r == rules.size()) {
      throw std::invalid_argument(fmt::format(
          "freeze: parameter '{}' matches no rule; end the list with {{pattern: \"*\", trainable: ...}}", name));
    }
    ++hits[r];
    item.value().set_requires_grad(rules[r].trainable);
    auto& row = table[top_level(name)];
    (rules[r].trainable ? row.first : row.second) += item.value().numel();
  }
  for (size_t r = 0; r < rules.size(); ++r) {
    if (hits[r] == 0) {
      throw std::invalid_argument(fmt::format("freeze[{}]: pattern '{}' matches no parameter (earlier rules may claim them)",
                                              r, rules[r].pattern));
    }
  }
  std::string out = fmt::format("{:<28} {:>16} {:>16}\n", "module", "trainable", "frozen");
  int64_t t = 0, f = 0;
  for (const auto& [mod, row] : table) {
    out += fmt::format("{:<28} {:>16} {:>16}\n", mod, row.first, row.second);
    t += row.first, f += row.second;
  }
  out += fmt::format("{:<28} {:>16} {:>16}\n", "total", t, f);
  return out;
}

std::vector<GroupMembers> assign_param_groups(const std::vector<std::string>& trainable,
                                              const std::vector<ParamGroupRule>& rules, double default_weight_decay,
                                              double vision_layer_decay, int64_t vision_layers, bool drop_unmatched) {
  std::vector<int64_t> hits(rules.size(), 0);
  std::map<std::pair<size_t, int64_t>, GroupMembers> groups;  // (rule, vit layer id) -> group, in rule order
  for (size_t k = 0; k < trainable.size(); ++k) {
    const std::string& name = trainable[k];
    size_t r = 0;
    while (r < rules.size() && !glob_match(rules[r].pattern, name)) ++r;
    if (r == rules.size()) {
      throw std::invalid_argument(fmt::format(
          "param_groups: trainable parameter '{}' is claimed by no group; end the list with {{pattern: \"*\"}}", name));
    }
    ++hits[r];
    const int64_t layer = vision_layer_decay < 1.0 ? vision_layer_id(name, vision_layers) : -1;
    auto& g = groups[{r, layer}];
    if (g.members.empty()) {
      const auto& rule = rules[r];
      g.name = rule.name.empty() ? rule.pattern : rule.name;
      if (layer >= 0) g.name += fmt::format(" [vit {}]", layer);
      g.weight_decay = rule.weight_decay.value_or(default_weight_decay);
      g.lr_scale = rule.lr_scale * (layer >= 0 ? std::pow(vision_layer_decay, double(vision_layers + 1 - layer)) : 1.0);
    }
    g.members.push_back(k);
  }
  for (size_t r = 0; r < rules.size() && !drop_unmatched; ++r) {
    if (hits[r] == 0) {
      throw std::invalid_argument(fmt::format(
          "param_groups[{}]: pattern '{}' matches no trainable parameter (earlier groups or freezing may claim them)", r,
          rules[r].pattern));
    }
  }
  std::vector<GroupMembers> out;
  for (auto& kv : groups) out.push_back(std::move(kv.second));
  return out;
}

std::vector<ParamGroup> resolve_param_groups(torch::nn::Module& model, const std::vector<ParamGroupRule>& rules,
                                             double default_weight_decay, double vision_layer_decay,
                                             int64_t vision_layers, bool drop_unmatched) {
  std::vector<std::string> names;
  std::vector<torch::Tensor> tensors;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    names.push_back(item.key());
    tensors.push_back(item.value());
  }
  std::vector<ParamGroup> out;
  for (const auto& m : assign_param_groups(names, rules, default_weight_decay, vision_layer_decay, vision_layers,
                                           drop_unmatched)) {
    ParamGroup g;
    g.name = m.name;
    g.lr_scale = m.lr_scale;
    g.weight_decay = m.weight_decay;
    for (size_t k : m.members) {
      g.names.push_back(names[k]);
      g.params.push_back(tensors[k]);
      g.numel += tensors[k].numel();
    }
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<FreezeRule> effective_freeze_rules(const RunConfig& cfg) {
  if (cfg.lora.rank <= 0) return cfg.freeze;
  std::vector<FreezeRule> rules{{"*.lora_A.weight", true}, {"*.lora_B.weight", true}};
  for (const auto& m : cfg.lora.modules_to_save) rules.push_back({m + ".*", true});
  rules.push_back({"*", false});
  return rules;
}

bool default_param_groups(const std::vector<ParamGroupRule>& rules) {
  const auto defaults = RunConfig{}.param_groups;
  if (rules.size() != defaults.size()) return false;
  for (size_t i = 0; i < rules.size(); ++i) {
    const auto &a = rules[i], &b = defaults[i];
    if (a.name != b.name || a.pattern != b.pattern || a.lr_scale != b.lr_scale || a.weight_decay != b.weight_decay) return false;
  }
  return true;
}

std::string describe_param_groups(const std::vector<ParamGroup>& groups) {
  std::string out = fmt::format("{:<36} {:>8} {:>14} {:>10} {:>8}\n", "group", "tensors", "parameters", "lr_scale", "wd");
  for (const auto& g : groups) {
    out += fmt::format("{:<36} {:>8} {:>14} {:>10.4g} {:>8.3g}\n", g.name, g.params.size(), g.numel, g.lr_scale,
                       g.weight_decay);
  }
  return out;
}

double cosine_lr(int64_t step, int64_t total, int64_t warmup, double peak, double min_lr) {
  if (warmup > 0 && step < warmup) return peak * double(step + 1) / double(warmup);
  const double span = double(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, double(step - warmup) / span);
  return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace owl2
