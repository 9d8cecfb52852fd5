// A read-only name -> tensor store (one file, a sharded checkpoint, or an in-memory map): what the
// state-dict loader reads from, whatever the format on disk.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace owl2 {

struct TensorMeta {
  torch::Dtype dtype = torch::kFloat32;
  std::vector<int64_t> shape;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual std::vector<std::string> names() const = 0;  // sorted
  virtual bool contains(const std::string& name) const = 0;
  virtual TensorMeta meta(const std::string& name) const = 0;    // without reading the data
  virtual torch::Tensor get(const std::string& name) const = 0;  // CPU; may view a mapping (clone to own)
  // The same values in a tensor of its own, read without touching a mapping (a mapped file's pages read in count
  // in the process's resident set until it unmaps the file); by default get().
  virtual torch::Tensor get_unmapped(const std::string& name) const { return get(name); }
  virtual std::string where(const std::string& name) const = 0;  // the file holding it, for messages
};

// Tensors held in memory (tests, and sources assembled by hand).
class MapSource final : public TensorSource {
 public:
  explicit MapSource(std::map<std::string, torch::Tensor> tensors, std::string label = "<memory>")
      : tensors_(std::move(tensors)), label_(std::move(label)) {}
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
  }
  bool contains(const std::string& name) const override { return tensors_.count(name) > 0; }
  TensorMeta meta(const std::string& name) const override {
    const auto& t = at(name);
    return {t.scalar_type(), t.sizes().vec()};
  }
  torch::Tensor get(const std::string& name) const override { return at(name); }
  std::string where(const std::string&) const override { return label_; }

 private:
  const torch::Tensor& at(const std::string& name) const {
    auto it = tensors_.find(name);
    TORCH_CHECK(it != tensors_.end(), label_, ": no tensor named '", name, "'");
    return it->second;
  }
  std::map<std::string, torch::Tensor> tensors_;
  std::string label_;
};

}  // namespace owl2
