// The full model: image encoding, splicing of visual tokens at the placeholders, the decoder and the loss
// (spec §1, §3.2, §9). Legend: B batch, T input tokens, S spliced tokens, N images, V visual tokens per image,
// D LLM width, M = B*S flattened tokens.
#include "owl2/model/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <torch/nn/functional/loss.h>

namespace owl2 {
namespace nn = torch::nn;

MPLUGOwl2ModelImpl::MPLUGOwl2ModelImpl(const ModelConfig& cfg) {
  const auto& d = cfg.decoder;
  embed_tokens = register_module("embed_tokens", Embedding(d.vocab_size, d.hidden_size));
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < d.num_hidden_layers; ++i) layers->push_back(DecoderLayer(d));
  norm = register_module("norm", RMSNorm(d.hidden_size, d.rms_norm_eps));
  vision_model = register_module("vision_model", VisionModel(cfg.vision));
  visual_abstractor = register_module("visual_abstractor", VisualAbstractor(cfg.abstractor, d.hidden_size));
}

MPLUGOwl2ForCausalLMImpl::MPLUGOwl2ForCausalLMImpl(const ModelConfig& cfg_) : cfg(cfg_) {
  validate(cfg);
  model = register_module("model", MPLUGOwl2Model(cfg));
  lm_head = register_module("lm_head", Linear(cfg.decoder.hidden_size, cfg.decoder.vocab_size, /*bias=*/false));
}

torch::Tensor MPLUGOwl2ForCausalLMImpl::encode_images(const torch::Tensor& images_NCHW) {
  TORCH_CHECK(images_NCHW.dim() == 4, "images must be [N,C,H,W], got ", images_NCHW.sizes());
  return model->visual_abstractor(model->vision_model(images_NCHW));
}

