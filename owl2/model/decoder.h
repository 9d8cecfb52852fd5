// The LLaMA-2 decoder with the modality-adaptive module (spec §1.3, §1.4): per-modality copies
// (`multiway.0` text, `multiway.1` image) of both RMSNorms and of k_proj / v_proj; q_proj, o_proj and the MLP shared.
// Shapes: B batch, S sequence, D width, H query heads, G key/value heads, K head dim, M = B*S flattened tokens.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <functional>
#include <memory>
#include <vector>

#include "owl2/model/config.h"
#include "owl2/model/kv_cache.h"
#include "owl2/model/layers.h"

namespace owl2 {

// Which flattened tokens (b * S + s) go to which copy. Built once per forward from the modality tensor
// (one host sync there); layers only use the index tensors, so nothing inside a layer syncs.
struct ModalityRouting {
  torch::Tensor text_idx_M;   // int64 indices of modality-0 tokens
  torch::Tensor image_idx_M;  // int64 indices of modality-1 tokens
  int64_t num_text = 0, num_image = 0;

  static ModalityRouting from_modality(const torch::Tensor& modality_BS);
};

// LLaMA RMSNorm: x * rsqrt(mean(x^2) + eps) computed in at least float32, cast back, times weight.
// The weight is registered uninitialised; init_weights sets it to ones.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// Two copies of a per-token module under `multiway.{0,1}`; each copy runs only on its own tokens.
// Module is RMSNorm or Linear.
class MultiwayImpl : public torch::nn::Module {
 public:
  explicit MultiwayImpl(std::function<std::shared_ptr<torch::nn::Module>()> make);
  torch::Tensor forward(const torch::Tensor& x_BSD, const ModalityRouting& routing);
  torch::Tensor apply(int64_t way, const torch::Tensor& x) const;

  torch::nn::ModuleList multiway{nullptr};
};
TORCH_MODULE(Multiway);

// Rotary tables for the given positions, computed in float32 (as the reference), then cast to `dtype`.
struct Rotary {
  torch::Tensor cos_BSK, sin_BSK;
};
Rotary rotary_tables(const torch::Tensor& position_ids_BS, int64_t head_dim, double theta, torch::ScalarType dtype);
// HF rotate-half RoPE on x [B,h,S,K].
torch::Tensor apply_rotary(const torch::Tensor& x_BhSK, const Rotary& rope);

// Packed rows (sequence packing): where each sample of each row starts. starts[b] ascends from 0; span k of
// row b is [starts[b][k], starts[b][k+1]) and the last one ends at the row's length (trailing padding is a span
// of its own). Attention over spans is causal within each span and never crosses one: what a block-diagonal
// causal mask gives, at the cost of each span's own length.
struct SegmentSpans {
  std::vector<std::vector<int64_t>> starts;
};

// Causal attention with an explicit boolean mask [B,1,S,S'] (true = may attend) and a softmax in at
// least float32 (spec §1.3). q [B,H,S,K], k / v [B,G,S',K]. The one place attention is computed, so a
// KV cache only has to concatenate past k / v before calling it. An undefined mask means SDPA's is_causal
// with no mask (S == S'): exact for a batch without padding and for the real positions of right-padded rows,
// and the only form the CUDA flash kernel accepts (docs/model.md, "Attention kernels").
// With `spans` (and no mask) each span of each row attends causally to itself only, one SDPA call per span.
// On CUDA the spans go to varlen_causal_attention instead: one kernel launch for all spans of all rows.
torch::Tensor decoder_attention(const torch::Tensor& q_BHSK, const torch::Tensor& k_BGSK, const torch::Tensor& v_BGSK,
                                const torch::Tensor& mask_B1SS, const SegmentSpans* spans = nullptr);

// ATen's variable-length fused attention kernels (CUDA only): flash attention (bf16 / fp16, head size <= 256 and a
// multiple of 8) or memory-efficient attention (also float32), both differentiable.
enum class VarlenKernel { kAuto, kFlash, kMemoryEfficient, kNone };
// The kernel kAuto picks for queries like `q_THK` (kNone: not on CUDA, or a dtype neither takes).
VarlenKernel varlen_kernel_for(const torch::Tensor& q_THK);
// Causal attention within each span of the token sequence: q, k, v [T,H,K] hold the spans one after the other
// (`lengths`, summing to T); each token attends to the tokens of its own span up to itself. Scale 1/sqrt(K), no
// dropout. Throws c10::Error naming the dtype and device where no kernel applies (on the CPU: use the per-span SDPA
// calls of decoder_attention).
torch::Tensor varlen_causal_attention(const torch::Tensor& q_THK, const torch::Tensor& k_THK, const torch::Tensor& v_THK,
                                      const std::vector<int64_t>& lengths, VarlenKernel kernel = VarlenKernel::kAuto);

class DecoderAttentionImpl : public torch::nn::Module {
 public:
  explicit DecoderAttentionImpl(const DecoderConfig& cfg);
  // x: normalized hidden states; returns o_proj(attention) [B,S,D]. With `kv`, the new post-RoPE keys and
  // values are appended to that layer's cache and the queries attend over the whole cache (mask [B,1,S,L+S]).
  torch::Tensor forward(const torch::Tensor& x_BSD, const Rotary& rope, const torch::Tensor& mask_B1SS,
                        const ModalityRouting& routing, LayerKV* kv = nullptr, const SegmentSpans* spans = nullptr);

  int64_t num_heads, num_kv_heads, head_dim;
  Linear q_proj{nullptr}, o_proj{nullptr};
  Multiway k_proj{nullptr}, v_proj{nullptr};
};
TORCH_MODULE(DecoderAttention);

class DecoderMlpImpl : public torch::nn::Module {
 public:
  explicit DecoderMlpImpl(const DecoderConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x_BSD);  // down(silu(gate x) * up x)
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(DecoderMlp);

// `model.layers.N`: x = x + attn(norm_m x); x = x + mlp(post_norm_m x).
class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const DecoderConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x_BSD, const Rotary& rope, const torch::Tensor& mask_B1SS,
                        const ModalityRouting& routing, LayerKV* kv = nullptr, const SegmentSpans* spans = nullptr);

  Multiway input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  DecoderAttention self_attn{nullptr};
  DecoderMlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The boolean attention mask [B,1,S,S] for a [B,S] validity mask: causal and key-valid; a query with no
// valid key at or before it (leading padding) attends to itself only, so no row is empty.
torch::Tensor causal_padding_mask(const torch::Tensor& valid_BS);

// The same mask confined to each sample of a packed row: a query attends to keys of its own segment only
// (segment_ids_BS [B,S], equal ids = same sample). Every query keeps at least its own position.
torch::Tensor causal_segment_mask(const torch::Tensor& valid_BS, const torch::Tensor& segment_ids_BS);

// True when every row of valid_BS [B,S] (bool or int, nonzero = real) is real tokens followed only by padding:
// rows without padding and rows of padding only count. Such a batch may drop the explicit mask for is_causal
// (each real query sees only earlier positions, all real). Reads valid_BS on the host: one sync if it lives on
// a device, none for a host tensor (splice_inputs passes its host copy).
bool is_right_padded(const torch::Tensor& valid_BS);

}  // namespace owl2
