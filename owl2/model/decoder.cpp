// The modality-adaptive LLaMA decoder layer (spec §1.3, §1.4, §9 step 5).
// Legend: B batch, S sequence, D width, H query heads, G key/value heads, K head dim, M = B*S tokens.
#include "owl2/model/decoder.h"

#include <ATen/ops/_efficient_attention_forward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/scaled_dot_product_attention.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <iostream>
#include <vector>

#include <tuple>

#include "owl2/model/bf16_gemv.h"

namespace owl2 {
namespace nn = torch::nn;

namespace {
// Softmax / norm precision of the reference: float32 for reduced-precision inputs, the input dtype otherwise.
torch::ScalarType at_least_float(torch::ScalarType t) { return torch::promote_types(t, torch::kFloat32); }
}  // namespace

ModalityRouting ModalityRouting::from_modality(const torch::Tensor& modality_BS) {
  const auto m_M = modality_BS.reshape({-1});
  ModalityRouting r;
  r.text_idx_M = torch::nonzero(m_M == 0).reshape({-1});  // host sync: once per forward, outside the layers
  r.image_idx_M = torch::nonzero(m_M != 0).reshape({-1});
  r.num_text = r.text_idx_M.size(0);
  r.num_image = r.image_idx_M.size(0);
  return r;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::empty({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto x32 = x.to(at_least_float(x.scalar_type()));
  const auto normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

MultiwayImpl::MultiwayImpl(std::function<std::shared_ptr<nn::Module>()> make) {
  multiway = register_module("multiway", nn::ModuleList());
  multiway->push_back(make());  // 0: text
  multiway->push_back(make());  // 1: image
}

torch::Tensor MultiwayImpl::apply(int64_t way, const torch::Tensor& x) const {
  const auto& m = multiway->ptr(way);
  if (auto* lin = m->as<Linear>()) return lin->forward(x);
  return m->as<RMSNorm>()->forward(x);
}

torch::Tensor MultiwayImpl::forward(const torch::Tensor& x_BSD, const ModalityRouting& routing) {
  if (routing.num_image == 0) return apply(0, x_BSD);
  if (routing.num_text == 0) return apply(1, x_BSD);
  const int64_t B = x_BSD.size(0), S = x_BSD.size(1);
  const auto x_MD = x_BSD.reshape({B * S, x_BSD.size(2)});
  const auto text_out = apply(0, x_MD.index_select(0, routing.text_idx_M));
  const auto image_out = apply(1, x_MD.index_select(0, routing.image_idx_M));
  auto out_MO = torch::zeros({B * S, text_out.size(1)}, text_out.options());
  out_MO = out_MO.index_copy(0, routing.text_idx_M, text_out).index_copy(0, routing.image_idx_M, image_out);
  return out_MO.view({B, S, -1});
}

Rotary rotary_tables(const torch::Tensor& position_ids_BS, int64_t head_dim, double theta, torch::ScalarType dtype) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(position_ids_BS.device());
  const auto inv_freq = 1.0f / torch::pow(static_cast<float>(theta), torch::arange(0, head_dim, 2, f32) / head_dim);
  const auto freqs_BSk = position_ids_BS.to(torch::kFloat32).unsqueeze(-1) * inv_freq;
  const auto emb_BSK = torch::cat({freqs_BSk, freqs_BSk}, -1);
  return {emb_BSK.cos().to(dtype), emb_BSK.sin().to(dtype)};
}

torch::Tensor apply_rotary(const torch::Tensor& x_BhSK, const Rotary& rope) {
  const int64_t half = x_BhSK.size(-1) / 2;
  const auto rotated = torch::cat({-x_BhSK.slice(-1, half), x_BhSK.slice(-1, 0, half)}, -1);
  return x_BhSK * rope.cos_BSK.unsqueeze(1) + rotated * rope.sin_BSK.unsqueeze(1);
}

VarlenKernel varlen_kernel_for(const torch::Tensor& q_THK) {
  if (!q_THK.is_cuda()) return VarlenKernel::kNone;
  const int64_t K = q_THK.size(-1);
  const auto dtype = q_THK.scalar_type();
  // Flash: half precision, head sizes up to 256 in multiples of 8 (7B: 128). Memory-efficient: also float32.
  if ((dtype == torch::kBFloat16 || dtype == torch::kHalf) && K <= 256 && K % 8 == 0) return VarlenKernel::kFlash;
  if (dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kHalf) return VarlenKernel::kMemoryEfficient;
  return VarlenKernel::kNone;
}

torch::Tensor varlen_causal_attention(const torch::Tensor& q_THK, const torch::Tensor& k_THK, const torch::Tensor& v_THK,
                                      const std::vector<int64_t>& lengths, VarlenKernel kernel) {
  TORCH_CHECK(q_THK.dim() == 3 && k_THK.sizes() == q_THK.sizes() && v_THK.sizes() == q_THK.sizes(),
              "varlen_causal_attention: q, k and v must be [tokens, heads, head size] of one shape, got ", q_THK.sizes(),
              ", ", k_THK.sizes(), " and ", v_THK.sizes());
  std::vector<int32_t> cumulative{0};
  int64_t longest = 0;
  for (const int64_t n : lengths) {
    TORCH_CHECK(n > 0, "varlen_causal_attention: a span of ", n, " tokens");
    cumulative.push_back(cumulative.back() + static_cast<int32_t>(n));
    longest = std::max(longest, n);
  }
  TORCH_CHECK(cumulative.back() == q_THK.size(0), "varlen_causal_attention: spans of ", cumulative.back(),
              " tokens for ", q_THK.size(0));
  if (kernel == VarlenKernel::kAuto) kernel = varlen_kernel_for(q_THK);
  const auto cu = torch::tensor(cumulative, torch::TensorOptions().dtype(torch::kInt32)).to(q_THK.device(), /*non_blocking=*/true);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q_THK.size(-1)));
  const auto q = q_THK.contiguous(), k = k_THK.contiguous(), v = v_THK.contiguous();
  // A device the flash kernel was not built for (before sm80) refuses it: memory-efficient from then on.
  static std::atomic<bool> flash_refused{false};
  if (kernel == VarlenKernel::kFlash && !flash_refused.load()) {
    try {
      return std::get<0>(at::_flash_attention_forward(q, k, v, cu, cu, longest, longest, /*dropout_p=*/0.0,
                                                       /*is_causal=*/true, /*return_debug_mask=*/false, scale));
    } catch (const c10::Error& e) {
      if (!flash_refused.exchange(true))
        std::cerr << "varlen attention: the flash kernel refused (" << e.what_without_backtrace()
                  << "); using the memory-efficient kernel\n";
    }
    kernel = VarlenKernel::kMemoryEfficient;
  }
  if (kernel == VarlenKernel::kMemoryEfficient) {
    // Batch 1 of all tokens, the spans told by the cumulative lengths; mask type 1: causal from the top left.
    const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
    return std::get<0>(at::_efficient_attention_forward(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), std::nullopt,
                                                        cu, cu, longest, longest, /*dropout_p=*/0.0,
                                                        /*custom_mask_type=*/1, /*compute_log_sumexp=*/grad, scale))
        .squeeze(0);
  }
  TORCH_CHECK(false, "varlen_causal_attention: no variable-length kernel for ", q_THK.scalar_type(), " on ",
              q_THK.device().str(), " (CUDA, float32 / bf16 / fp16)");
}

