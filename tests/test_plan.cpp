// owl2 plan: memory per device under each ZeRO stage, and input validation.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>

#include "tests/helpers.h"
#include "trainers/param_rules.h"
#include "trainers/plan.h"
#include "owl2/model/lora.h"
#include "trainers/setup.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_plan {

using Catch::Matchers::Contains;
using namespace owl2;

namespace {
RunConfig tiny_run() {
  RunConfig cfg = parse_config_text("train: {global_batch_size: 8, micro_batch_size: 2, max_length: 64}");
  cfg.freeze = {{"model.vision_model.*", true}, {"*", false}};
  return cfg;
}
const NamedSizes kParams = {{"model.vision_model.embeddings.cls_token", 100},
                            {"model.layers.0.mlp.up_proj.weight", 300},
                            {"lm_head.weight", 600}};
}  // namespace

TEST_CASE("plan: weights, gradients and optimizer state per device under each ZeRO stage", "[plan]") {
  const auto cfg = tiny_run();
  auto p0 = make_plan(cfg, kParams, {1, 0});
  CHECK(p0.total_params == 1000);
  CHECK(p0.trainable_params == 100);
  CHECK(p0.weights_bytes == 4000);   // fp32
  CHECK(p0.grads_bytes == 400);      // trainable only
  CHECK(p0.optimizer_bytes == 800);  // two fp32 moments
  auto p1 = make_plan(cfg, kParams, {2, 1});
  CHECK(p1.optimizer_bytes == 400);
  CHECK(p1.grads_bytes == 600);  // the gradient shard (50) and the full bucket stage 1 keeps for its all-reduce (100)
  auto p3 = make_plan(cfg, kParams, {2, 3});
  CHECK(p3.zero3_sharded_params == 300);  // the frozen decoder layer too, in a shard of its own
  // Nothing replicated: the trainable cls_token lives as its slice of the parameter shard (50 of its 100) between
  // steps; the frozen layer and the frozen lm_head (outside blocks) as their slices of the frozen shard (150 of 300,
  // 300 of 600).
  CHECK(p3.held.weights == (300 + 50 + 150) * 4);
  // The layer gathered and a prefetch of up to its size; the root unit (cls_token and lm_head) gathered for the step.
  CHECK(p3.zero3_gathered_bytes == (2 * 300 + 100 + 600) * 4);
  CHECK(p3.grads_bytes == 200);
  CHECK(p3.flops_per_step == Approx(p0.flops_per_step / 2));
  CHECK(p0.activations_checkpointed_bytes < p0.activations_bytes);
  CHECK_THAT(p0.report, Contains("model.vision_model") && Contains("lm_head") && Contains("total"));
  CHECK_THAT(p0.report, Contains("moved to the device whole"));
  auto cfg16 = cfg;
  cfg16.train.precision = Precision::kBf16;
  auto pb = make_plan(cfg16, kParams, {1, 0});
  CHECK(pb.weights_bytes == 2000);
  CHECK(pb.optimizer_bytes == 1200);  // + fp32 master weights
}

TEST_CASE("plan: impossible inputs are errors with the numbers", "[plan]") {
  const auto cfg = tiny_run();
  REQUIRE_THROWS_WITH(make_plan(cfg, kParams, {3, 0}),
                      Contains("train.global_batch_size 8 is not a multiple of train.micro_batch_size 2 x world size 3"));
  REQUIRE_THROWS_WITH(make_plan(cfg, kParams, {1, 4}), Contains("ZeRO stage must be 0, 1, 2 or 3, got 4"));
  REQUIRE_THROWS_WITH(make_plan(cfg, kParams, {0, 0}), Contains("world size must be >= 1, got 0"));
}

TEST_CASE("plan: the ZeRO stage comes from distributed.zero_stage unless given", "[plan]") {
  auto cfg = tiny_run();
  cfg.distributed.zero_stage = 2;
  const auto from_config = make_plan(cfg, kParams, {2});  // zero_stage -1: the config's
  CHECK(from_config.optimizer_bytes == 400);
  CHECK(from_config.grads_bytes == 200);
  CHECK(from_config.weights_bytes == 4000);
  CHECK_THAT(from_config.report, Contains("ZeRO stage 2"));
  const auto given = make_plan(cfg, kParams, {2, 0});
  CHECK(given.optimizer_bytes == 800);
  CHECK(given.grads_bytes == 400);
}

