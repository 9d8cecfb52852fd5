// The visual abstractor (spec §1.2, §7.2-7.3, §9 step 3).
// Legend: N images, Q queries, T image tokens, S = Q + T key/value tokens, D width, h heads, K head dim, O LLM width.
#include "owl2/model/abstractor.h"

#include <ATen/ops/scaled_dot_product_attention.h>

#include "owl2/model/bf16_gemv.h"

namespace owl2 {
namespace nn = torch::nn;

torch::Tensor sincos_1d(int64_t dim, const torch::Tensor& pos_float) {
  TORCH_CHECK(dim % 2 == 0, "sincos_1d: dim must be even, got ", dim);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(pos_float.device());
  auto omega = torch::arange(dim / 2, opts) / static_cast<float>(dim / 2.0);
  omega = 1.0f / torch::pow(10000.0f, omega);
  const auto out_LH = torch::outer(pos_float.to(torch::kFloat32).reshape({-1}), omega);
  return torch::cat({torch::sin(out_LH), torch::cos(out_LH)}, 1);
}

torch::Tensor sincos_2d_with_cls(int64_t dim, int64_t grid) {
  TORCH_CHECK(dim % 4 == 0, "sincos_2d: dim must be divisible by 4, got ", dim);
  const auto idx = torch::arange(grid * grid, torch::kInt64);
  const auto col = (idx % grid).to(torch::kFloat32), row = torch::div(idx, grid, "floor").to(torch::kFloat32);
  const auto emb = torch::cat({sincos_1d(dim / 2, col), sincos_1d(dim / 2, row)}, 1);
  return torch::cat({torch::zeros({1, dim}, torch::kFloat32), emb}, 0);
}

AbstractorAttentionImpl::AbstractorAttentionImpl(const AbstractorConfig& cfg) : num_heads(cfg.num_attention_heads) {
  query = register_module("query", Linear(cfg.hidden_size, cfg.hidden_size));
  key = register_module("key", Linear(cfg.encoder_hidden_size, cfg.hidden_size));
  value = register_module("value", Linear(cfg.encoder_hidden_size, cfg.hidden_size));
}

torch::Tensor AbstractorAttentionImpl::forward(const torch::Tensor& q_NQD, const torch::Tensor& kv_NSD,
                                               const torch::Tensor& qpos_QD, const torch::Tensor& kpos_SD) {
  const int64_t N = q_NQD.size(0), Q = q_NQD.size(1), S = kv_NSD.size(1), D = query->weight.size(0);
  const int64_t K = D / num_heads;
  // The float32 tables are cast to the activation dtype before the add, as in the reference.
  const auto q = query(q_NQD + qpos_QD.to(q_NQD.dtype())).view({N, Q, num_heads, K}).transpose(1, 2);
  const auto k = key(kv_NSD + kpos_SD.to(kv_NSD.dtype())).view({N, S, num_heads, K}).transpose(1, 2);
  const auto v = value(kv_NSD).view({N, S, num_heads, K}).transpose(1, 2);
  // No mask (all queries and image tokens are valid); softmax in the activation dtype (bf16 inference on CPUs
  // without native bf16: in fp32, rounded once).
  const auto ctx_NhQK = attention_forward(q, k, v);
  return ctx_NhQK.transpose(1, 2).reshape({N, Q, D});
}

AbstractorMlpImpl::AbstractorMlpImpl(const AbstractorConfig& cfg) {
  w1 = register_module("w1", Linear(cfg.hidden_size, cfg.intermediate_size));
  w2 = register_module("w2", Linear(cfg.intermediate_size, cfg.hidden_size));
  w3 = register_module("w3", Linear(cfg.hidden_size, cfg.intermediate_size));
  ffn_ln = register_module("ffn_ln", LayerNorm(cfg.intermediate_size, cfg.layer_norm_eps));
}

torch::Tensor AbstractorMlpImpl::forward(const torch::Tensor& x_NQD) {
  return w2(ffn_ln(torch::silu(w1(x_NQD)) * w3(x_NQD)));
}

AbstractorOutputImpl::AbstractorOutputImpl(const AbstractorConfig& cfg) {
  out_proj = register_module("out_proj", Linear(cfg.hidden_size, cfg.hidden_size));
  norm2 = register_module("norm2", LayerNorm(cfg.hidden_size, cfg.attn_norm_eps));
  mlp = register_module("mlp", AbstractorMlp(cfg));
}

AbstractorLayerImpl::AbstractorLayerImpl(const AbstractorConfig& cfg) {
  norm1 = register_module("norm1", LayerNorm(cfg.hidden_size, cfg.attn_norm_eps));
  normk = register_module("normk", LayerNorm(cfg.encoder_hidden_size, cfg.attn_norm_eps));
  attention = register_module("attention", AbstractorAttention(cfg));
  output = register_module("output", AbstractorOutput(cfg));
}

torch::Tensor AbstractorLayerImpl::forward(const torch::Tensor& queries_NQD, const torch::Tensor& image_NTE,
                                           const torch::Tensor& qpos_QD, const torch::Tensor& kpos_SD) {
  const auto q_NQD = norm1(queries_NQD);
  const auto kv_NSD = torch::cat({q_NQD, normk(image_NTE)}, 1);  // queries first
  const auto x_NQD = q_NQD + output->out_proj(attention(q_NQD, kv_NSD, qpos_QD, kpos_SD));  // residual: normalized queries
  return x_NQD + output->mlp(output->norm2(x_NQD));
}

AbstractorLayerHolderImpl::AbstractorLayerHolderImpl(const AbstractorConfig& cfg) {
  crossattention = register_module("crossattention", AbstractorLayer(cfg));
}

AbstractorEncoderImpl::AbstractorEncoderImpl(const AbstractorConfig& cfg) {
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) layers->push_back(AbstractorLayerHolder(cfg));
}

