// Test-only reader of the golden safetensors files written by scripts/make_golden.py (F64 / F32 / I64, no
// validation beyond what the tests need), plus the tiny model config those files were made with.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

#include "owl2/model/config.h"
#include "owl2/model/model.h"
#include "tests/helpers.h"

namespace owl2::test {

inline std::map<std::string, torch::Tensor> read_golden(const std::string& rel_path) {
  const auto path = source_path(rel_path);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open golden file " + path + " (run scripts/make_golden.py)");
  uint64_t header_len = 0;
  f.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, ' ');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  const auto j = nlohmann::json::parse(header);
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, info] : j.items()) {
    if (name == "__metadata__") continue;
    const auto dtype_s = info.at("dtype").get<std::string>();
    torch::ScalarType dtype = dtype_s == "F64"   ? torch::kFloat64
                              : dtype_s == "F32" ? torch::kFloat32
                              : dtype_s == "I64" ? torch::kInt64
                                                 : throw std::runtime_error(path + ": unsupported dtype " + dtype_s);
    const auto shape = info.at("shape").get<std::vector<int64_t>>();
    const auto begin = info.at("data_offsets")[0].get<size_t>();
    out[name] = torch::from_blob(data.data() + begin, shape, dtype).clone();
  }
  return out;
}

// Must equal TINY in scripts/make_golden.py.
inline ModelConfig tiny_golden_config() {
  ModelConfig c;
  c.vision = {16, 32, 2, 2, 3, 12, 4, 1e-6};
  c.abstractor = {4, 16, 2, 2, 24, 16, 3, 1e-6, 1e-5};
  c.decoder = {48, 32, 48, 2, 4, 4, 64, 1e-6, 10000.0};
  return c;
}

// Copies every "w.<name>" tensor into the module's parameter <prefix-stripped name>; throws on a missing
// or extra name or a shape mismatch, so a naming mistake fails the test.
inline void load_golden_weights(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& golden,
                                const std::string& prefix = "") {
  torch::NoGradGuard no_grad;
  auto params = module.named_parameters();
  size_t used = 0;
  for (const auto& [key, t] : golden) {
    if (key.rfind("w." + prefix, 0) != 0) continue;
    const auto name = key.substr(2 + prefix.size());
    auto* p = params.find(name);
    if (!p) throw std::runtime_error("golden weight " + name + " has no parameter");
    if (p->sizes() != t.sizes()) throw std::runtime_error("golden weight " + name + ": shape mismatch");
    p->copy_(t);
    ++used;
  }
  if (used != params.size()) {
    throw std::runtime_error("golden file covers " + std::to_string(used) + " of " + std::to_string(params.size()) +
                             " parameters");
  }
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// The tiny golden model in float64 with the weights of tests/golden/model_tiny.safetensors.
inline MPLUGOwl2ForCausalLM tiny_golden_model() {
  MPLUGOwl2ForCausalLM model(tiny_golden_config());
  model->to(torch::kFloat64);
  load_golden_weights(*model, read_golden("tests/golden/model_tiny.safetensors"));
  return model;
}

}  // namespace owl2::test
