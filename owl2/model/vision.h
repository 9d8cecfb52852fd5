// The CLIP ViT-L/14 vision encoder of mPLUG-Owl2 (spec §1.1): patch conv, class token, learned positions,
// pre-LN, pre-norm blocks with the per-head interleaved fused QKV, quick-GELU MLP, post-LN on all tokens.
// Shapes: N images, C channels, H/W pixels, P = grid*grid patches, T = P + 1 tokens, D width, h heads, K head dim.
#pragma once
#include "owl2/model/block_runner.h"
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "owl2/model/config.h"
#include "owl2/model/layers.h"

namespace owl2 {

// Class token, patch embedding (no bias), learned positions and pre_layernorm (CLIP ln_pre).
class VisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit VisionEmbeddingsImpl(const VisionConfig& cfg);
  torch::Tensor forward(const torch::Tensor& pixels_NCHW);  // -> x_NTD (after pre_layernorm)

  torch::Tensor cls_token;           // [1,1,D]
  torch::Tensor position_embedding;  // [1,T,D]
  PatchConv patch_embed{nullptr};
  LayerNorm pre_layernorm{nullptr};
};
TORCH_MODULE(VisionEmbeddings);

// Self-attention with the fused query_key_value whose 3D output rows are laid out per head as
// [h][q|k|v][K] (Megatron style), not as Q|K|V blocks (spec §1.1, §7.1).
class VisionAttentionImpl : public torch::nn::Module {
 public:
  explicit VisionAttentionImpl(const VisionConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x_NTD);

  int64_t num_heads;
  Linear query_key_value{nullptr}, dense{nullptr};
};
TORCH_MODULE(VisionAttention);

// fc1 -> quick-GELU (x * sigmoid(1.702 x)) -> fc2.
class VisionMlpImpl : public torch::nn::Module {
 public:
  explicit VisionMlpImpl(const VisionConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x_NTD);

  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(VisionMlp);

// Pre-norm block: x = x + attn(LN1 x); x = x + mlp(LN2 x).
class VisionLayerImpl : public torch::nn::Module {
 public:
  explicit VisionLayerImpl(const VisionConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x_NTD);

  LayerNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  VisionAttention self_attn{nullptr};
  VisionMlp mlp{nullptr};
};
TORCH_MODULE(VisionLayer);

// Holds `layers` so that parameter names read `encoder.layers.L....` as in the checkpoint.
class VisionEncoderImpl : public torch::nn::Module {
 public:
  explicit VisionEncoderImpl(const VisionConfig& cfg);
  torch::nn::ModuleList layers{nullptr};  // of VisionLayer
};
TORCH_MODULE(VisionEncoder);

// `model.vision_model`: pixels [N,C,H,W] -> post-LN hidden states [N,T,D] (class token first).
class VisionModelImpl : public torch::nn::Module {
 public:
  explicit VisionModelImpl(const VisionConfig& cfg);
  torch::Tensor forward(const torch::Tensor& pixels_NCHW);

  VisionConfig cfg;
  VisionEmbeddings embeddings{nullptr};
  VisionEncoder encoder{nullptr};
  LayerNorm post_layernorm{nullptr};
  BlockRunner block_runner;  // empty: blocks run directly
};
TORCH_MODULE(VisionModel);

// Resamples learned positions [1, 1+g*g, D] to a new grid [1, 1+g'*g', D]: bicubic (align_corners false)
// over the patch grid, class row kept. Used to hand a ViT over between stages of different image size.
torch::Tensor interpolate_position_embedding(const torch::Tensor& pos_1TD, int64_t new_grid);

}  // namespace owl2