SplicedBatch MPLUGOwl2ForCausalLMImpl::splice_inputs(const ModelInputs& in) {
  TORCH_CHECK(in.input_ids.defined() && in.input_ids.dim() == 2, "input_ids must be [B,T]");
  const auto device = in.input_ids.device();
  const int64_t B = in.input_ids.size(0), T = in.input_ids.size(1);
  const int64_t V = cfg.visual_tokens_per_image();
  // Host copies: the one sync of the forward.
  const auto ids_BT = in.input_ids.to(torch::kCPU, torch::kInt64).contiguous();
  const auto mask_BT = (in.attention_mask.defined() ? in.attention_mask.to(torch::kCPU).to(torch::kBool)
                                                    : torch::ones({B, T}, torch::kBool))
                           .contiguous();
  TORCH_CHECK(mask_BT.sizes() == ids_BT.sizes(), "attention_mask ", mask_BT.sizes(), " must match input_ids ",
              ids_BT.sizes());
  const bool has_labels = in.labels.defined();
  torch::Tensor labels_cpu;
  if (has_labels) {
    labels_cpu = in.labels.to(torch::kCPU, torch::kInt64).contiguous();
    TORCH_CHECK(labels_cpu.sizes() == ids_BT.sizes(), "labels ", labels_cpu.sizes(), " must match input_ids ",
                ids_BT.sizes());
  }
  const int64_t* ids = ids_BT.data_ptr<int64_t>();
  const bool* mask = mask_BT.data_ptr<bool>();
  torch::Tensor seg_cpu;
  const int64_t* seg_in = nullptr;
  if (in.segment_ids.defined()) {
    seg_cpu = in.segment_ids.to(torch::kCPU, torch::kInt64).contiguous();
    TORCH_CHECK(seg_cpu.sizes() == ids_BT.sizes(), "segment_ids ", seg_cpu.sizes(), " must match input_ids ",
                ids_BT.sizes());
    seg_in = seg_cpu.data_ptr<int64_t>();
  }

  std::vector<int64_t> images_per_sample(B, 0);
  int64_t num_placeholders = 0;
  for (int64_t i = 0; i < B * T; ++i) {
    if (ids[i] == kImageTokenIndex) {
      ++images_per_sample[i / T];
      ++num_placeholders;
    }
  }
  const int64_t N = in.images.defined() ? in.images.size(0) : 0;
  TORCH_CHECK(num_placeholders == N, "input_ids hold ", num_placeholders, " image placeholders (", kImageTokenIndex,
              ") but ", N, " images were given");

  // Left padding (some sample starts with padding) keeps every sample aligned to the right edge, as
  // generation needs; otherwise samples are aligned left and padded right, as the reference does.
  bool left_padded = in.pad_left;
  for (int64_t b = 0; b < B && T > 0; ++b) left_padded |= !mask[b * T];
  int64_t S = 0;
  for (int64_t b = 0; b < B; ++b) S = std::max(S, T + (V - 1) * images_per_sample[b]);

  // Source row of every spliced position in the table [text tokens (B*T) ; visual tokens (N*V) ; zero row].
  const int64_t zero_row = B * T + N * V;
  std::vector<int64_t> src(B * S, zero_row), modality(B * S, 0), labels(B * S, kIgnoreIndex), position(B * S, 0);
  std::vector<int64_t> segment(B * S, -1);
  std::vector<uint8_t> valid(B * S, 0);
  bool packed = false;  // some row holds more than one sample
  std::vector<int64_t> text_idx, image_idx;
  const int64_t* lab = has_labels ? labels_cpu.data_ptr<int64_t>() : nullptr;
  int64_t image = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = T + (V - 1) * images_per_sample[b];
    int64_t s = b * S + (left_padded ? S - len : 0);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      const int64_t seg = seg_in && mask[i] ? seg_in[i] : -1;
      if (ids[i] == kImageTokenIndex) {
        for (int64_t v = 0; v < V; ++v, ++s) {
          src[s] = B * T + image * V + v;
          modality[s] = 1;  // all V positions, vit_eos included (spec §1.4)
          valid[s] = 1;
          segment[s] = seg;
        }
        ++image;
      } else {
        src[s] = i;
        valid[s] = mask[i];
        segment[s] = seg;
        if (lab) labels[s] = lab[i];
        ++s;
      }
    }
    if (!seg_in) {
      // Positions start at 0 at the first real token: a left-padded sample sees the positions it has alone.
      int64_t first = S;
      for (int64_t k = 0; k < S; ++k) {
        if (valid[b * S + k]) {
          first = k;
          break;
        }
      }
      for (int64_t k = 0; k < S; ++k) position[b * S + k] = std::max<int64_t>(0, k - first);
      continue;
    }
    // A packed row: each sample's positions start at 0 at its first token, and that token is not a target of
    // the previous sample's last one (the label at a sample's start is ignored, as it is for a sample alone).
    int64_t current = -1, start = 0;
    for (int64_t k = 0; k < S; ++k) {
      const int64_t m = b * S + k;
      if (!valid[m]) continue;
      if (segment[m] != current) {
        TORCH_CHECK(segment[m] > current, "segment_ids of row ", b, " must be contiguous and increasing; found ",
                    segment[m], " after ", current);
        packed |= current >= 0;
        current = segment[m];
        start = k;
        labels[m] = kIgnoreIndex;
      }
      position[m] = k - start;
    }
  }
  for (int64_t m = 0; m < B * S; ++m) (modality[m] ? image_idx : text_idx).push_back(m);

  auto to_device = [&](std::vector<int64_t>& v, std::vector<int64_t> shape) {
    return torch::from_blob(v.data(), shape, torch::kInt64).clone().to(device);
  };
  // Placeholders (and any negative padding id) embed as token 0; their rows are replaced or masked.
  const auto ids_for_embed = in.input_ids.to(torch::kInt64).clamp_min(0);
  const auto text_MD = model->embed_tokens(ids_for_embed).reshape({B * T, -1});
  std::vector<torch::Tensor> rows{text_MD};
  if (N > 0) rows.push_back(encode_images(in.images.to(device)).reshape({N * V, -1}).to(text_MD.dtype()));
  rows.push_back(torch::zeros({1, text_MD.size(1)}, text_MD.options()));

  // Whether is_causal alone is exact (forward's choice of attention). The causal path changes only what padded
  // positions compute; that is harmless when every row is real tokens then pads (decided here, on the host copy,
  // so no layer and no extra sync decides it) and no pad predicts a supervised label (shifted: s predicts s + 1).
  bool pads_unsupervised = true;
  for (int64_t m = 0; m < B * S; ++m) {
    if (!valid[m] && (m + 1) % S != 0 && labels[m + 1] != kIgnoreIndex) pads_unsupervised = false;
  }

  SplicedBatch out;
  out.causal_is_exact = !packed && pads_unsupervised && is_right_padded(torch::from_blob(valid.data(), {B, S}, torch::kUInt8));
  out.inputs_embeds_BSD = torch::cat(rows, 0).index_select(0, to_device(src, {B * S})).view({B, S, -1});
  out.has_padding = std::find(valid.begin(), valid.end(), 0) != valid.end();
  out.attention_mask_BS = torch::from_blob(valid.data(), {B, S}, torch::kUInt8).to(torch::kBool).to(device);
  out.modality_BS = to_device(modality, {B, S});
  out.position_ids_BS = to_device(position, {B, S});
  if (has_labels) out.labels_BS = to_device(labels, {B, S});
  if (packed) {
    out.segment_ids_BS = to_device(segment, {B, S});
    if (pads_unsupervised && is_right_padded(torch::from_blob(valid.data(), {B, S}, torch::kUInt8))) {
      auto spans = std::make_shared<SegmentSpans>();
      for (int64_t b = 0; b < B; ++b) {
        auto& st = spans->starts.emplace_back(std::vector<int64_t>{0});
        for (int64_t k = 1; k < S; ++k) {
          if (segment[b * S + k] != segment[b * S + k - 1]) st.push_back(k);  // a new sample, or the padding
        }
      }
      out.spans = std::move(spans);
    }
  }
  out.routing.num_text = static_cast<int64_t>(text_idx.size());
  out.routing.num_image = static_cast<int64_t>(image_idx.size());
  out.routing.text_idx_M = to_device(text_idx, {out.routing.num_text});
  out.routing.image_idx_M = to_device(image_idx, {out.routing.num_image});
  return out;
}

