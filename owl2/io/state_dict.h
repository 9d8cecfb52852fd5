// One checkpoint code path: open any weights file or directory (safetensors or torch.save .bin, single or
// sharded through an index) as a name -> tensor source, load it into a module name for name, save a module.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "owl2/io/safetensors.h"
#include "owl2/io/tensor_source.h"

namespace owl2 {

// A file (.safetensors, or a torch.save zip: .bin/.pt/.pth) or a directory holding, in this order of
// preference, model.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json or
// pytorch_model.bin. An index's weight_map is checked (every shard exists and holds exactly the names the
// index gives it) when a shard is first opened; shards open lazily.
std::unique_ptr<TensorSource> open_tensor_source(const std::string& path);

// Names resolved through a HF index json (`weight_map`: name -> shard file in the same directory).
class ShardedSource final : public TensorSource {
 public:
  explicit ShardedSource(const std::string& index_path);
  ~ShardedSource() override;
  std::vector<std::string> names() const override;
  bool contains(const std::string& name) const override { return weight_map_.count(name) > 0; }
  TensorMeta meta(const std::string& name) const override;
  torch::Tensor get(const std::string& name) const override;
  torch::Tensor get_unmapped(const std::string& name) const override { return shard_of(name).get_unmapped(name); }
  std::string where(const std::string& name) const override;

 private:
  const TensorSource& shard_of(const std::string& name) const;
  std::string index_path_, dir_;
  std::map<std::string, std::string> weight_map_;
  mutable std::map<std::string, std::unique_ptr<TensorSource>> shards_;
};

// Recomputable buffers the reference checkpoint may or may not carry (spec §2.2).
std::vector<std::string> default_ignorable_keys();  // rotary_emb.inv_freq, q_pos_embed, k_pos_embed

struct LoadOptions {
  // Regexes (std::regex_search) for names that may be missing from the source or present without a
  // module counterpart; matching names are never loaded (the module keeps its recomputed values).
  std::vector<std::string> ignore = default_ignorable_keys();
  bool allow_missing = false;     // report instead of throwing
  bool allow_unexpected = false;  // report instead of throwing
  bool convert_dtype = false;     // a dtype mismatch is an error unless set; then copy_ converts
  // Called with each entry right after it is copied in (it may take the values and free the tensor: ZeRO 3's
  // start-up); load_model_weights also calls it for an interpolated ViT position embedding.
  std::function<void(const std::string& name, torch::Tensor& tensor)> loaded;
  // Module entries this load leaves alone, as if the module had none (adapters added after the model was built).
  std::function<bool(const std::string& name)> skip;
  // Each tensor read into a buffer of its own (TensorSource::get_unmapped), not from a mapping of the file: the
  // resident set then grows by one tensor at a time, not by the file (ZeRO 3's start-up).
  bool unmapped = false;
};

struct LoadReport {
  std::vector<std::string> loaded, missing, unexpected, ignored;
  std::string summary() const;  // "loaded 12 tensors; 1 missing: a.b; ..."
};

// Copies every parameter and buffer of `module` (its named_parameters / named_buffers names) from `source`
// in place, without autograd. All problems are collected first and thrown together (std::runtime_error):
// shape mismatches ("name: checkpoint [a, b] in FILE vs module [c, d]"), dtype mismatches, missing and
// unexpected names. Nothing is copied when it throws.
LoadReport load_state_dict(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options = {});

// The module's parameters and buffers by name (parameters first, then buffers), as views.
NamedTensors module_state(const torch::nn::Module& module);

struct SaveOptions {
  uint64_t max_shard_bytes = 5'000'000'000;  // HF's default "5GB"
  std::optional<torch::Dtype> dtype;         // cast floating-point tensors (bf16 / fp16 / fp32 export)
  std::vector<std::string> exclude;          // regexes of names not to write
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
};

// Writes the module's state as (sharded) safetensors in `dir` (created if missing).
ShardedWriteResult save_state_dict(const torch::nn::Module& module, const std::string& dir,
                                   const SaveOptions& options = {});

// Copies every tensor of `source` (any format open_tensor_source reads) into HF-layout safetensors in `dir`,
// one shard in memory at a time, casting floating-point tensors when `cast` is set.
ShardedWriteResult convert_to_safetensors(const TensorSource& source, const std::string& dir,
                                          uint64_t max_shard_bytes, std::optional<torch::Dtype> cast = std::nullopt,
                                          const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace owl2
