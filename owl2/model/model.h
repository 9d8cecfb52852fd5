// MPLUGOwl2ForCausalLM (spec §1, §3.2, §9): ViT -> abstractor -> visual tokens spliced at each -200 placeholder
// -> modality-adaptive LLaMA decoder -> lm_head, with the shifted cross-entropy. Registered names equal the
// reference checkpoint keys (spec §2.2), so loading is a name-for-name copy.
// Shapes: B batch, T input tokens, S spliced tokens, N images, C/H/W pixels, V visual tokens per image, D width.
#pragma once
#include "owl2/model/block_runner.h"
#include "owl2/model/constants.h"
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <memory>
#include <string>
#include <vector>

#include "owl2/model/abstractor.h"
#include "owl2/model/config.h"
#include "owl2/model/decoder.h"
#include "owl2/model/layers.h"
#include "owl2/model/vision.h"

namespace owl2 {


// How forward() applies padding in the decoder's attention (docs/model.md, "Attention kernels").
enum class PaddingAttention {
  // SDPA with is_causal and no mask when that is exact for every real position and the loss: no padding, or
  // right padding (what collate produces) whose pads predict no label. Packed rows of that form run attention
  // per sample span (SegmentSpans) instead of the block-diagonal mask. Padded positions then attend causally to
  // earlier pads, so their logits are not the reference's; no loss term or gradient reads them. Any other batch
  // (left padding, holes, supervised pads) gets the explicit mask. Decided on splice_inputs' host copy of the
  // mask, so the choice costs no extra sync.
  kCausalWhenExact,
  // Always the explicit [B,1,S,S] mask: every position, pads included, as the reference computes it.
  kExplicitMask,
};

struct ModelInputs {
  torch::Tensor input_ids;       // [B,T] int64; each -200 marks where one image's visual tokens go
  torch::Tensor attention_mask;  // [B,T] bool or int, 1 = real token; undefined = all real; left OR right padding
  torch::Tensor images;          // [N,C,H,W] float: all images of the batch in reading order; undefined if none
  torch::Tensor labels;          // [B,T] int64, -100 = ignore; undefined = no loss
  bool pad_left = false;         // align every spliced sample to the right edge even when input_ids has no
                                 // padding (generation: prompts of one length with different image counts)
  PaddingAttention padding_attention = PaddingAttention::kCausalWhenExact;
  // Packed rows: [B,T] int64, the sample of each token within its row (0, 1, ... contiguous and non-decreasing
  // over the real tokens; padding is ignored). Each sample then attends only to itself (block-diagonal causal),
  // its positions restart at 0, and its first token is not predicted from the previous sample: the logits, loss
  // and gradients equal those of the samples run one by one. Undefined: one sample per row.
  torch::Tensor segment_ids = {};
};

struct ModelOutput {
  torch::Tensor logits;            // [B,S,V] over the spliced sequence (S = T + (visual_tokens-1) * images, padded);
                                   // at padding positions they depend on ModelInputs::padding_attention
  torch::Tensor loss;              // mean shifted CE over labels != -100 (undefined without labels)
  torch::Tensor loss_sum;          // sum of the per-token CE (for global-token normalization across micro-batches)
  torch::Tensor num_label_tokens;  // int64 scalar tensor: count of supervised shifted tokens
  torch::Tensor attention_mask, modality, position_ids;  // [B,S] after splicing (modality 0 text, 1 image)
  torch::Tensor labels;            // [B,S] spliced labels (-100 on image and padding positions); undefined without labels
};

// The spliced decoder input of a batch (built by splice_inputs).
struct SplicedBatch {
  torch::Tensor inputs_embeds_BSD;
  torch::Tensor attention_mask_BS;  // bool
  torch::Tensor modality_BS;        // int64, 0 text, 1 image
  torch::Tensor position_ids_BS;    // int64, 0 at each sample's first real token
  torch::Tensor labels_BS;          // int64 or undefined
  torch::Tensor segment_ids_BS;     // int64 (-1 on padding); defined only when some row holds several samples
  // With segment_ids_BS, for right-padded rows whose pads predict no label: each sample's span, so attention
  // runs per sample (kCausalWhenExact) instead of through the block-diagonal mask. Null otherwise.
  std::shared_ptr<const SegmentSpans> spans;
  bool has_padding = true;          // false: every position is a real token
  bool causal_is_exact = false;     // is_causal without a mask gives every real position and the loss exactly:
                                    // each row is real tokens then padding, and no pad predicts a label
  ModalityRouting routing;
};

// `model`: LlamaModel plus the vision tower and the abstractor, as in the checkpoint. Constructors of this
// module tree only register parameters (uninitialised): call init_weights (owl2/model/init.h) or load weights.
class MPLUGOwl2ModelImpl : public torch::nn::Module {
 public:
  explicit MPLUGOwl2ModelImpl(const ModelConfig& cfg);

  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};  // of DecoderLayer
  RMSNorm norm{nullptr};
  VisionModel vision_model{nullptr};
  VisualAbstractor visual_abstractor{nullptr};
};
TORCH_MODULE(MPLUGOwl2Model);

