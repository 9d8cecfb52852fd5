// The first ten training losses of the tiny golden model equal those of the Python reference trained with
// torch.optim.AdamW on the same batch (scripts/make_train_golden.py).
#include <catch2/catch.hpp>

#include "owl2/model/model.h"
#include "tests/golden_io.h"
#include "trainers/trainer.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_train_golden {

using namespace owl2;

TEST_CASE("first ten losses match the Python reference with the same weights, data and recipe", "[train][golden]") {
  const auto golden = owl2::test::read_golden("tests/golden/model_tiny.safetensors");
  const auto expect = owl2::test::read_golden("tests/golden/train_tiny.safetensors");
  MPLUGOwl2ForCausalLM model(owl2::test::tiny_golden_config());
  model->to(torch::kFloat64);
  owl2::test::load_golden_weights(*model, golden);

  RunConfig cfg;
  cfg.model = owl2::test::tiny_golden_config();
  cfg.optim.lr = 1e-3;
  cfg.optim.min_lr = 1e-4;
  cfg.optim.warmup_steps = 3;
  cfg.optim.betas = {0.9, 0.98};
  cfg.optim.eps = 1e-6;
  cfg.optim.weight_decay = 0.05;
  cfg.optim.grad_clip = 1.0;
  cfg.optim.vision_layer_decay = 1.0;
  cfg.train.steps = 10;
  Trainer trainer(*model, [&](const Batch& b) {
    return model->forward({b.input_ids, b.attention_mask, b.images, b.labels}).loss_sum;
  }, cfg);

  Batch b;
  b.input_ids = golden.at("in.input_ids");
  b.attention_mask = golden.at("in.attention_mask");
  b.labels = golden.at("in.labels");
  b.images = golden.at("in.images");
  b.samples = 3;
  const auto losses = expect.at("losses");
  REQUIRE(losses.numel() == 10);
  for (int64_t s = 0; s < 10; ++s) {
    const double got = trainer.step({b}).loss;
    INFO("step " << s);
    CHECK(std::abs(got - losses[s].item<double>()) < 1e-9);
  }
  CHECK(owl2::test::max_abs_diff(model->lm_head->weight, expect.at("w.lm_head.weight")) < 1e-9);
}

}  // namespace owl2_test_train_golden
