// LoRA adapters on disk in Hugging Face PEFT's layout, so that `PeftModel.from_pretrained` loads what owl2
// writes and owl2 loads what PEFT writes: DIR/adapter_config.json (peft_type LORA, r, lora_alpha, lora_dropout,
// use_rslora, target_modules as one regular expression over module names, modules_to_save as full module names)
// and DIR/adapter_model.safetensors with the keys `base_model.model.<module>.lora_A.weight` /
// `.lora_B.weight` and `base_model.model.<module>.<parameter>` for the modules to save. docs/lora.md.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "owl2/io/safetensors.h"
#include "owl2/model/lora.h"

namespace owl2 {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftKeyPrefix = "base_model.model.";

// Writes the adapter files into DIR (created if needed; each file written atomically). `state` is a model state
// by parameter name (module_state, or a trainer's with float32 masters); its adapter entries and the parameters of
// `saved_modules` are written in float32. `base_model` is recorded as base_model_name_or_path. Returns the number
// of tensors written; throws std::invalid_argument when the state holds no adapter.
size_t save_lora_adapter(const std::string& dir, const NamedTensors& state, const LoraSpec& spec,
                         const std::vector<std::string>& saved_modules, const std::string& base_model = "");

// An adapter directory as read, not yet applied to a model.
struct AdapterFiles {
  LoraSpec spec;  // rank, alpha, dropout, rslora, modules_to_save from the config (targets: not read)
  double scaling = 0;
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> adapters;  // module -> (A [r,in], B [out,r])
  std::map<std::string, torch::Tensor> full;                                 // saved modules' parameters by name
  std::string weights_path;
};

// Reads DIR's two files. Throws std::runtime_error naming the file and the key or field for: a missing file, a
// config that is not LoRA or uses what owl2 does not implement (DoRA, fan_in_fan_out, trained biases, per-module
// rank or alpha patterns), a key without the PEFT prefix, an A without its B, ranks that disagree with r.
AdapterFiles read_lora_adapter(const std::string& dir);

// The merged weight of `module`: W + scaling * B A in at least float32, returned in W's dtype.
torch::Tensor merged_weight(const torch::Tensor& w, const AdapterFiles& files, const std::string& module);

// What load_lora_adapter found.
struct LoadedAdapter {
  LoraSpec spec;                           // rank, alpha, dropout, rslora, modules_to_save from the config
  std::vector<std::string> modules;        // adapted modules
  std::vector<std::string> saved_params;   // full parameters replaced from the file (modules to save)
};

// Adds the adapters of DIR to `model` (each on its Linear's device and dtype) and copies the saved modules'
// parameters in. Throws what read_lora_adapter throws, and std::runtime_error naming the file and key for a
// module the model lacks, one that is not a Linear or already has an adapter, and shapes that do not fit.
LoadedAdapter load_lora_adapter(torch::nn::Module& model, const std::string& dir);

// True when DIR holds adapter_config.json.
bool is_lora_adapter_dir(const std::string& dir);

}  // namespace owl2
