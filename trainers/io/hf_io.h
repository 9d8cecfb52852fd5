// Whole-model Hugging Face interchange: import a reference-layout checkpoint directory (spec §2) into an owl2
// model directory, export one back with the reference config, processor and tokenizer files, and assemble the
// stage-1 starting point from an HF CLIP vision tower and an HF LLaMA (paper §3.4, spec §4.1).
// All three stream through convert_to_safetensors: one output shard in memory at a time, never the whole model.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <torch/types.h>

#include "owl2/io/dtype_names.h"  // parse_dtype_flag for the options' dtype
#include "owl2/io/tensor_source.h"
#include "trainers/config.h"

namespace owl2 {

// How a checkpoint's names and shapes compare with the model a config builds (parameter_shapes).
struct KeyReport {
  std::vector<std::string> matched;     // every expected name, present with its shape
  std::vector<std::string> ignored;     // recomputable buffers (rotary_emb.inv_freq, q_pos_embed, k_pos_embed)
  std::vector<std::string> unexpected;  // other names without a model counterpart (dropped when allowed)
  std::string summary() const;          // "42 tensors matched; 3 recomputable buffers ignored; ..."
};

// Checks every expected name, shape and (floating-point) dtype. Collects all problems and throws one
// std::runtime_error listing them (missing keys, "name: checkpoint [a, b] in FILE vs config [c, d]",
// unexpected keys unless allowed). `label` names the checkpoint in the message.
KeyReport check_model_keys(const TensorSource& source, const ModelConfig& cfg, const std::string& label,
                           bool allow_unexpected = false);

struct ImportOptions {
  std::string config;                         // reference config.json or owl2 YAML; empty: HF_DIR/config.json
  std::optional<torch::Dtype> dtype;          // cast floating-point tensors; unset: keep the checkpoint's
  uint64_t max_shard_bytes = 5'000'000'000;
  bool allow_unexpected = false;              // drop unexpected names instead of failing
};

// HF_DIR (.bin shards + pytorch_model.bin.index.json, or safetensors) -> OUT_DIR/config.yaml + model.safetensors
// [+ index], which load_model_dir opens. HF_DIR/tokenizer.model (else the config's data.tokenizer, if set) is
// copied into OUT_DIR and recorded relatively (data.tokenizer: tokenizer.model).
KeyReport import_hf(const std::string& hf_dir, const std::string& out_dir, const ImportOptions& options = {});

struct ExportOptions {
  std::optional<torch::Dtype> dtype;          // cast floating-point tensors; unset: keep the stored dtype
  uint64_t max_shard_bytes = 5'000'000'000;
  std::string tokenizer;                      // SentencePiece model; empty: the model folder's (model_dir.h)
  bool allow_external_tokenizer = false;      // the folder's data.tokenizer may lie outside it
  // A LoRA adapter directory (PEFT layout, owl2/io/lora_files.h) merged into the weights as they are written:
  // W + scaling * B A per adapted Linear, the saved modules' parameters replaced; one tensor at a time.
  std::string merge_lora;
};

// Model directory -> HF_DIR with config.json, generation_config.json, preprocessor_config.json, tokenizer.model,
// tokenizer_config.json, special_tokens_map.json and safetensors shards (+ model.safetensors.index.json) named
// as the reference. The abstractor's q_pos_embed / k_pos_embed buffers are written too (the reference
// registers them as persistent buffers). Returns the number of tensors written.
size_t export_hf(const std::string& model_dir, const std::string& hf_dir, const ExportOptions& options = {});

struct ConsolidateOptions {
  std::optional<torch::Dtype> dtype;          // cast floating-point tensors; unset: keep the stored dtype
  uint64_t max_shard_bytes = 5'000'000'000;
  std::string tokenizer;                      // SentencePiece model; empty: the data.tokenizer of the saved config
  // A LoRA run's checkpoint: write its adapter to OUT/adapter (PEFT's layout, with these modules to save) and the
  // weights with the adapter merged in (read back from those files, one tensor at a time), the config without
  // lora: what a LoRA run's final/ holds. Ignored for other checkpoints.
  bool merge_lora = false;
  std::vector<std::string> lora_saved_modules;
};

// A training checkpoint (checkpoints/step-N/: state.json, model.safetensors, ZeRO shards) -> an owl2 model
// directory (config.yaml, tokenizer.model, model safetensors [+ index]) that generate, eval and export read.
// Under ZeRO the trainable weights are put together from the ranks' shards (any world size), one tensor at a
// time: memory stays near the largest tensor plus one output shard. Weights of a LoRA run stay unmerged, with
// the config's lora section. Returns the number of tensors written. Throws naming the file on a missing or
// inconsistent part.
size_t consolidate_checkpoint(const std::string& checkpoint_dir, const std::string& out_dir,
                              const ConsolidateOptions& options = {});

// The adapter of a LoRA run's training checkpoint (its adapter tensors and the parameters of `saved_modules`,
// from model.safetensors or the ZeRO shards of any world size) written to ADAPTER_DIR in PEFT's layout. Reads
// nothing else, so a rank writes a ZeRO 3 run's adapter without gathering the model. Throws naming the checkpoint
// when it is not a LoRA run's.
size_t write_checkpoint_adapter(const std::string& checkpoint_dir, const std::string& adapter_dir,
                                const std::vector<std::string>& saved_modules);

struct InitOptions {
  std::string vision_dir;                     // HF CLIPVisionModel (or CLIPModel) checkpoint
  std::string llm_dir;                        // HF LlamaForCausalLM checkpoint
  std::string config;                         // owl2 YAML or reference config.json: the model to build
  std::string out_dir;
  int64_t seed = 0;                           // the abstractor's random init
  torch::Dtype dtype = torch::kFloat32;       // stored dtype of every tensor
  uint64_t max_shard_bytes = 5'000'000'000;
};

// The stage-1 starting point: ViT from CLIP (q/k/v fused into the per-head interleaved query_key_value, spec
// §1.1; positions interpolated bicubically when the grids differ), decoder from LLaMA with both multiway copies
// of the norms and of k_proj / v_proj equal to the LLaMA tensor, abstractor random (the model's documented init
// after torch::manual_seed(seed)). Every name and shape is checked before anything is written; an error names
// the source key, its shape and the shape the config needs. Returns a summary with notes (e.g. eps differences).
std::string init_from_pretrained(const InitOptions& options);

// The reference config.json (spec §2.3) for `cfg`; torch_dtype is "float32", "bfloat16" or "float16".
nlohmann::json hf_config_json(const RunConfig& cfg, const std::string& torch_dtype);
// CLIPImageProcessor settings for the model's image size (spec §3.1).
nlohmann::json hf_preprocessor_config_json(const VisionConfig& vision);

}  // namespace owl2
