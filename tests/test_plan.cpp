// owl2 plan: memory per device under each ZeRO stage, and input validation.
#include <catch2/catch.hpp>

#include "trainers/plan.h"

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
  CHECK(p1.grads_bytes == 400);
  auto p3 = make_plan(cfg, kParams, {2, 3});
  CHECK(p3.weights_bytes == 2000);
  CHECK(p3.grads_bytes == 200);
  CHECK(p3.flops_per_step == Approx(p0.flops_per_step / 2));
  CHECK(p0.activations_checkpointed_bytes < p0.activations_bytes);
  CHECK_THAT(p0.report, Contains("model.vision_model") && Contains("lm_head") && Contains("total"));
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

}  // namespace owl2_test_plan
