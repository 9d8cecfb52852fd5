// The parameter-holding layers of the model: they only register their tensors (uninitialised, no random draw)
// and compute exactly what their torch::nn namesakes compute. Values come from init_weights (owl2/model/init.h)
// or from a checkpoint, once. Registered names (`weight`, `bias`) are torch::nn's, so checkpoint keys match.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>

namespace owl2 {

// y = x W^T + b: weight [out,in], bias [out] (undefined and unregistered when `bias` is false).
// With a LoRA adapter (owl2/model/lora.h; submodules `lora_A` [r,in] and `lora_B` [out,r], PEFT's names):
// y = x W^T + b + lora_B(lora_A(dropout(x))) * lora_scaling.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight, bias;
  std::shared_ptr<LinearImpl> lora_A, lora_B;  // null without an adapter
  double lora_scaling = 0.0, lora_dropout = 0.0;
};
TORCH_MODULE(Linear);

// LayerNorm over the last dimension with an affine weight and bias [dim].
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight, bias;
  double eps;
};
TORCH_MODULE(LayerNorm);

// Row lookup in weight [num_embeddings, dim] (no padding index, no max norm).
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t dim);
  torch::Tensor forward(const torch::Tensor& ids);

  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

// Non-overlapping patch convolution without bias (kernel = stride = patch): weight [out, in, patch, patch].
class PatchConvImpl : public torch::nn::Module {
 public:
  PatchConvImpl(int64_t in_channels, int64_t out_channels, int64_t patch);
  torch::Tensor forward(const torch::Tensor& x_NCHW);

  int64_t patch;
  torch::Tensor weight;
};
TORCH_MODULE(PatchConv);

}  // namespace owl2
