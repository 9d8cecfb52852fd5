// The model's parameter-holding layers: registration only, and the same ATen calls as torch::nn's forward (Linear may
// take the bf16 matrix-vector kernel instead, bf16_gemv.h).
#include "owl2/model/layers.h"

#include <ATen/ATen.h>

#include "owl2/model/bf16_gemv.h"

namespace owl2 {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", torch::empty({out_features}));
}

// at::linear, or the bf16 matrix-vector kernel for few rows on CPUs without native bf16 (bf16_gemv.h).
// The adapter's dropout acts on its input only (training mode), as PEFT's.
torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  auto y = linear_forward(x, weight, bias);
  if (!lora_A) return y;
  const auto h = lora_dropout > 0 && is_training() ? at::dropout(x, lora_dropout, /*train=*/true) : x;
  return y + lora_B->forward(lora_A->forward(h)) * lora_scaling;
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::empty({dim}));
  bias = register_parameter("bias", torch::empty({dim}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t dim) {
  weight = register_parameter("weight", torch::empty({num_embeddings, dim}));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) { return at::embedding(weight, ids); }

PatchConvImpl::PatchConvImpl(int64_t in_channels, int64_t out_channels, int64_t patch_) : patch(patch_) {
  weight = register_parameter("weight", torch::empty({out_channels, in_channels, patch, patch}));
}

torch::Tensor PatchConvImpl::forward(const torch::Tensor& x_NCHW) {
  return at::conv2d(x_NCHW, weight, /*bias=*/{}, /*stride=*/{patch, patch});
}

}  // namespace owl2