torch::Tensor MPLUGOwl2ForCausalLMImpl::decode(const torch::Tensor& inputs_embeds_BSD,
                                               const torch::Tensor& attention_mask_BS,
                                               const torch::Tensor& position_ids_BS, const ModalityRouting& routing,
                                               const torch::Tensor& segment_ids_BS,
                                               std::shared_ptr<const SegmentSpans> spans) {
  TORCH_CHECK(!spans || !attention_mask_BS.defined(), "decode: segment spans replace the attention mask");
  TORCH_CHECK(!segment_ids_BS.defined() || attention_mask_BS.defined(),
              "decode: segment ids need the explicit attention mask");
  const auto mask_B1SS = !attention_mask_BS.defined() ? torch::Tensor()
                         : segment_ids_BS.defined()   ? causal_segment_mask(attention_mask_BS, segment_ids_BS)
                                                      : causal_padding_mask(attention_mask_BS);
  const auto rope = rotary_tables(position_ids_BS, cfg.decoder.head_dim(), cfg.decoder.rope_theta,
                                  inputs_embeds_BSD.scalar_type());
  auto x_BSD = inputs_embeds_BSD;
  for (int64_t i = 0; const auto& layer : *model->layers) {
    auto block = std::dynamic_pointer_cast<DecoderLayerImpl>(layer);
    x_BSD = run_block(decoder_block_runner, i++,
                      [block, rope, mask_B1SS, routing, spans](const std::vector<torch::Tensor>& in) {
                        return block->forward(in[0], rope, mask_B1SS, routing, nullptr, spans.get());
                      },
                      {x_BSD});
  }
  return model->norm(x_BSD);
}

