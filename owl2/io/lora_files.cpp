// PEFT-layout adapter files (lora_files.h).
#include "owl2/io/lora_files.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>

#include "owl2/io/fileio.h"
#include "owl2/model/glob.h"

namespace owl2 {
namespace fs = std::filesystem;
using json = nlohmann::json;

bool is_lora_adapter_dir(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / kAdapterConfigFile); }

size_t save_lora_adapter(const std::string& dir, const NamedTensors& state, const LoraSpec& spec,
                         const std::vector<std::string>& saved_modules, const std::string& base_model) {
  NamedTensors out;
  size_t adapters = 0;
  for (const auto& [name, t] : state) {
    bool keep = is_lora_parameter(name);
    adapters += keep ? 1 : 0;
    for (const auto& m : saved_modules) keep = keep || name.starts_with(m + ".");
    if (keep) out.emplace_back(kPeftKeyPrefix + name, t.is_floating_point() ? t.to(torch::kFloat32) : t);
  }
  if (adapters == 0) throw std::invalid_argument("writing a LoRA adapter to " + dir + ": the model carries no adapter");
  std::string regex;
  for (const auto& t : spec.targets) regex += (regex.empty() ? "" : "|") + ("(?:" + glob_to_regex(t) + ")");
  json cfg = {{"peft_type", "LORA"},
              {"task_type", nullptr},
              {"base_model_name_or_path", base_model.empty() ? json(nullptr) : json(base_model)},
              {"revision", nullptr},
              {"inference_mode", true},
              {"r", spec.rank},
              {"lora_alpha", spec.alpha},
              {"lora_dropout", spec.dropout},
              {"use_rslora", spec.rslora},
              {"target_modules", regex},
              {"modules_to_save", saved_modules.empty() ? json(nullptr) : json(saved_modules)},
              {"bias", "none"},
              {"fan_in_fan_out", false},
              {"init_lora_weights", true},
              {"use_dora", false},
              {"layers_to_transform", nullptr},
              {"layers_pattern", nullptr},
              {"rank_pattern", json::object()},
              {"alpha_pattern", json::object()}};
  fs::create_directories(dir);
  save_safetensors((fs::path(dir) / kAdapterWeightsFile).string(), out, {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / kAdapterConfigFile).string(), cfg.dump(2) + "\n");
  return out.size();
}

namespace {

template <typename T>
T field(const json& cfg, const std::string& key, const std::string& file, T fallback) {
  if (!cfg.contains(key) || cfg.at(key).is_null()) return fallback;
  try {
    return cfg.at(key).get<T>();
  } catch (const json::exception&) {
    throw std::runtime_error(fmt::format("{}: '{}' has the wrong type ({})", file, key, cfg.at(key).dump()));
  }
}

}  // namespace