class MPLUGOwl2ForCausalLMImpl : public torch::nn::Module {
 public:
  explicit MPLUGOwl2ForCausalLMImpl(const ModelConfig& cfg);

  ModelOutput forward(const ModelInputs& inputs);

  // images [N,C,H,W] -> visual tokens [N,V,D] (ViT, abstractor, visual_fc, vit_eos).
  torch::Tensor encode_images(const torch::Tensor& images_NCHW);
  // Embeds the text, splices the visual tokens, builds masks, modality, positions and labels. One host sync
  // (placeholder counts and the routing indices). Throws if placeholders and images disagree.
  SplicedBatch splice_inputs(const ModelInputs& inputs);
  // The decoder on spliced embeddings: final-norm hidden states [B,S,D]. A defined attention mask builds the
  // explicit causal + padding mask (block-diagonal with segment ids: each sample of a packed row sees only
  // itself); an undefined one runs SDPA with is_causal and no mask (exact without padding and, for the real
  // positions, with right padding; see SplicedBatch::causal_is_exact).
  torch::Tensor decode(const torch::Tensor& inputs_embeds_BSD, const torch::Tensor& attention_mask_BS,
                       const torch::Tensor& position_ids_BS, const ModalityRouting& routing,
                       const torch::Tensor& segment_ids_BS = {}, std::shared_ptr<const SegmentSpans> spans = nullptr);
  // The decoder over S new positions with a KV cache (spec §1.4, §6): their keys / values are appended to
  // `cache` and they attend to every valid cached position. valid_BS marks real new tokens (left padding of a
  // prefill is false). Returns final-norm hidden states [B,S,D]; the training path (decode) is untouched.
  torch::Tensor decode_cached(const torch::Tensor& inputs_embeds_BSD, const torch::Tensor& valid_BS,
                              const torch::Tensor& position_ids_BS, const ModalityRouting& routing, KVCache& cache);
  DecoderLayer decoder_layer(int64_t i) const { return DecoderLayer(model->layers->ptr<DecoderLayerImpl>(i)); }

  ModelConfig cfg;
  MPLUGOwl2Model model{nullptr};
  Linear lm_head{nullptr};
  BlockRunner decoder_block_runner;  // empty: decoder layers run directly (see model->vision_model->block_runner)
};
TORCH_MODULE(MPLUGOwl2ForCausalLM);

// Every parameter name and shape of the model for `cfg`, derived from the config alone (no allocation);
// tests check it against named_parameters() of a built model. Used by `owl2 inspect`.
struct ParameterShape {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
};
std::vector<ParameterShape> parameter_shapes(const ModelConfig& cfg);

}  // namespace owl2