torch::Tensor MPLUGOwl2ForCausalLMImpl::decode_cached(const torch::Tensor& inputs_embeds_BSD,
                                                      const torch::Tensor& valid_BS,
                                                      const torch::Tensor& position_ids_BS,
                                                      const ModalityRouting& routing, KVCache& cache) {
  const auto mask_B1SL = cache.attention_mask(valid_BS);
  const auto rope = rotary_tables(position_ids_BS, cfg.decoder.head_dim(), cfg.decoder.rope_theta,
                                  inputs_embeds_BSD.scalar_type());
  auto x_BSD = inputs_embeds_BSD;
  // Through the runner as in decode(), so that ZeRO 3 gathers each layer for a cached step too (evaluation during
  // training). The layer appends to its cache entry: only for inference, where a runner runs the block once.
  for (int64_t i = 0; i < static_cast<int64_t>(model->layers->size()); ++i) {
    auto block = model->layers->ptr<DecoderLayerImpl>(i);
    LayerKV* entry = &cache.layer(i);
    x_BSD = run_block(decoder_block_runner, i,
                      [block, rope, mask_B1SL, routing, entry](const std::vector<torch::Tensor>& in) {
                        return block->forward(in[0], rope, mask_B1SL, routing, entry);
                      },
                      {x_BSD});
  }
  cache.advance(valid_BS);
  return model->norm(x_BSD);
}