AdapterFiles read_lora_adapter(const std::string& dir) {
  const auto cfg_path = (fs::path(dir) / kAdapterConfigFile).string();
  AdapterFiles out;
  out.weights_path = (fs::path(dir) / kAdapterWeightsFile).string();
  if (!fs::is_regular_file(cfg_path)) {
    throw std::runtime_error(fmt::format("{}: not a LoRA adapter directory (no {})", dir, kAdapterConfigFile));
  }
  json cfg;
  try {
    cfg = json::parse(read_file_text(cfg_path));
  } catch (const json::parse_error& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", cfg_path, e.what()));
  }
  if (!cfg.is_object()) throw std::runtime_error(cfg_path + ": expected a JSON object");
  const auto type = field<std::string>(cfg, "peft_type", cfg_path, "");
  if (type != "LORA") throw std::runtime_error(fmt::format("{}: peft_type is '{}', expected 'LORA'", cfg_path, type));
  if (field<bool>(cfg, "use_dora", cfg_path, false)) throw std::runtime_error(cfg_path + ": use_dora (DoRA) is not supported");
  if (field<bool>(cfg, "fan_in_fan_out", cfg_path, false)) throw std::runtime_error(cfg_path + ": fan_in_fan_out is not supported");
  const auto bias = field<std::string>(cfg, "bias", cfg_path, "none");
  if (bias != "none") throw std::runtime_error(fmt::format("{}: bias '{}' is not supported (only 'none')", cfg_path, bias));
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    if (cfg.contains(k) && !cfg.at(k).is_null() && !cfg.at(k).empty())
      throw std::runtime_error(fmt::format("{}: per-module {} is not supported", cfg_path, k));
  }
  out.spec.rank = field<int64_t>(cfg, "r", cfg_path, 8);
  out.spec.alpha = field<double>(cfg, "lora_alpha", cfg_path, 8.0);
  out.spec.dropout = field<double>(cfg, "lora_dropout", cfg_path, 0.0);
  out.spec.rslora = field<bool>(cfg, "use_rslora", cfg_path, false);
  out.spec.modules_to_save = field<std::vector<std::string>>(cfg, "modules_to_save", cfg_path, {});
  if (out.spec.rank < 1) throw std::runtime_error(fmt::format("{}: r must be at least 1, got {}", cfg_path, out.spec.rank));
  out.scaling = lora_scaling(out.spec);

  const auto& wp = out.weights_path;
  SafetensorsFile file(wp);
  for (const auto& key : file.names()) {
    if (!key.starts_with(kPeftKeyPrefix)) {
      throw std::runtime_error(fmt::format("{}: key '{}' does not start with '{}'", wp, key, kPeftKeyPrefix));
    }
    const std::string name = key.substr(std::string(kPeftKeyPrefix).size());
    if (name.ends_with(".lora_A.weight")) {
      out.adapters[name.substr(0, name.size() - 14)].first = file.get_copy(key);
    } else if (name.ends_with(".lora_B.weight")) {
      out.adapters[name.substr(0, name.size() - 14)].second = file.get_copy(key);
    } else {
      out.full[name] = file.get_copy(key);
    }
  }
  if (out.adapters.empty()) throw std::runtime_error(wp + ": no lora_A / lora_B tensors");
  for (const auto& [module, pair] : out.adapters) {
    const auto& [a, b] = pair;
    if (!a.defined() || !b.defined()) {
      throw std::runtime_error(fmt::format("{}: module '{}' has {} but not {}", wp, module,
                                           a.defined() ? "lora_A" : "lora_B", a.defined() ? "lora_B" : "lora_A"));
    }
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) != out.spec.rank || b.size(1) != out.spec.rank) {
      throw std::runtime_error(fmt::format("{}: '{}': lora_A {} and lora_B {} do not have the config's rank r = {}", wp,
                                           module, fmt::join(a.sizes(), "x"), fmt::join(b.sizes(), "x"), out.spec.rank));
    }
  }
  return out;
}

namespace {

void check_fits(const AdapterFiles& files, const std::string& module, const torch::Tensor& w) {
  const auto& [a, b] = files.adapters.at(module);
  if (w.dim() != 2 || a.size(1) != w.size(1) || b.size(0) != w.size(0)) {
    throw std::runtime_error(fmt::format("{}: '{}': lora_A {} and lora_B {} do not fit the weight {}", files.weights_path,
                                         module, fmt::join(a.sizes(), "x"), fmt::join(b.sizes(), "x"),
                                         fmt::join(w.sizes(), "x")));
  }
}

}  // namespace

torch::Tensor merged_weight(const torch::Tensor& w, const AdapterFiles& files, const std::string& module) {
  check_fits(files, module, w);
  const auto& [a, b] = files.adapters.at(module);
  const auto wide = at::promote_types(w.scalar_type(), torch::kFloat32);
  return (w.to(wide) + at::matmul(b.to(wide), a.to(wide)) * files.scaling).to(w.scalar_type());
}

LoadedAdapter load_lora_adapter(torch::nn::Module& model, const std::string& dir) {
  const AdapterFiles files = read_lora_adapter(dir);
  const auto& wp = files.weights_path;
  LoadedAdapter out;
  out.spec = files.spec;
  auto params = model.named_parameters();
  for (const auto& [module, pair] : files.adapters) {
    if (!params.find(module + ".weight")) throw std::runtime_error(fmt::format("{}: the model has no module '{}'", wp, module));
  }
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules("", false)) {  // in module order
    const std::string& module = item.key();
    if (!files.adapters.count(module)) continue;
    const auto& pair = files.adapters.at(module);
    const auto* w = params.find(module + ".weight");
    check_fits(files, module, *w);
    try {
      add_lora_adapter(model, module, files.spec.rank, files.scaling, files.spec.dropout);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(fmt::format("{}: {}", wp, e.what()));
    }
    auto adapted = model.named_parameters();
    adapted[module + ".lora_A.weight"].copy_(pair.first);
    adapted[module + ".lora_B.weight"].copy_(pair.second);
    out.modules.push_back(module);
  }
  for (const auto& [name, t] : files.full) {
    auto* p = params.find(name);
    if (!p) throw std::runtime_error(fmt::format("{}: '{}' is neither an adapter nor a model parameter", wp, name));
    if (p->sizes() != t.sizes()) {
      throw std::runtime_error(fmt::format("{}: '{}' has shape {}, the model's is {}", wp, name,
                                           fmt::join(t.sizes(), "x"), fmt::join(p->sizes(), "x")));
    }
    p->copy_(t);
    out.saved_params.push_back(name);
  }
  return out;
}

}  // namespace owl2