torch::Tensor decoder_attention(const torch::Tensor& q_BHSK, const torch::Tensor& k_BGSK, const torch::Tensor& v_BGSK,
                                const torch::Tensor& mask_B1SS, const SegmentSpans* spans) {
  auto k = k_BGSK, v = v_BGSK;
  const int64_t groups = q_BHSK.size(1) / k_BGSK.size(1);
  if (groups > 1) {
    k = k.repeat_interleave(groups, 1);
    v = v.repeat_interleave(groups, 1);
  }
  // SDPA keeps float32 softmax statistics for reduced-precision inputs (CPU flash kernel and the CUDA
  // kernels accumulate in float32), and is exact in float32 / float64; tests/test_model_properties.cpp checks
  // bf16 against an explicit float32-softmax attention.
  if (!mask_B1SS.defined()) {
    // is_causal masks the upper triangle from the top-left corner: only meaningful for square attention.
    TORCH_CHECK(q_BHSK.size(2) == k.size(2), "decoder_attention: causal attention without a mask needs as many keys (",
                k.size(2), ") as queries (", q_BHSK.size(2), "); pass the mask of a KV cache");
    if (spans == nullptr) return at::scaled_dot_product_attention(q_BHSK, k, v, {}, 0.0, /*is_causal=*/true);
    // Packed rows: each span alone, causal (SDPA's fused CPU kernel per span; no S x S mask is built). The
    // tokens of all rows are split once along [B*S] (its backward is one concatenation), not sliced per span.
    const int64_t B = q_BHSK.size(0), H = q_BHSK.size(1), S = q_BHSK.size(2), K = q_BHSK.size(3);
    TORCH_CHECK(static_cast<int64_t>(spans->starts.size()) == B, "decoder_attention: spans for ",
                spans->starts.size(), " rows, the batch has ", B);
    std::vector<int64_t> sizes;
    for (int64_t b = 0; b < B; ++b) {
      const auto& st = spans->starts[static_cast<size_t>(b)];
      TORCH_CHECK(!st.empty() && st.front() == 0, "decoder_attention: the spans of row ", b, " must start at 0");
      for (size_t i = 0; i < st.size(); ++i) {
        const int64_t s0 = st[i], s1 = i + 1 < st.size() ? st[i + 1] : S;
        TORCH_CHECK(s0 < s1 && s1 <= S, "decoder_attention: bad span [", s0, ", ", s1, ") of row ", b);
        sizes.push_back(s1 - s0);
      }
    }
    if (varlen_kernel_for(q_BHSK) != VarlenKernel::kNone) {  // CUDA: one variable-length kernel over all spans
      const auto flat = [&](const torch::Tensor& t) { return t.transpose(1, 2).reshape({B * S, H, K}); };
      return varlen_causal_attention(flat(q_BHSK), flat(k), flat(v), sizes).view({B, S, H, K}).transpose(1, 2);
    }
    const auto tokens = [&](const torch::Tensor& t) { return t.transpose(1, 2).reshape({B * S, H, K}).split_with_sizes(sizes); };
    const auto qs = tokens(q_BHSK), ks = tokens(k), vs = tokens(v);
    std::vector<torch::Tensor> ctx;
    ctx.reserve(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      const auto head_major = [](const torch::Tensor& t) { return t.transpose(0, 1).unsqueeze(0); };  // [1,H,len,K]
      ctx.push_back(at::scaled_dot_product_attention(head_major(qs[i]), head_major(ks[i]), head_major(vs[i]), {}, 0.0,
                                                     /*is_causal=*/true)
                        .squeeze(0)
                        .transpose(0, 1));
    }
    return torch::cat(ctx, 0).view({B, S, H, K}).transpose(1, 2);
  }
  return at::scaled_dot_product_attention(q_BHSK, k, v, mask_B1SS);
}

