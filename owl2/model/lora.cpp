// LoRA adapters: targets, initialisation, merging (lora.h).
#include "owl2/model/lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

#include "owl2/model/glob.h"

namespace owl2 {

double lora_scaling(const LoraSpec& spec) {
  if (spec.rank < 1) throw std::invalid_argument(fmt::format("lora.rank must be at least 1, got {}", spec.rank));
  return spec.rslora ? spec.alpha / std::sqrt(static_cast<double>(spec.rank)) : spec.alpha / static_cast<double>(spec.rank);
}

bool is_lora_parameter(const std::string& name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos ||
         name.starts_with("lora_A.") || name.starts_with("lora_B.");
}

namespace {

bool is_adapter_module(const std::string& name) {
  return name.ends_with(".lora_A") || name.ends_with(".lora_B") || name.find(".lora_A.") != std::string::npos ||
         name.find(".lora_B.") != std::string::npos;
}

}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> lora_targets(torch::nn::Module& model,
                                                                             const std::vector<std::string>& targets) {
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> out;
  std::vector<size_t> hits(targets.size(), 0);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    if (is_adapter_module(name)) continue;
    bool matched = false;
    for (size_t t = 0; t < targets.size(); ++t) {
      if (glob_match(targets[t], name)) ++hits[t], matched = true;
    }
    if (!matched) continue;
    auto linear = std::dynamic_pointer_cast<LinearImpl>(item.value());
    if (!linear) {
      throw std::invalid_argument(fmt::format(
          "lora.targets: module '{}' is not a Linear layer; target Linear layers only (a modality-adaptive k_proj / "
          "v_proj is adapted through its copies '{}.multiway.0' and '{}.multiway.1')", name, name, name));
    }
    if (name == "lm_head") {
      throw std::invalid_argument("lora.targets: lm_head cannot carry an adapter (generation reads its weight "
                                  "directly); list it in lora.modules_to_save to train it in full");
    }
    out.emplace_back(name, linear);
  }
  for (size_t t = 0; t < targets.size(); ++t) {
    if (hits[t] == 0) throw std::invalid_argument(fmt::format("lora.targets[{}]: pattern '{}' matches no module", t, targets[t]));
  }
  return out;
}

std::vector<std::string> lora_modules_to_save(torch::nn::Module& model, const LoraSpec& spec) {
  std::vector<std::string> out;
  std::vector<size_t> hits(spec.modules_to_save.size(), 0);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    if (is_adapter_module(name)) continue;
    bool matched = false;
    for (size_t t = 0; t < spec.modules_to_save.size(); ++t) {
      if (glob_match(spec.modules_to_save[t], name)) ++hits[t], matched = true;
    }
    if (!matched) continue;
    bool inside = false;
    for (const auto& m : out) inside = inside || name.starts_with(m + ".");
    if (!inside) out.push_back(name);
  }
  for (size_t t = 0; t < spec.modules_to_save.size(); ++t) {
    if (hits[t] == 0) {
      throw std::invalid_argument(
          fmt::format("lora.modules_to_save[{}]: pattern '{}' matches no module", t, spec.modules_to_save[t]));
    }
  }
  if (spec.rank > 0) {
    for (const auto& [target, _] : lora_targets(model, spec.targets)) {
      for (const auto& m : out) {
        if (target == m || target.starts_with(m + ".")) {
          throw std::invalid_argument(fmt::format(
              "lora: module '{}' is both a LoRA target and inside lora.modules_to_save entry '{}'; choose one", target, m));
        }
      }
    }
  }
  return out;
}

void add_lora_adapter(torch::nn::Module& model, const std::string& module, int64_t rank, double scaling,
                      double dropout) {
  auto found = model.named_modules("", false);
  auto* item = found.find(module);
  if (!item) throw std::invalid_argument(fmt::format("LoRA adapter for '{}': the model has no such module", module));
  auto linear = std::dynamic_pointer_cast<LinearImpl>(*item);
  if (!linear) throw std::invalid_argument(fmt::format("LoRA adapter for '{}': the module is not a Linear layer", module));
  if (linear->lora_A) throw std::invalid_argument(fmt::format("LoRA adapter for '{}': it already has one", module));
  if (rank < 1) throw std::invalid_argument(fmt::format("LoRA adapter for '{}': rank {} < 1", module, rank));
  const auto opts = linear->weight.options();
  const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
  auto a = std::make_shared<LinearImpl>(in, rank, /*bias=*/false);
  auto b = std::make_shared<LinearImpl>(rank, out, /*bias=*/false);
  {
    torch::NoGradGuard no_grad;
    a->weight.set_data(torch::zeros({rank, in}, opts));
    b->weight.set_data(torch::zeros({out, rank}, opts));
  }
  linear->lora_A = linear->register_module("lora_A", a);
  linear->lora_B = linear->register_module("lora_B", b);
  linear->lora_scaling = scaling;
  linear->lora_dropout = dropout;
  if (!linear->is_training()) linear->eval();
}

std::vector<std::string> add_lora(torch::nn::Module& model, const LoraSpec& spec, uint64_t seed) {
  const double scaling = lora_scaling(spec);
  if (spec.dropout < 0 || spec.dropout >= 1) {
    throw std::invalid_argument(fmt::format("lora.dropout must be in [0, 1), got {}", spec.dropout));
  }
  const auto targets = lora_targets(model, spec.targets);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<std::string> names;
  torch::NoGradGuard no_grad;
  for (const auto& [name, linear] : targets) {
    add_lora_adapter(model, name, spec.rank, scaling, spec.dropout);
    const double bound = 1.0 / std::sqrt(static_cast<double>(linear->weight.size(1)));
    const auto a = torch::empty(linear->lora_A->weight.sizes(), torch::kFloat64).uniform_(-bound, bound, gen);
    linear->lora_A->weight.copy_(a);
    names.push_back(name);
  }
  return names;
}

std::vector<std::string> lora_adapted_modules(torch::nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& item : model.named_modules("", false)) {
    auto linear = std::dynamic_pointer_cast<LinearImpl>(item.value());
    if (linear && linear->lora_A) out.push_back(item.key());
  }
  return out;
}

std::vector<ParameterShape> lora_parameter_shapes(const std::vector<ParameterShape>& base, const LoraSpec& spec) {
  std::vector<ParameterShape> out;
  for (const auto& p : base) {
    if (!p.name.ends_with(".weight") || p.shape.size() != 2) continue;
    const std::string module = p.name.substr(0, p.name.size() - 7);
    if (module == "lm_head") continue;
    bool hit = false;
    for (const auto& t : spec.targets) hit = hit || glob_match(t, module);
    if (!hit) continue;
    out.push_back({module + ".lora_A.weight", {spec.rank, p.shape[1]}});
    out.push_back({module + ".lora_B.weight", {p.shape[0], spec.rank}});
  }
  return out;
}

int64_t merge_lora(torch::nn::Module& model) {
  int64_t merged = 0;
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules("", false)) {
    auto linear = std::dynamic_pointer_cast<LinearImpl>(item.value());
    if (!linear || !linear->lora_A) continue;
    auto& w = linear->weight;
    const auto wide = at::promote_types(w.scalar_type(), torch::kFloat32);
    const auto delta = at::matmul(linear->lora_B->weight.to(wide), linear->lora_A->weight.to(wide)) * linear->lora_scaling;
    w.copy_(w.to(wide) + delta);
    linear->unregister_module("lora_A");
    linear->unregister_module("lora_B");
    linear->lora_A.reset();
    linear->lora_B.reset();
    linear->lora_scaling = 0.0;
    ++merged;
  }
  return merged;
}

}  // namespace owl2
