// Memory and FLOP estimates per device; formulas in docs/plan.md.
#include "trainers/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <stdexcept>

#include "trainers/param_rules.h"
#include "trainers/parallel/zero.h"
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

// The trainable parameters (indices into params) in the order the optimizer lists them: by parameter group.
std::vector<size_t> optimizer_order(const RunConfig& cfg, const NamedSizes& params, const std::vector<uint8_t>& trainable) {
  std::vector<std::string> names;
  std::vector<size_t> index;
  for (size_t k = 0; k < params.size(); ++k) {
    if (!trainable[k]) continue;
    names.push_back(params[k].first);
    index.push_back(k);
  }
  std::vector<size_t> out;
  // Only the order matters here: a group rule that matches nothing is the trainer's error to report.
  for (const auto& g : assign_param_groups(names, cfg.param_groups, cfg.optim.weight_decay, cfg.optim.vision_layer_decay,
                                           cfg.model.vision.num_hidden_layers, /*drop_unmatched=*/true)) {
    for (size_t m : g.members) out.push_back(index[m]);
  }
  return out;
}

std::vector<uint8_t> trainable_flags(const RunConfig& cfg, const NamedSizes& params) {
  const auto freeze = effective_freeze_rules(cfg);
  std::vector<uint8_t> out;
  for (const auto& [name, numel] : params) {
    bool trainable = false;
    for (const auto& r : freeze) {
      if (glob_match(r.pattern, name)) {
        trainable = r.trainable;
        break;
      }
    }
    out.push_back(trainable ? 1 : 0);
  }
  return out;
}

// Bytes per element of the gradient buckets under ZeRO: distributed.reduce_dtype with bf16's float32 masters,
// else the trainable parameters' float32.
int64_t reduce_bytes(const RunConfig& cfg) {
  return cfg.train.precision == Precision::kBf16 && cfg.distributed.reduce_dtype == ReduceDtype::kBf16 ? 2 : 4;
}

// The ZeRO layouts as the ZeroOptimizer builds them: the trainable parameters (in optimizer order) in gradient
// buckets, at stage 3 a bucket per block; the frozen parameters (stage 3) in a bucket per block of their own and
// one for those outside blocks; and the largest block's two padded buckets together, in elements (what gathering it
// holds).
struct ZeroShape {
  ZeroLayout layout, frozen;
  int64_t largest_gathered_block = 0;
  int64_t frozen_root_padded = 0;  // stage 3: the frozen parameters outside blocks, their padded bucket
};

ZeroShape zero_layout(const RunConfig& cfg, const NamedSizes& params, const std::vector<uint8_t>& trainable,
                      const std::vector<size_t>& order, int stage, int64_t world, int64_t reduce_bytes,
                      int64_t compute_bytes) {
  std::map<std::string, int64_t> block_ids;  // any numbering: a block's buckets hold its own parameters only
  auto block_of = [&](const std::string& name) -> int64_t {
    if (stage != 3 || !zero3_shards(name)) return -1;
    return block_ids.emplace(zero3_block(name), int64_t(block_ids.size())).first->second;
  };
  std::vector<int64_t> numels, blocks, frozen_numels, frozen_blocks;
  for (size_t k : order) {
    numels.push_back(params[k].second);
    blocks.push_back(block_of(params[k].first));
  }
  for (size_t k = 0; k < params.size(); ++k) {
    if (!trainable[k]) block_of(params[k].first);  // every block numbered before the root's frozen bucket
  }
  const auto root = static_cast<int64_t>(block_ids.size());
  for (size_t k = 0; k < params.size(); ++k) {
    if (trainable[k] || stage != 3) continue;
    // Frozen: in its block's frozen bucket, or (outside blocks) in the root's, after the blocks'.
    const int64_t b = block_of(params[k].first);
    frozen_numels.push_back(params[k].second);
    frozen_blocks.push_back(b < 0 ? root : b);
  }
  const auto bucket_bytes = static_cast<int64_t>(cfg.distributed.bucket_mb * (1 << 20));
  ZeroShape out{ZeroLayout(numels, reduce_bytes, world, 0, bucket_bytes, blocks),
                ZeroLayout(frozen_numels, compute_bytes, world, 0, 1, frozen_blocks), 0};
  if (static_cast<size_t>(root) < out.frozen.buckets.size())
    out.frozen_root_padded = out.frozen.buckets[static_cast<size_t>(root)].padded_numel;
  for (int64_t b = 0; b < root; ++b) {
    const auto t = static_cast<size_t>(out.layout.plain_buckets + b), f = static_cast<size_t>(b);
    const int64_t n = (t < out.layout.buckets.size() ? out.layout.buckets[t].padded_numel : 0) +
                      (f < out.frozen.buckets.size() ? out.frozen.buckets[f].padded_numel : 0);
    out.largest_gathered_block = std::max(out.largest_gathered_block, n);
  }
  return out;
}

}  // namespace