DecoderAttentionImpl::DecoderAttentionImpl(const DecoderConfig& cfg)
    : num_heads(cfg.num_attention_heads), num_kv_heads(cfg.num_key_value_heads), head_dim(cfg.head_dim()) {
  const int64_t D = cfg.hidden_size, KV = num_kv_heads * head_dim;
  auto linear = [](int64_t in, int64_t out) { return Linear(in, out, /*bias=*/false); };
  q_proj = register_module("q_proj", linear(D, num_heads * head_dim));
  k_proj = register_module("k_proj", Multiway([&] { return linear(D, KV).ptr(); }));
  v_proj = register_module("v_proj", Multiway([&] { return linear(D, KV).ptr(); }));
  o_proj = register_module("o_proj", linear(num_heads * head_dim, D));
}

torch::Tensor DecoderAttentionImpl::forward(const torch::Tensor& x_BSD, const Rotary& rope,
                                            const torch::Tensor& mask_B1SS, const ModalityRouting& routing,
                                            LayerKV* kv, const SegmentSpans* spans) {
  const int64_t B = x_BSD.size(0), S = x_BSD.size(1);
  const auto q_BHSK = apply_rotary(q_proj(x_BSD).view({B, S, num_heads, head_dim}).transpose(1, 2), rope);
  auto k_BGSK = apply_rotary(k_proj(x_BSD, routing).view({B, S, num_kv_heads, head_dim}).transpose(1, 2), rope);
  auto v_BGSK = v_proj(x_BSD, routing).view({B, S, num_kv_heads, head_dim}).transpose(1, 2);
  // bf16 inference on a CPU without native bf16 (bf16_widen_on_cpu): ATen's bf16 attention there runs its products
  // through a slow generic path, so queries, keys and values are widened to fp32 (exactly), the cache holds fp32 and
  // the context is rounded to bf16 once.
  const bool widen = kv != nullptr ? bf16_widen_on_cpu(x_BSD) && !q_BHSK.requires_grad() : false;
  const auto q_in = widen ? q_BHSK.to(torch::kFloat32) : q_BHSK;
  if (widen) {
    k_BGSK = k_BGSK.to(torch::kFloat32);
    v_BGSK = v_BGSK.to(torch::kFloat32);
  }
  // Cached keys / values are post-RoPE and keep the copy (text or image) that produced them (spec §1.4).
  if (kv != nullptr) std::tie(k_BGSK, v_BGSK) = kv->append(k_BGSK, v_BGSK);
  auto ctx_BHSK = decoder_attention(q_in, k_BGSK, v_BGSK, mask_B1SS, spans);
  if (widen) ctx_BHSK = ctx_BHSK.to(x_BSD.scalar_type());
  return o_proj(ctx_BHSK.transpose(1, 2).reshape({B, S, num_heads * head_dim}));
}