VisualAbstractorImpl::VisualAbstractorImpl(const AbstractorConfig& cfg_, int64_t llm_hidden_size) : cfg(cfg_) {
  TORCH_CHECK(cfg.hidden_size == cfg.encoder_hidden_size, "abstractor: hidden_size (", cfg.hidden_size,
              ") must equal encoder_hidden_size (", cfg.encoder_hidden_size, ") since K/V read [queries ; image]");
  query_embeds = register_parameter("query_embeds", torch::empty({1, cfg.num_learnable_queries, cfg.hidden_size}));
  vit_eos = register_parameter("vit_eos", torch::empty({1, 1, llm_hidden_size}));
  encoder = register_module("encoder", AbstractorEncoder(cfg));
  visual_fc = register_module("visual_fc", Linear(cfg.hidden_size, llm_hidden_size));
}

torch::Tensor VisualAbstractorImpl::forward(const torch::Tensor& image_NTE) {
  const int64_t N = image_NTE.size(0), T = image_NTE.size(1), Q = cfg.num_learnable_queries;
  TORCH_CHECK(T == cfg.grid_size * cfg.grid_size + 1, "abstractor: got ", T, " image tokens, expected 1 + ",
              cfg.grid_size, "^2 = ", cfg.grid_size * cfg.grid_size + 1, " (abstractor.grid_size)");
  // Recomputed (not loaded) float32 position tables (spec §1.2): queries 0..Q-1, then the 2-D grid with a zero class row.
  // Computed on the host, as the reference's numpy tables are, then copied to the features' device: the same values
  // on every device (a GPU's sin / cos may differ in the last bit).
  const auto qpos_QD = sincos_1d(cfg.hidden_size, torch::arange(Q, torch::kFloat32)).to(image_NTE.device());
  const auto kpos_SD = torch::cat({qpos_QD, sincos_2d_with_cls(cfg.hidden_size, cfg.grid_size).to(image_NTE.device())}, 0);
  auto x_NQD = query_embeds.expand({N, -1, -1});
  for (int64_t i = 0; const auto& layer : *encoder->layers) {
    auto cross = layer->as<AbstractorLayerHolder>()->crossattention.ptr();
    x_NQD = run_block(block_runner, i++,
                      [cross, qpos_QD, kpos_SD](const std::vector<torch::Tensor>& in) {
                        return cross->forward(in[0], in[1], qpos_QD, kpos_SD);
                      },
                      {x_NQD, image_NTE});
  }
  return torch::cat({visual_fc(x_NQD), vit_eos.expand({N, 1, -1})}, 1);  // vit_eos is not projected (spec §7.5)
}

}  // namespace owl2