ModelOutput MPLUGOwl2ForCausalLMImpl::forward(const ModelInputs& inputs) {
  auto batch = splice_inputs(inputs);
  // Without an explicit mask SDPA can take the fused kernels (flash on CUDA for bf16 / fp16); see docs/model.md.
  const bool fused = inputs.padding_attention == PaddingAttention::kCausalWhenExact;
  const bool causal = fused && batch.causal_is_exact, per_span = fused && batch.spans != nullptr;
  ModelOutput out;
  out.logits = lm_head(decode(batch.inputs_embeds_BSD, causal || per_span ? torch::Tensor() : batch.attention_mask_BS,
                              batch.position_ids_BS, batch.routing, causal || per_span ? torch::Tensor() : batch.segment_ids_BS,
                              per_span ? batch.spans : nullptr));
  out.attention_mask = batch.attention_mask_BS;
  out.modality = batch.modality_BS;
  out.position_ids = batch.position_ids_BS;
  out.labels = batch.labels_BS;
  if (batch.labels_BS.defined()) {
    // Shifted: position s predicts label s + 1 (the last position predicts nothing). Only supervised rows are
    // gathered from the [B*S, V] view (no copy of the other rows): same sum as ignore_index, less work.
    // Cross-entropy in at least float32 (the reference upcasts the logits).
    const int64_t B = out.logits.size(0), V = out.logits.size(2);
    const auto targets_M =
        torch::cat({batch.labels_BS.slice(1, 1), torch::full({B, 1}, kIgnoreIndex, batch.labels_BS.options())}, 1)
            .reshape({-1});
    const auto rows = torch::nonzero(targets_M != kIgnoreIndex).reshape({-1});  // host sync (row count)
    const auto logits_RV = out.logits.view({-1, V}).index_select(0, rows);
    const auto compute = torch::promote_types(logits_RV.scalar_type(), torch::kFloat32);
    out.loss_sum = nn::functional::cross_entropy(logits_RV.to(compute), targets_M.index_select(0, rows),
                                                 nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    out.num_label_tokens =
        torch::scalar_tensor(rows.size(0), torch::TensorOptions().dtype(torch::kInt64).device(rows.device()));
    out.loss = out.loss_sum / out.num_label_tokens.to(compute);
  }
  return out;
}

int64_t ParameterShape::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::vector<ParameterShape> parameter_shapes(const ModelConfig& cfg) {
  std::vector<ParameterShape> out;
  auto add = [&](std::string name, std::vector<int64_t> shape) { out.push_back({std::move(name), std::move(shape)}); };
  const auto& d = cfg.decoder;
  const int64_t D = d.hidden_size, KV = d.num_key_value_heads * d.head_dim(), F = d.intermediate_size;
  add("model.embed_tokens.weight", {d.vocab_size, D});
  for (int64_t n = 0; n < d.num_hidden_layers; ++n) {
    const auto p = fmt::format("model.layers.{}.", n);
    for (int w = 0; w < 2; ++w) add(fmt::format("{}input_layernorm.multiway.{}.weight", p, w), {D});
    add(p + "self_attn.q_proj.weight", {D, D});
    for (int w = 0; w < 2; ++w) add(fmt::format("{}self_attn.k_proj.multiway.{}.weight", p, w), {KV, D});
    for (int w = 0; w < 2; ++w) add(fmt::format("{}self_attn.v_proj.multiway.{}.weight", p, w), {KV, D});
    add(p + "self_attn.o_proj.weight", {D, D});
    add(p + "mlp.gate_proj.weight", {F, D});
    add(p + "mlp.up_proj.weight", {F, D});
    add(p + "mlp.down_proj.weight", {D, F});
    for (int w = 0; w < 2; ++w) add(fmt::format("{}post_attention_layernorm.multiway.{}.weight", p, w), {D});
  }
  add("model.norm.weight", {D});

  const auto& v = cfg.vision;
  const int64_t E = v.hidden_size;
  const std::string vp = "model.vision_model.";
  add(vp + "embeddings.cls_token", {1, 1, E});
  add(vp + "embeddings.patch_embed.weight", {E, v.num_channels, v.patch_size, v.patch_size});
  add(vp + "embeddings.position_embedding", {1, v.num_positions(), E});
  add(vp + "embeddings.pre_layernorm.weight", {E});
  add(vp + "embeddings.pre_layernorm.bias", {E});
  for (int64_t l = 0; l < v.num_hidden_layers; ++l) {
    const auto p = fmt::format("{}encoder.layers.{}.", vp, l);
    add(p + "input_layernorm.weight", {E});
    add(p + "input_layernorm.bias", {E});
    add(p + "self_attn.query_key_value.weight", {3 * E, E});
    add(p + "self_attn.query_key_value.bias", {3 * E});
    add(p + "self_attn.dense.weight", {E, E});
    add(p + "self_attn.dense.bias", {E});
    add(p + "post_attention_layernorm.weight", {E});
    add(p + "post_attention_layernorm.bias", {E});
    add(p + "mlp.fc1.weight", {v.intermediate_size, E});
    add(p + "mlp.fc1.bias", {v.intermediate_size});
    add(p + "mlp.fc2.weight", {E, v.intermediate_size});
    add(p + "mlp.fc2.bias", {E});
  }
  add(vp + "post_layernorm.weight", {E});
  add(vp + "post_layernorm.bias", {E});

  const auto& a = cfg.abstractor;
  const int64_t A = a.hidden_size;
  const std::string ap = "model.visual_abstractor.";
  add(ap + "query_embeds", {1, a.num_learnable_queries, A});
  add(ap + "vit_eos", {1, 1, D});
  for (int64_t l = 0; l < a.num_hidden_layers; ++l) {
    const auto p = fmt::format("{}encoder.layers.{}.crossattention.", ap, l);
    for (const char* ln : {"norm1", "normk"}) {
      add(p + ln + ".weight", {A});
      add(p + ln + ".bias", {A});
    }
    for (const char* lin : {"query", "key", "value"}) {
      add(p + "attention." + lin + ".weight", {A, A});
      add(p + "attention." + lin + ".bias", {A});
    }
    add(p + "output.out_proj.weight", {A, A});
    add(p + "output.out_proj.bias", {A});
    add(p + "output.norm2.weight", {A});
    add(p + "output.norm2.bias", {A});
    add(p + "output.mlp.w1.weight", {a.intermediate_size, A});
    add(p + "output.mlp.w1.bias", {a.intermediate_size});
    add(p + "output.mlp.w2.weight", {A, a.intermediate_size});
    add(p + "output.mlp.w2.bias", {A});
    add(p + "output.mlp.w3.weight", {a.intermediate_size, A});
    add(p + "output.mlp.w3.bias", {a.intermediate_size});
    add(p + "output.mlp.ffn_ln.weight", {a.intermediate_size});
    add(p + "output.mlp.ffn_ln.bias", {a.intermediate_size});
  }
  add(ap + "visual_fc.weight", {D, A});
  add(ap + "visual_fc.bias", {D});
  add("lm_head.weight", {d.vocab_size, D});
  return out;
}

}  // namespace owl2
