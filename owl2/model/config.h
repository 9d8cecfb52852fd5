// Typed model configuration: one struct per component; defaults are the released 7B model
// (shared/spec/mplug_owl2.md §1 and §2.3). Plain data: parsing lives in trainers/config.cpp.
#pragma once
#include <cstdint>
#include <string>

namespace owl2 {

// CLIP ViT-L/14 as configured by mPLUG-Owl2 (spec §1.1).
struct VisionConfig {
  int64_t hidden_size = 1024;
  int64_t intermediate_size = 4096;
  int64_t num_hidden_layers = 24;
  int64_t num_attention_heads = 16;
  int64_t num_channels = 3;
  int64_t image_size = 448;
  int64_t patch_size = 14;
  double layer_norm_eps = 1e-6;  // all ViT LayerNorms (CLIP itself uses 1e-5)

  int64_t grid() const { return image_size / patch_size; }
  int64_t num_positions() const { return grid() * grid() + 1; }  // patches + class token
};

// Visual abstractor (spec §1.2).
struct AbstractorConfig {
  int64_t num_learnable_queries = 64;
  int64_t hidden_size = 1024;
  int64_t num_hidden_layers = 6;
  int64_t num_attention_heads = 16;
  int64_t intermediate_size = 2816;
  int64_t encoder_hidden_size = 1024;  // must equal the ViT width
  int64_t grid_size = 32;              // 2-D sin-cos grid of the image keys; image_size / patch_size
  double layer_norm_eps = 1e-6;        // ffn_ln only
  double attn_norm_eps = 1e-5;         // norm1, normk, norm2 (PyTorch's default LayerNorm eps)
};

// LLaMA-2 decoder with the modality-adaptive module (spec §1.3, §1.4).
struct DecoderConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

struct ModelConfig {
  VisionConfig vision;
  AbstractorConfig abstractor;
  DecoderConfig decoder;
  // Standard deviation of the normal random init of every weight, embedding, class token, ViT position and
  // learnable query (the reference's initializer_range, 0.02). Matters only for a model trained from scratch.
  double initializer_range = 0.02;

  // 64 projected queries + vit_eos in the 7B model (spec §1.2).
  int64_t visual_tokens_per_image() const { return abstractor.num_learnable_queries + 1; }
};

// Checks the cross-component facts; throws std::invalid_argument naming the field and the numbers.
void validate(const ModelConfig& cfg);

}  // namespace owl2