TEST_CASE("plan: ZeRO 3 shards the block parameters and holds a block gathered and one prefetched", "[plan]") {
  auto cfg = tiny_run();
  cfg.freeze = {{"*", true}};
  const NamedSizes params = {{"model.vision_model.embeddings.cls_token", 100},
                             {"model.vision_model.encoder.layers.0.mlp.fc1.weight", 60},
                             {"model.layers.0.mlp.up_proj.weight", 300},
                             {"model.layers.1.mlp.up_proj.weight", 200},
                             {"model.layers.1.self_attn.q_proj.weight", 200},
                             {"model.norm.weight", 50},
                             {"lm_head.weight", 600}};
  const auto p = make_plan(cfg, params, {4, 3});
  CHECK(p.zero3_sharded_params == 760);  // a ViT block too; its embeddings stay replicated
  CHECK(p.zero3_largest_block == 400);  // model.layers.1
  // Everything trains, so between steps a rank holds only the shard: each bucket padded to a multiple of 4 ranks,
  // a quarter of it per rank (the root's bucket 750 -> 752, the blocks 60, 300 and 400). During a step: a
  // gathered block and a prefetched one of up to 400, and the root's 750.
  CHECK(p.held.weights == (752 + 60 + 300 + 400) / 4 * 4);
  CHECK(p.zero3_gathered_bytes == (2 * 400 + 750) * 4);
  CHECK(p.weights_bytes == double(p.held.weights + p.zero3_gathered_bytes));
  CHECK_THAT(p.report, Contains("760 ViT, abstractor and decoder block parameters sharded"));
  // 1,610 float32 parameters built on the host; the largest that reaches the device whole is lm_head's 600.
  CHECK_THAT(p.report, Contains("one float32 parameter at a time (the largest 0.00 GiB)") &&
                           Contains("no whole model anywhere"));
  // Frozen, the same blocks are still sharded (in a shard of their own, no optimizer state); the gathered block
  // holds its trainable and frozen buckets together.
  auto frozen = cfg;
  frozen.freeze = {{"model.layers.1.mlp.*", false}, {"model.vision_model.encoder.*", false}, {"*", true}};
  const auto f = make_plan(frozen, params, {4, 3});
  CHECK(f.zero3_sharded_params == 760);
  CHECK(f.trainable_params == 1510 - 260);
  // Shards: trainable 752 / 4 + 300 / 4 + 200 / 4; frozen 60 / 4 + 200 / 4.
  CHECK(f.held.weights == ((752 + 300 + 200) / 4 + (60 + 200) / 4) * 4);
  CHECK(f.zero3_gathered_bytes == (2 * (200 + 200) + 750) * 4);
}

TEST_CASE("plan: the parameters it shards at ZeRO 3 are those the trainer's sharded stacks hold", "[plan]") {
  const std::string dir = test::temp_dir("owl2_plan_zero3");
  std::ofstream(dir + "/run.yaml") << "include: " << test::source_path("configs/model/tiny.yaml") << "\n"
                                   << "distributed: {zero_stage: 3}\n"
                                   << "freeze: [{pattern: 'model.layers.*.multiway.1.*', trainable: false},"
                                   << " {pattern: 'model.layers.1.mlp.*', trainable: false}, {pattern: '*'}]\n";
  const RunConfig cfg = load_config(dir + "/run.yaml", {});
  auto model = build_model(cfg, {.load_init = false});
  apply_freeze_rules(*model, cfg.freeze);
  const auto policies = apply_training_policies(model, cfg);
  // What the trainer shards: the parameters of its stacks' blocks, trainable or frozen (ZeroOptimizer, stage 3).
  int64_t trainer = 0, largest = 0;
  for (const auto& stack : policies.sharded_stacks) {
    for (const auto& block : stack.blocks) {
      int64_t n = 0;
      for (const auto& t : block->parameters()) n += t.numel();
      trainer += n;
      largest = std::max(largest, n);
    }
  }
  NamedSizes sizes;
  for (const auto& item : model->named_parameters()) sizes.emplace_back(item.key(), item.value().numel());
  const auto plan = make_plan(cfg, sizes, {2, 3});
  REQUIRE(trainer > 0);
  CHECK(plan.zero3_sharded_params == trainer);
  CHECK(plan.zero3_largest_block == largest);
  CHECK(plan.zero3_sharded_params < plan.total_params);  // embeddings, lm_head, norms: the root, outside blocks
  REQUIRE(policies.sharded_stacks.size() == 3);  // the ViT, abstractor and decoder layers
  CHECK(policies.sharded_stacks[0].name == "vision");
  CHECK(policies.sharded_stacks[1].name == "abstractor");
}

TEST_CASE("plan: 7B stage-2 LoRA (rank 64) counts its adapters and fits a 40 GB GPU at sequence 2048", "[plan][lora]") {
  const RunConfig cfg = load_config(owl2::test::source_path("configs/owl2-7b/lora.yaml"));
  REQUIRE(cfg.lora.rank == 64);
  auto shapes = parameter_shapes(cfg.model);
  const auto adapters = lora_parameter_shapes(shapes, cfg.lora);
  shapes.insert(shapes.end(), adapters.begin(), adapters.end());
  NamedSizes sizes;
  for (const auto& p : shapes) sizes.emplace_back(p.name, p.numel());
  const Plan plan = make_plan(cfg, sizes, {1, 0});
  // Per layer, rank x (in + out) for q and o (4096 -> 4096), the four k / v copies (4096 -> 4096), gate and up
  // (4096 -> 11008) and down (11008 -> 4096); 32 layers.
  const int64_t per_layer = 64 * (6 * (4096 + 4096) + 3 * (4096 + 11008));
  int64_t adapter_params = 0;
  for (const auto& [name, n] : sizes) adapter_params += is_lora_parameter(name) ? n : 0;
  CHECK(adapter_params == 32 * per_layer);
  CHECK(adapters.size() == 2 * 32 * 9);
  // Trainable: the adapters and the abstractor (lora.modules_to_save); the rest is frozen.
  int64_t abstractor = 0;
  for (const auto& c : plan.components) abstractor += c.name == "model.visual_abstractor" ? c.params : 0;
  CHECK(plan.trainable_params == adapter_params + abstractor);
  const double total = plan.weights_bytes + plan.grads_bytes + plan.optimizer_bytes + plan.activations_checkpointed_bytes;
  CHECK(total < 40e9);
  CHECK(plan.weights_bytes == Approx(2.0 * double(plan.total_params)));  // the frozen base in bf16
  CHECK_THAT(plan.report, Contains("LoRA rank 64 (alpha 128): 193462272 adapter parameters on 288 modules"));
}

}  // namespace owl2_test_plan