DecoderMlpImpl::DecoderMlpImpl(const DecoderConfig& cfg) {
  auto linear = [](int64_t in, int64_t out) { return Linear(in, out, /*bias=*/false); };
  gate_proj = register_module("gate_proj", linear(cfg.hidden_size, cfg.intermediate_size));
  up_proj = register_module("up_proj", linear(cfg.hidden_size, cfg.intermediate_size));
  down_proj = register_module("down_proj", linear(cfg.intermediate_size, cfg.hidden_size));
}

torch::Tensor DecoderMlpImpl::forward(const torch::Tensor& x_BSD) {
  return down_proj(torch::silu(gate_proj(x_BSD)) * up_proj(x_BSD));
}

DecoderLayerImpl::DecoderLayerImpl(const DecoderConfig& cfg) {
  auto norm = [&] { return RMSNorm(cfg.hidden_size, cfg.rms_norm_eps).ptr(); };
  input_layernorm = register_module("input_layernorm", Multiway(norm));
  self_attn = register_module("self_attn", DecoderAttention(cfg));
  mlp = register_module("mlp", DecoderMlp(cfg));
  post_attention_layernorm = register_module("post_attention_layernorm", Multiway(norm));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x_BSD, const Rotary& rope, const torch::Tensor& mask_B1SS,
                                        const ModalityRouting& routing, LayerKV* kv, const SegmentSpans* spans) {
  const auto h_BSD = x_BSD + self_attn(input_layernorm(x_BSD, routing), rope, mask_B1SS, routing, kv, spans);
  return h_BSD + mlp(post_attention_layernorm(h_BSD, routing));
}

torch::Tensor causal_padding_mask(const torch::Tensor& valid_BS) {
  const int64_t S = valid_BS.size(1);
  const auto valid = valid_BS.to(torch::kBool);
  const auto causal_SS = torch::ones({S, S}, valid.options()).tril();
  const auto seen_valid_BS = valid.to(torch::kInt64).cumsum(1) > 0;
  const auto eye_SS = torch::eye(S, valid.options());
  // [B,S(q),S(k)]: causal & valid key, or the diagonal for a query with no valid key so far.
  const auto mask = (causal_SS.unsqueeze(0) & valid.unsqueeze(1)) | (eye_SS.unsqueeze(0) & (~seen_valid_BS).unsqueeze(2));
  return mask.unsqueeze(1);
}

torch::Tensor causal_segment_mask(const torch::Tensor& valid_BS, const torch::Tensor& segment_ids_BS) {
  TORCH_CHECK(segment_ids_BS.sizes() == valid_BS.sizes(), "segment ids ", segment_ids_BS.sizes(),
              " must match the mask ", valid_BS.sizes());
  const int64_t S = valid_BS.size(1);
  const auto same_B1SS = (segment_ids_BS.unsqueeze(2) == segment_ids_BS.unsqueeze(1)).unsqueeze(1);
  const auto eye = torch::eye(S, same_B1SS.options());
  return (causal_padding_mask(valid_BS) & same_B1SS) | eye;
}

bool is_right_padded(const torch::Tensor& valid_BS) {
  TORCH_CHECK(valid_BS.dim() == 2, "is_right_padded: expected a [B,S] mask, got ", valid_BS.sizes());
  if (valid_BS.size(1) < 2) return true;
  const auto valid = valid_BS.to(torch::kCPU).to(torch::kBool);  // host sync if valid_BS is on a device
  // Right-padded: no real token directly after a pad, i.e. every row is non-increasing.
  return !(valid.slice(1, 1) & ~valid.slice(1, 0, -1)).any().item<bool>();
}

}  // namespace owl2
