// The visual abstractor of mPLUG-Owl2 (spec §1.2): learnable queries cross-attend over [queries ; image tokens]
// with sin-cos key positions, SwiGLU FFN with inner LayerNorm, then visual_fc and the appended vit_eos.
// Shapes: N images, Q queries, T image tokens (class + patches), D width, E encoder width, F FFN width, O LLM width.
#pragma once
#include "owl2/model/block_runner.h"
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "owl2/model/config.h"
#include "owl2/model/layers.h"

namespace owl2 {

// 1-D MAE sin-cos embedding [len(pos), dim]: [sin(pos*w) | cos(pos*w)], w_i = 10000^(-i/(dim/2)), float32.
torch::Tensor sincos_1d(int64_t dim, const torch::Tensor& pos_float);
// 2-D embedding [1 + g*g, dim] for a g x g grid in row-major order: dims [0, dim/2) encode the column,
// [dim/2, dim) the row (spec §1.2), with a zero row prepended for the class token. float32.
torch::Tensor sincos_2d_with_cls(int64_t dim, int64_t grid);

// `crossattention.attention`: query/key/value projections; K gets the positions, V does not.
class AbstractorAttentionImpl : public torch::nn::Module {
 public:
  explicit AbstractorAttentionImpl(const AbstractorConfig& cfg);
  // q_NQD: normalized queries; kv_NSD: [normalized queries ; normalized image]; pos_*: float32 tables.
  torch::Tensor forward(const torch::Tensor& q_NQD, const torch::Tensor& kv_NSD, const torch::Tensor& qpos_QD,
                        const torch::Tensor& kpos_SD);

  int64_t num_heads;
  Linear query{nullptr}, key{nullptr}, value{nullptr};
};
TORCH_MODULE(AbstractorAttention);

// w2(ffn_ln(silu(w1 x) * w3 x)).
class AbstractorMlpImpl : public torch::nn::Module {
 public:
  explicit AbstractorMlpImpl(const AbstractorConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x_NQD);

  Linear w1{nullptr}, w2{nullptr}, w3{nullptr};
  LayerNorm ffn_ln{nullptr};
};
TORCH_MODULE(AbstractorMlp);

// `crossattention.output`: out_proj, norm2 and the FFN.
class AbstractorOutputImpl : public torch::nn::Module {
 public:
  explicit AbstractorOutputImpl(const AbstractorConfig& cfg);
  Linear out_proj{nullptr};
  LayerNorm norm2{nullptr};
  AbstractorMlp mlp{nullptr};
};
TORCH_MODULE(AbstractorOutput);

// One abstractor layer (`encoder.layers.A.crossattention`).
class AbstractorLayerImpl : public torch::nn::Module {
 public:
  explicit AbstractorLayerImpl(const AbstractorConfig& cfg);
  torch::Tensor forward(const torch::Tensor& queries_NQD, const torch::Tensor& image_NTE, const torch::Tensor& qpos_QD,
                        const torch::Tensor& kpos_SD);

  LayerNorm norm1{nullptr}, normk{nullptr};
  AbstractorAttention attention{nullptr};
  AbstractorOutput output{nullptr};
};
TORCH_MODULE(AbstractorLayer);

// `encoder.layers.A`: holds the layer as `crossattention`, so names read as in the checkpoint.
class AbstractorLayerHolderImpl : public torch::nn::Module {
 public:
  explicit AbstractorLayerHolderImpl(const AbstractorConfig& cfg);
  AbstractorLayer crossattention{nullptr};
};
TORCH_MODULE(AbstractorLayerHolder);

// `encoder`: holds `layers`.
class AbstractorEncoderImpl : public torch::nn::Module {
 public:
  explicit AbstractorEncoderImpl(const AbstractorConfig& cfg);
  torch::nn::ModuleList layers{nullptr};  // of AbstractorLayerHolder
};
TORCH_MODULE(AbstractorEncoder);

// `model.visual_abstractor`: image features [N,T,E] -> visual tokens [N,Q+1,O] (projected queries, vit_eos).
class VisualAbstractorImpl : public torch::nn::Module {
 public:
  VisualAbstractorImpl(const AbstractorConfig& cfg, int64_t llm_hidden_size);
  torch::Tensor forward(const torch::Tensor& image_NTE);

  AbstractorConfig cfg;
  torch::Tensor query_embeds;  // [1,Q,D]
  torch::Tensor vit_eos;       // [1,1,O]
  AbstractorEncoder encoder{nullptr};
  Linear visual_fc{nullptr};
  BlockRunner block_runner;  // empty: blocks run directly
};
TORCH_MODULE(VisualAbstractor);

}  // namespace owl2
