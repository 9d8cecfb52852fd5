// PyTorch `torch.save` state dicts (.bin / .pt: a zip of data.pkl plus data/<key> storages) read without
// running pickled code: a restricted unpickler that accepts only what a tensor state dict needs.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "owl2/io/tensor_source.h"

namespace caffe2::serialize {
class PyTorchStreamReader;
}

namespace owl2 {

// One tensor as data.pkl describes it: a strided view of storage `data/<key>`.
struct PickledTensor {
  torch::Dtype dtype = torch::kFloat32;
  std::string storage_key;
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

// Interprets a data.pkl image. Accepted: protocol <= 4 opcodes for ints, floats, strings, bools, None,
// tuples, lists, dicts, memo; the globals collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and torch.<Type>Storage (F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL) inside
// ('storage', type, key, location, numel) persistent ids. The result must be a dict of str -> tensor.
// Anything else (a foreign global such as os.system, an unknown opcode, a malformed stream) throws
// std::runtime_error naming `file` and the problem.
std::map<std::string, PickledTensor> unpickle_state_dict(const std::string& pickle, const std::string& file);

class TorchBinFile final : public TensorSource {
 public:
  explicit TorchBinFile(const std::string& path);  // reads and checks data.pkl and the storage sizes
  ~TorchBinFile() override;

  std::vector<std::string> names() const override;
  bool contains(const std::string& name) const override { return tensors_.count(name) > 0; }
  TensorMeta meta(const std::string& name) const override;
  torch::Tensor get(const std::string& name) const override;  // reads its storage; an owned, compact tensor
  std::string where(const std::string&) const override { return path_; }

 private:
  const PickledTensor& at(const std::string& name) const;
  std::string path_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
  std::map<std::string, PickledTensor> tensors_;
};

}  // namespace owl2
