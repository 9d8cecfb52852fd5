// Memory and FLOP estimates per device; formulas in docs/plan.md.
#include "trainers/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <stdexcept>

#include "trainers/param_rules.h"
#include "trainers/sharding.h"

namespace owl2 {
namespace {

std::string gib(double bytes) { return fmt::format("{:.2f} GiB", bytes / double(1ull << 30)); }

// Forward FLOPs and saved-activation bytes per token of one transformer stack (see docs/plan.md).
struct Stack {
  double params = 0;          // weights the tokens go through
  double tokens = 0;          // per sample
  double attn_keys = 0;       // keys each query attends to
  double layers = 0, width = 0, heads = 0, inner = 0;
  double trainable = 0;
  bool swiglu = false;
  double forward_flops() const { return 2 * params * tokens + 4 * layers * tokens * attn_keys * width; }
  // Activations saved for backward, in elements: per layer and token about 7 widths plus the MLP
  // intermediates (4 for SwiGLU, 2 for GELU), plus attention probabilities when the math path is used.
  double activation_elems(bool math_attention) const {
    const double per_token = 7 * width + (swiglu ? 4 : 2) * inner;
    return layers * (tokens * per_token + (math_attention ? heads * tokens * attn_keys : 0));
  }
};

}  // namespace

Plan make_plan(const RunConfig& cfg, const NamedSizes& params, const PlanInputs& inputs) {
  PlanInputs in = inputs;
  if (in.zero_stage == -1) in.zero_stage = static_cast<int>(cfg.distributed.zero_stage);
  if (in.world_size < 1) throw std::invalid_argument(fmt::format("world size must be >= 1, got {}", in.world_size));
  if (in.zero_stage < 0 || in.zero_stage > 3) {
    throw std::invalid_argument(fmt::format("ZeRO stage must be 0, 1, 2 or 3, got {}", in.zero_stage));
  }
  const auto& m = cfg.model;
  const auto& t = cfg.train;
  if (t.global_batch_size % (t.micro_batch_size * in.world_size) != 0) {
    throw std::invalid_argument(fmt::format(
        "train.global_batch_size {} is not a multiple of train.micro_batch_size {} x world size {}",
        t.global_batch_size, t.micro_batch_size, in.world_size));
  }
  Plan plan;
  std::map<std::string, ComponentCount> comps;
  std::map<std::string, int64_t> block_sizes;  // ZeRO 3: sharded parameters per block
  std::vector<std::string> order;
  const auto freeze = effective_freeze_rules(cfg);
  for (const auto& [name, numel] : params) {
    bool trainable = false;
    for (const auto& r : freeze) {
      if (glob_match(r.pattern, name)) {
        trainable = r.trainable;
        break;
      }
    }
    if (in.zero_stage >= 3 && zero3_shards(name, trainable)) {
      plan.zero3_sharded_params += numel;
      block_sizes[zero3_block(name)] += numel;
    }
    const std::string top = top_level(name);
    if (!comps.count(top)) order.push_back(top);
    auto& c = comps[top];
    c.name = top;
    c.params += numel;
    c.trainable += trainable ? numel : 0;
    plan.total_params += numel;
    plan.trainable_params += trainable ? numel : 0;
  }
  for (const auto& n : order) plan.components.push_back(comps[n]);
  auto params_of = [&](const std::string& prefix, bool trainable_only) {
    double n = 0;
    for (const auto& c : plan.components) {
      if (c.name.rfind(prefix, 0) == 0) n += double(trainable_only ? c.trainable : c.params);
    }
    return n;
  };

  const bool bf16 = t.precision == Precision::kBf16;
  const double compute_bytes = bf16 ? 2 : 4;
  const double W = double(in.world_size);
  const double P = double(plan.total_params), T = double(plan.trainable_params);
  for (const auto& [block, n] : block_sizes) plan.zero3_largest_block = std::max(plan.zero3_largest_block, n);
  // Stage 3: the sharded parameters as this rank's slices, plus the block that runs and the next one's prefetch
  // (bounded by twice the largest block); the rest replicated.
  const double S3 = double(plan.zero3_sharded_params);
  plan.weights_bytes = ((P - S3) + S3 / W + 2.0 * double(plan.zero3_largest_block)) * compute_bytes;
  plan.grads_bytes = T * 4 / (in.zero_stage >= 2 ? W : 1);                       // fp32 accumulation
  plan.optimizer_bytes = T * (8 + (bf16 ? 4 : 0)) / (in.zero_stage >= 1 ? W : 1);  // moments (+ fp32 master)

  // Token counts per sample.
  const double images = double(in.images_per_sample);
  const double vis_tokens = double(m.vision.num_positions());
  const double dec_tokens = in.text_tokens > 0 ? double(in.text_tokens) + images * double(m.visual_tokens_per_image())
                                               : double(t.max_length);
  Stack vit{params_of("model.vision_model", false), images * vis_tokens, vis_tokens,
            double(m.vision.num_hidden_layers), double(m.vision.hidden_size), double(m.vision.num_attention_heads),
            double(m.vision.intermediate_size), params_of("model.vision_model", true), false};
  const double queries = double(m.abstractor.num_learnable_queries);
  Stack abs{params_of("model.visual_abstractor", false), images * queries, queries + vis_tokens,
            double(m.abstractor.num_hidden_layers), double(m.abstractor.hidden_size),
            double(m.abstractor.num_attention_heads), double(m.abstractor.intermediate_size),
            params_of("model.visual_abstractor", true), true};
  const double dec_params = P - vit.params - abs.params;
  Stack dec{dec_params - params_of("model.embed_tokens", false), dec_tokens, dec_tokens / 2,  // causal: half the keys
            double(m.decoder.num_hidden_layers), double(m.decoder.hidden_size), double(m.decoder.num_attention_heads),
            double(m.decoder.intermediate_size), T - vit.trainable - abs.trainable, true};

  // Backward factor: 1 for the activation gradients when anything in or below the stack trains (0 otherwise),
  // plus the trainable fraction of its weights for the weight gradients (1 when all train; a LoRA-adapted stack
  // computes only its adapters' weight gradients).
  const bool vit_bwd = vit.trainable > 0;
  const bool abs_bwd = vit_bwd || abs.trainable > 0;
  const bool dec_bwd = abs_bwd || dec.trainable > 0;
  auto train_flops = [](const Stack& s, bool through) {
    const double weight_grads = s.params > 0 ? std::min(1.0, s.trainable / s.params) : 0.0;
    return s.forward_flops() * (1 + (through || s.trainable > 0 ? 1 : 0) + weight_grads);
  };
  const double per_sample = train_flops(vit, vit_bwd) + train_flops(abs, abs_bwd) + train_flops(dec, dec_bwd);
  plan.flops_per_step = per_sample * double(t.global_batch_size) / W;

  // Activations of one micro-batch. With checkpointing a stack keeps its block inputs plus one block's
  // activations during the recompute.
  const bool math_attention = true;  // CPU: the math SDPA path keeps the probabilities
  const auto& ac = t.activation_checkpointing;
  const double b = double(t.micro_batch_size);
  auto act = [&](const Stack& s, bool ckpt) {
    const double full = s.activation_elems(math_attention);
    if (!ckpt) return full;
    return s.layers * s.tokens * s.width + full / s.layers;
  };
  const double logits = dec_tokens * double(m.decoder.vocab_size) * 2;  // logits and their fp32 softmax
  plan.activations_bytes =
      b * compute_bytes * (act(vit, false) + act(abs, false) + act(dec, false) + logits);
  plan.activations_checkpointed_bytes =
      b * compute_bytes * (act(vit, ac.vision) + act(abs, ac.abstractor) + act(dec, ac.decoder) + logits);

  std::string& r = plan.report;
  r += fmt::format("{:<28} {:>16} {:>16}\n", "module", "parameters", "trainable");
  for (const auto& c : plan.components) r += fmt::format("{:<28} {:>16} {:>16}\n", c.name, c.params, c.trainable);
  r += fmt::format("{:<28} {:>16} {:>16}\n\n", "total", plan.total_params, plan.trainable_params);
  if (cfg.lora.rank > 0) {
    int64_t adapter_params = 0, adapter_tensors = 0;
    for (const auto& [name, numel] : params) {
      if (is_lora_parameter(name)) adapter_params += numel, ++adapter_tensors;
    }
    r += fmt::format("LoRA rank {} (alpha {}): {} adapter parameters on {} modules; {} more trainable in "
                     "lora.modules_to_save; the base is frozen in {}\n\n",
                     cfg.lora.rank, cfg.lora.alpha, adapter_params, adapter_tensors / 2,
                     plan.trainable_params - adapter_params, bf16 ? "bf16" : "fp32");
  }
  r += fmt::format("per device: world size {}, ZeRO stage {}, precision {}, micro-batch {}, {} decoder tokens/sample\n",
                   in.world_size, in.zero_stage, precision_name(t.precision), t.micro_batch_size,
                   static_cast<int64_t>(dec_tokens));
  r += fmt::format("  weights            {:>12}{}\n", gib(plan.weights_bytes),
                   in.zero_stage >= 3 ? fmt::format(" ({} trainable ViT, abstractor and decoder block parameters sharded, "
                                                    "a block of up to {} gathered and the next prefetched; the rest "
                                                    "replicated)",
                                                    plan.zero3_sharded_params, plan.zero3_largest_block)
                                      : std::string());
  r += fmt::format("  gradients          {:>12}\n", gib(plan.grads_bytes));
  r += fmt::format("  optimizer state    {:>12}\n", gib(plan.optimizer_bytes));
  r += fmt::format("  activations        {:>12} without checkpointing\n", gib(plan.activations_bytes));
  r += fmt::format("  activations        {:>12} with the configured checkpointing (vision {}, abstractor {}, decoder {})\n",
                   gib(plan.activations_checkpointed_bytes), ac.vision, ac.abstractor, ac.decoder);
  const double total = plan.weights_bytes + plan.grads_bytes + plan.optimizer_bytes;
  r += fmt::format("  total              {:>12} (with checkpointing), {} without\n",
                   gib(total + plan.activations_checkpointed_bytes), gib(total + plan.activations_bytes));
  r += fmt::format("model FLOPs per step per device: {:.4g} ({:.4g} per sample)\n", plan.flops_per_step, per_sample);
  return plan;
}

}  // namespace owl2
