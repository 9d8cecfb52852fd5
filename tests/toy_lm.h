// Tiny language models (one with a block stack) and batches for trainer tests (names follow the reference
// checkpoint style).
#pragma once
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "data/batch.h"
#include "owl2/model/block_runner.h"
#include "trainers/config.h"
#include "trainers/parallel/zero3.h"

namespace owl2::test {

using owl2::Batch;

// A tiny language model with reference-style names: model.embed_tokens, model.norm_like, lm_head.
struct ToyLM : torch::nn::Module {
  explicit ToyLM(double dropout = 0.1) : dropout(dropout) {
    torch::manual_seed(0);
    auto model = register_module("model", std::make_shared<torch::nn::Module>());
    embed = model->register_module("embed_tokens", torch::nn::Embedding(16, 8));
    proj = model->register_module("proj", torch::nn::Linear(8, 8));
    head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(8, 16).bias(false)));
    to(torch::kFloat64);
  }
  // Summed shifted cross-entropy; dropout makes the loss depend on the RNG stream (for the resume test).
  torch::Tensor loss_sum(const Batch& b) {
    auto h = torch::tanh(proj(embed(b.input_ids)));
    if (dropout > 0) h = torch::dropout(h, dropout, /*train=*/true);
    auto logits = head(h).slice(1, 0, -1);
    auto labels = b.labels.slice(1, 1);
    return torch::nn::functional::cross_entropy(
        logits.reshape({-1, 16}), labels.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  }
  torch::nn::Embedding embed{nullptr};
  torch::nn::Linear proj{nullptr}, head{nullptr};
  double dropout;
};

// ToyLM with a stack of 3 residual blocks run through a BlockRunner (ZeRO 3 shards them): each block has
// 64 + 8 + 1 = 73 parameters, which 2 ranks split into padded slices of 37.
struct StackBlock : torch::nn::Module {
  StackBlock() {
    lin = register_module("lin", torch::nn::Linear(8, 8));
    scale = register_parameter("scale", torch::full({1}, 0.5));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + scale * torch::tanh(lin(x)); }
  torch::nn::Linear lin{nullptr};
  torch::Tensor scale;
};

struct StackLM : torch::nn::Module {
  static constexpr int64_t kBlocks = 3;
  StackLM() {
    torch::manual_seed(0);
    auto model = register_module("model", std::make_shared<torch::nn::Module>());
    embed = model->register_module("embed_tokens", torch::nn::Embedding(16, 8));
    layers = model->register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < kBlocks; ++i) layers->push_back(std::make_shared<StackBlock>());
    head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(8, 16).bias(false)));
    to(torch::kFloat64);
  }
  torch::Tensor loss_sum(const Batch& b) {
    auto h = embed(b.input_ids);
    for (int64_t i : order) {
      auto block = layers->ptr<StackBlock>(i);
      h = run_block(runner, i, [block](const std::vector<torch::Tensor>& in) { return block->forward(in[0]); }, {h});
    }
    auto logits = head(h).slice(1, 0, -1);
    return torch::nn::functional::cross_entropy(
        logits.reshape({-1, 16}), b.labels.slice(1, 1).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  }
  ShardedStack stack() {
    ShardedStack s{"layers", {}, &runner};
    for (int64_t i = 0; i < kBlocks; ++i) s.blocks.push_back(layers->ptr(i));
    return s;
  }
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::Linear head{nullptr};
  BlockRunner runner;
  std::vector<int64_t> order = {0, 1, 2};  // the blocks a pass runs
};

inline Batch make_batch(int64_t b, int64_t t, int64_t seed, int64_t masked = 0) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  Batch out;
  out.input_ids = torch::randint(0, 16, {b, t}, g, torch::kInt64);
  out.labels = out.input_ids.clone();
  if (masked > 0) out.labels.slice(1, 0, masked).fill_(-100);  // uneven supervised counts across micro-batches
  out.attention_mask = torch::ones({b, t}, torch::kInt64);
  out.samples = b;
  return out;
}

inline Batch cat(const Batch& a, const Batch& b) {
  Batch out;
  out.input_ids = torch::cat({a.input_ids, b.input_ids});
  out.labels = torch::cat({a.labels, b.labels});
  out.attention_mask = torch::cat({a.attention_mask, b.attention_mask});
  out.samples = a.samples + b.samples;
  return out;
}

inline RunConfig toy_config() {
  RunConfig cfg;
  cfg.optim.lr = 1e-2;
  cfg.optim.min_lr = 1e-3;
  cfg.optim.warmup_steps = 2;
  cfg.optim.vision_layer_decay = 1.0;
  cfg.param_groups = {{"no_decay", "*.bias", 1.0, 0.0}, {"default", "*", 1.0, std::nullopt}};
  cfg.train.steps = 10;
  return cfg;
}

}  // namespace owl2::test
