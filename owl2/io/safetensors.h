// safetensors files (https://github.com/huggingface/safetensors format; libtorch_notes §3e): a validating,
// memory-mapped reader whose tensors view the mapping, a durable writer, and sharding through
// model.safetensors.index.json.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "owl2/io/fileio.h"
#include "owl2/io/tensor_source.h"

namespace owl2 {

constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;  // the reference implementation's cap

// "F32" <-> torch::kFloat32 for F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL; unknown names throw.
torch::Dtype safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(torch::Dtype dtype);

struct SafetensorsEntry {
  torch::Dtype dtype = torch::kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the data buffer, end exclusive
};

struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__"
  uint64_t data_start = 0;                      // 8 + header length
};

// Parses and validates a whole file image: header length and cap, JSON (an object, no duplicate keys),
// dtypes, shapes against byte ranges, ranges inside the file, no overlaps, no holes, metadata strings.
// Throws std::runtime_error("<file>: <problem>"); never reads outside [bytes, bytes + size).
SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& file);

// One validated file, mapped. get() returns a CPU tensor viewing the mapping (copy-on-write) that keeps
// the mapping alive; get_copy() returns an owned clone.
class SafetensorsFile final : public TensorSource {
 public:
  explicit SafetensorsFile(const std::string& path);

  std::vector<std::string> names() const override;
  bool contains(const std::string& name) const override { return header_.tensors.count(name) > 0; }
  TensorMeta meta(const std::string& name) const override;
  torch::Tensor get(const std::string& name) const override;
  torch::Tensor get_unmapped(const std::string& name) const override { return get_copy(name); }
  std::string where(const std::string&) const override { return map_->path(); }

  // An owned tensor read with pread (no mapped pages are touched, so RSS grows by the tensor only).
  torch::Tensor get_copy(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const std::string& path() const { return map_->path(); }

 private:
  std::shared_ptr<MappedFile> map_;
  SafetensorsHeader header_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes one file atomically (temp file, fsync, rename, fsync dir). Names must be unique; tensors may be
// on any device and non-contiguous (each is made contiguous on the CPU in turn). The data is laid out by
// element size (largest first) then name, so every tensor is aligned for its dtype when mapped. Returns
// the CRC32 of the file, or 0 when `checksum` is false (the sharded writers: nothing reads a CRC of an HF
// export, and computing it costs a core at about 1 GB/s). `cast` converts floating-point tensors while
// writing, one at a time.
uint32_t save_safetensors(const std::string& path, const NamedTensors& tensors,
                          const std::map<std::string, std::string>& metadata = {},
                          std::optional<torch::Dtype> cast = std::nullopt, bool checksum = true);

struct ShardedWriteResult {
  std::vector<std::string> files;  // file names written, relative to the directory
  uint64_t total_bytes = 0;        // tensor bytes
};

// Writes `dir/model.safetensors` when everything fits in one shard, otherwise
// `dir/model-0000i-of-0000n.safetensors` plus `dir/model.safetensors.index.json` (HF layout: metadata.total_size
// and weight_map). Shards are filled in name order up to max_shard_bytes (a tensor larger than that gets
// its own shard). `stem` replaces "model" in the file names.
ShardedWriteResult save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                            uint64_t max_shard_bytes,
                                            const std::map<std::string, std::string>& metadata = {},
                                            const std::string& stem = "model",
                                            std::optional<torch::Dtype> cast = std::nullopt);

// Splits items of the given byte sizes, in order, into shards of at most max_shard_bytes (an item larger
// than that gets a shard of its own). Returns item indices per shard.
std::vector<std::vector<size_t>> plan_shards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes);
// "model-00002-of-00005.safetensors"
std::string shard_file_name(const std::string& stem, size_t index, size_t count);
// Writes `dir/<stem>.safetensors.index.json` atomically: {"metadata": {"total_size"}, "weight_map"}.
void write_safetensors_index(const std::string& dir, const std::string& stem,
                             const std::map<std::string, std::string>& weight_map, uint64_t total_bytes);
// "5GB" (10^9), "500MB", "64KiB" (2^10), "123" bytes; throws std::invalid_argument otherwise.
uint64_t parse_byte_size(const std::string& text);

}  // namespace owl2