RankBytes rank_bytes_between_steps(const RunConfig& cfg, const NamedSizes& params, int stage, int64_t world) {
  if (world < 1) throw std::invalid_argument(fmt::format("world size must be >= 1, got {}", world));
  if (stage < 0 || stage > 3) throw std::invalid_argument(fmt::format("ZeRO stage must be 0, 1, 2 or 3, got {}", stage));
  const bool bf16 = cfg.train.precision == Precision::kBf16;
  const int64_t compute = bf16 ? 2 : 4, fp32 = 4;  // bf16: every floating parameter is cast; else float32
  const auto trainable = trainable_flags(cfg, params);
  int64_t P = 0, T = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    P += params[k].second;
    T += trainable[k] ? params[k].second : 0;
  }
  RankBytes r;
  if (stage == 0) {
    // ReplicatedSync / DataParallelSync: torch AdamW's two moments; bf16 adds MixedPrecision's float32 masters,
    // whose float32 gradients replace the model's. Several ranks: the gradients live in the data-parallel buckets
    // (the model's .grad are views of them), in the model's dtype.
    r.weights = P * compute;
    r.optimizer = 2 * T * fp32 + (bf16 ? T * fp32 : 0);
    if (world == 1) {
      r.grads = T * fp32;
    } else {
      r.grads = T * compute + (bf16 ? T * fp32 : 0);
    }
    return r;
  }
  // ZeroOptimizer: the shards are float32 (the masters under bf16, else the float32 parameters).
  const bool masters = bf16;
  const int64_t reduce = reduce_bytes(cfg);
  const auto z = zero_layout(cfg, params, trainable, optimizer_order(cfg, params, trainable), stage, world, reduce, compute);
  const int64_t shard = z.layout.shard_numel * fp32;
  // Stage 3 releases every parameter between steps (the blocks' and the root's, trainable or frozen): the model
  // holds none in full.
  if (stage != 3) r.weights += P * compute;
  r.weights += z.frozen.shard_numel * compute;  // stage 3: the frozen parameters' shard
  r.grads = shard;
  if (stage == 1) {  // the full buckets stay for the next step's reduction and the parameters' all-gather
    for (int64_t b = 0; b < z.layout.plain_buckets; ++b) r.grads += z.layout.buckets[static_cast<size_t>(b)].padded_numel * reduce;
  }
  r.optimizer = 2 * shard;
  if (masters || stage == 3) (masters ? r.optimizer : r.weights) += shard;  // the parameter shard
  return r;
}

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
  const auto trainable_of = trainable_flags(cfg, params);
  for (size_t k = 0; k < params.size(); ++k) {
    const auto& [name, numel] = params[k];
    const bool trainable = trainable_of[k] != 0;
    if (in.zero_stage >= 3 && zero3_shards(name)) {
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
  // Between steps, exactly as the trainer holds it; at the peak, stage 3 adds the block that runs and the next
  // one's prefetch (bounded by twice the largest padded block).
  plan.held = rank_bytes_between_steps(cfg, params, in.zero_stage, in.world_size);
  if (in.zero_stage == 3) {
    const auto& trainable = trainable_of;
    const auto compute = static_cast<int64_t>(compute_bytes);
    const auto z = zero_layout(cfg, params, trainable, optimizer_order(cfg, params, trainable), 3, in.world_size,
                               reduce_bytes(cfg), compute);
    // The root, gathered for the whole step: the trainable parameters outside blocks, and the frozen ones' bucket.
    int64_t root = z.frozen_root_padded;
    for (size_t k = 0; k < params.size(); ++k) root += trainable[k] && !zero3_shards(params[k].first) ? params[k].second : 0;
    plan.zero3_gathered_bytes = (2 * z.largest_gathered_block + root) * compute;
  }
  plan.weights_bytes = double(plan.held.weights + plan.zero3_gathered_bytes);
  plan.grads_bytes = double(plan.held.grads);
  plan.optimizer_bytes = double(plan.held.optimizer);

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
  r += fmt::format("  held between steps {:>12} ({} bytes: weights {}, gradients {}, optimizer state {})\n",
                   gib(double(plan.held.total())), plan.held.total(), plan.held.weights, plan.held.grads,
                   plan.held.optimizer);
  r += fmt::format("  weights            {:>12}{}\n", gib(plan.weights_bytes),
                   in.zero_stage >= 3 ? fmt::format(" ({} ViT, abstractor and decoder block parameters sharded, "
                                                    "a block of up to {} gathered and the next prefetched; the "
                                                    "rest sharded too and gathered for the step)",
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
  int64_t largest = 0;
  for (const auto& [name, numel] : params) largest = std::max(largest, numel);
  const double host = 4.0 * double(plan.total_params);  // built in float32 (build_model)
  r += in.zero_stage >= 3
           ? fmt::format("  start-up           one float32 parameter at a time (the largest {}) is written on the host "
                         "and taken into this rank's shards on the device; no whole model anywhere (with "
                         "init.allow_missing the host first holds it whole: {})\n",
                         gib(4.0 * double(largest)), gib(host))
           : fmt::format("  start-up           the model is built in float32 on the host and moved to the device whole "
                         "({} per rank)\n",
                         gib(host));
  r += fmt::format("model FLOPs per step per device: {:.4g} ({:.4g} per sample)\n", plan.flops_per_step, per_sample);
  return plan;
}

}  // namespace owl2
