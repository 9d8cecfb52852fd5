// The mPLUG-Owl2 ViT (spec §1.1). Legend: N images, T tokens (class + patches), D width, h heads, K head dim.
#include "owl2/model/vision.h"

#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/nn/functional/upsampling.h>

#include <cmath>

#include "owl2/model/bf16_gemv.h"

namespace owl2 {
namespace nn = torch::nn;

VisionEmbeddingsImpl::VisionEmbeddingsImpl(const VisionConfig& cfg) {
  cls_token = register_parameter("cls_token", torch::empty({1, 1, cfg.hidden_size}));
  patch_embed = register_module("patch_embed", PatchConv(cfg.num_channels, cfg.hidden_size, cfg.patch_size));
  position_embedding = register_parameter("position_embedding", torch::empty({1, cfg.num_positions(), cfg.hidden_size}));
  pre_layernorm = register_module("pre_layernorm", LayerNorm(cfg.hidden_size, cfg.layer_norm_eps));
}

torch::Tensor VisionEmbeddingsImpl::forward(const torch::Tensor& pixels_NCHW) {
  const auto patches_NDgg = patch_embed(pixels_NCHW.to(patch_embed->weight.dtype()));
  const auto patches_NPD = patches_NDgg.flatten(2).transpose(1, 2);  // row-major grid order
  const int64_t N = patches_NPD.size(0), T = patches_NPD.size(1) + 1;
  TORCH_CHECK(T <= position_embedding.size(1), "vision: image gives ", T, " tokens but position_embedding has ",
              position_embedding.size(1), " rows (image_size ", pixels_NCHW.size(-1),
              "); interpolate the positions with interpolate_position_embedding");
  auto x_NTD = torch::cat({cls_token.expand({N, 1, -1}), patches_NPD}, 1);
  x_NTD = x_NTD + position_embedding.slice(1, 0, T);
  return pre_layernorm(x_NTD);
}

VisionAttentionImpl::VisionAttentionImpl(const VisionConfig& cfg) : num_heads(cfg.num_attention_heads) {
  query_key_value = register_module("query_key_value", Linear(cfg.hidden_size, 3 * cfg.hidden_size));
  dense = register_module("dense", Linear(cfg.hidden_size, cfg.hidden_size));
}

torch::Tensor VisionAttentionImpl::forward(const torch::Tensor& x_NTD) {
  const int64_t N = x_NTD.size(0), T = x_NTD.size(1), D = x_NTD.size(2), K = D / num_heads;
  // Row r of query_key_value is head r / 3K, part (r % 3K) / K (0 q, 1 k, 2 v), dim r % K.
  const auto qkv_3NhTK = query_key_value(x_NTD).view({N, T, num_heads, 3, K}).permute({3, 0, 2, 1, 4});
  // Softmax in the activation dtype, no mask (spec §1.1); bf16 inference on CPUs without native bf16 in fp32.
  const auto ctx_NhTK = attention_forward(qkv_3NhTK[0], qkv_3NhTK[1], qkv_3NhTK[2]);
  return dense(ctx_NhTK.transpose(1, 2).reshape({N, T, D}));
}

VisionMlpImpl::VisionMlpImpl(const VisionConfig& cfg) {
  fc1 = register_module("fc1", Linear(cfg.hidden_size, cfg.intermediate_size));
  fc2 = register_module("fc2", Linear(cfg.intermediate_size, cfg.hidden_size));
}

torch::Tensor VisionMlpImpl::forward(const torch::Tensor& x_NTD) {
  const auto h = fc1(x_NTD);
  return fc2(h * torch::sigmoid(1.702 * h));  // quick_gelu
}

VisionLayerImpl::VisionLayerImpl(const VisionConfig& cfg) {
  input_layernorm = register_module("input_layernorm", LayerNorm(cfg.hidden_size, cfg.layer_norm_eps));
  self_attn = register_module("self_attn", VisionAttention(cfg));
  post_attention_layernorm = register_module("post_attention_layernorm", LayerNorm(cfg.hidden_size, cfg.layer_norm_eps));
  mlp = register_module("mlp", VisionMlp(cfg));
}

torch::Tensor VisionLayerImpl::forward(const torch::Tensor& x_NTD) {
  const auto h_NTD = x_NTD + self_attn(input_layernorm(x_NTD));
  return h_NTD + mlp(post_attention_layernorm(h_NTD));
}

VisionEncoderImpl::VisionEncoderImpl(const VisionConfig& cfg) {
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) layers->push_back(VisionLayer(cfg));
}

VisionModelImpl::VisionModelImpl(const VisionConfig& cfg_) : cfg(cfg_) {
  embeddings = register_module("embeddings", VisionEmbeddings(cfg));
  encoder = register_module("encoder", VisionEncoder(cfg));
  post_layernorm = register_module("post_layernorm", LayerNorm(cfg.hidden_size, cfg.layer_norm_eps));
}

torch::Tensor VisionModelImpl::forward(const torch::Tensor& pixels_NCHW) {
  auto x_NTD = embeddings(pixels_NCHW);
  for (int64_t i = 0; const auto& layer : *encoder->layers) {
    auto block = std::dynamic_pointer_cast<VisionLayerImpl>(layer);
    x_NTD = run_block(
        block_runner, i++, [block](const std::vector<torch::Tensor>& in) { return block->forward(in[0]); }, {x_NTD});
  }
  return post_layernorm(x_NTD);  // all tokens, class token included (spec §7.4)
}

torch::Tensor interpolate_position_embedding(const torch::Tensor& pos_1TD, int64_t new_grid) {
  TORCH_CHECK(pos_1TD.dim() == 3 && pos_1TD.size(0) == 1, "position embedding must be [1, 1+g*g, D], got ",
              pos_1TD.sizes());
  const int64_t P = pos_1TD.size(1) - 1, D = pos_1TD.size(2);
  const auto g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(P))));
  TORCH_CHECK(g * g == P, "position embedding has ", P, " patch rows, not a square grid");
  TORCH_CHECK(new_grid > 0, "new grid must be positive, got ", new_grid);
  const auto cls_11D = pos_1TD.slice(1, 0, 1);
  if (new_grid == g) return pos_1TD.clone();
  const auto grid_1Dgg = pos_1TD.slice(1, 1).reshape({1, g, g, D}).permute({0, 3, 1, 2});
  namespace F = torch::nn::functional;
  const auto resized = F::interpolate(grid_1Dgg, F::InterpolateFuncOptions()
                                                     .size(std::vector<int64_t>{new_grid, new_grid})
                                                     .mode(torch::kBicubic)
                                                     .align_corners(false));
  return torch::cat({cls_11D, resized.permute({0, 2, 3, 1}).reshape({1, new_grid * new_grid, D})}, 1);
}

}  // namespace owl2
