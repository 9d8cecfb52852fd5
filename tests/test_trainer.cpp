// Trainer::step invariances: accumulation equals one big batch, frozen parameters stay bit-identical,
// exact resume, the non-finite guard, and AdamW's hyper-parameters reaching the update.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "trainers/trainer.h"
#include "tests/toy_lm.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_trainer {

using Catch::Matchers::Contains;
using namespace owl2;

using namespace owl2::test;

namespace {

double max_diff(torch::nn::Module& a, torch::nn::Module& b) {
  double d = 0;
  auto pa = a.named_parameters(), pb = b.named_parameters();
  for (const auto& item : pa) d = std::max(d, (item.value() - pb[item.key()]).abs().max().item<double>());
  return d;
}

}  // namespace

TEST_CASE("gradient accumulation over uneven micro-batches equals one batch", "[train]") {
  auto m1 = std::make_shared<ToyLM>();
  auto m2 = std::make_shared<ToyLM>();
  const auto cfg = toy_config();
  Trainer t1(*m1, [&](const Batch& b) { return m1->loss_sum(b); }, cfg);
  Trainer t2(*m2, [&](const Batch& b) { return m2->loss_sum(b); }, cfg);
  for (int step = 0; step < 3; ++step) {
    Batch a = make_batch(2, 6, 10 * step + 1, /*masked=*/3), b = make_batch(2, 6, 10 * step + 2);
    torch::manual_seed(step);  // dropout draws: one call over 4 rows == two calls over 2 rows each
    auto whole = t1.step({cat(a, b)});
    torch::manual_seed(step);
    auto split = t2.step({a, b});
    CHECK(whole.tokens == split.tokens);
    CHECK(whole.tokens == 2 * 3 + 2 * 5);  // rows of a: labels 1,2 masked
    CHECK(std::abs(whole.loss - split.loss) < 1e-12);
    CHECK(std::abs(whole.grad_norm - split.grad_norm) < 1e-12);
  }
  CHECK(max_diff(*m1, *m2) < 1e-12);
}

TEST_CASE("frozen parameters get no gradient and do not change by a single bit", "[train]") {
  auto m = std::make_shared<ToyLM>();
  auto cfg = toy_config();
  cfg.freeze = {{"model.embed_tokens.*", false}, {"*", true}};
  const auto before = m->embed->weight.clone();
  const auto head_before = m->head->weight.clone();
  Trainer t(*m, [&](const Batch& b) { return m->loss_sum(b); }, cfg);
  for (int s = 0; s < 3; ++s) t.step({make_batch(2, 6, s)});
  CHECK_FALSE(m->embed->weight.grad().defined());
  CHECK(torch::equal(m->embed->weight, before));
  CHECK_FALSE(torch::equal(m->head->weight, head_before));
  CHECK_THAT(t.freeze_table(), Contains("model.embed_tokens"));
}

TEST_CASE("resuming from the training state continues bit-identically", "[train]") {
  const auto cfg = toy_config();
  std::vector<double> uninterrupted;
  {
    auto m = std::make_shared<ToyLM>();
    torch::manual_seed(42);
    Trainer t(*m, [&](const Batch& b) { return m->loss_sum(b); }, cfg);
    for (int s = 0; s < 8; ++s) uninterrupted.push_back(t.step({make_batch(2, 6, s)}).loss);
  }
  std::map<std::string, torch::Tensor> saved;
  {
    auto m = std::make_shared<ToyLM>();
    torch::manual_seed(42);
    Trainer t(*m, [&](const Batch& b) { return m->loss_sum(b); }, cfg);
    for (int s = 0; s < 3; ++s) CHECK(t.step({make_batch(2, 6, s)}).loss == uninterrupted[s]);
    for (auto& [k, v] : t.state()) saved[k] = v.clone();
  }
  auto m = std::make_shared<ToyLM>();  // fresh weights and optimizer, RNG elsewhere
  torch::manual_seed(7);
  Trainer t(*m, [&](const Batch& b) { return m->loss_sum(b); }, cfg);
  t.load_state(saved);
  CHECK(t.step_count() == 3);
  for (int s = 3; s < 8; ++s) CHECK(t.step({make_batch(2, 6, s)}).loss == uninterrupted[s]);
}

TEST_CASE("loading a training state of another shape names the tensor", "[train]") {
  auto m = std::make_shared<ToyLM>();
  Trainer t(*m, [&](const Batch& b) { return m->loss_sum(b); }, toy_config());
  auto state = t.state();
  state["param.lm_head.weight"] = torch::zeros({3, 3}, torch::kFloat64);
  REQUIRE_THROWS_WITH(t.load_state(state), Contains("'param.lm_head.weight' has shape 3x3, the model expects 16x8"));
  state.erase("param.lm_head.weight");
  REQUIRE_THROWS_WITH(t.load_state(state), Contains("missing entry 'param.lm_head.weight'"));
}

TEST_CASE("non-finite steps are skipped, counted, and stop the run after the limit", "[train]") {
  auto m = std::make_shared<ToyLM>();
  auto cfg = toy_config();
  cfg.train.max_nonfinite_steps = 2;
  bool poison = false;
  Trainer t(*m, [&](const Batch& b) {
    auto l = m->loss_sum(b);
    return poison ? l * std::numeric_limits<double>::quiet_NaN() : l;
  }, cfg);
  t.step({make_batch(2, 6, 0)});
  const auto before = m->head->weight.clone();
  poison = true;
  auto r = t.step({make_batch(2, 6, 1)});
  CHECK(r.skipped);
  CHECK(torch::equal(m->head->weight, before));
  CHECK(t.nonfinite_in_a_row() == 1);
  t.step({make_batch(2, 6, 2)});
  REQUIRE_THROWS_WITH(t.step({make_batch(2, 6, 3)}), Contains("3 non-finite steps in a row") &&
                                                        Contains("train.max_nonfinite_steps = 2"));
  poison = false;
}

TEST_CASE("AdamW uses the configured betas, epsilon, weight decay and the warm-up LR", "[train]") {
  struct One : torch::nn::Module {
    One() { w = register_parameter("w", torch::full({1}, 2.0, torch::kFloat64)); }
    torch::Tensor w;
  };
  auto m = std::make_shared<One>();
  RunConfig cfg;
  cfg.optim.lr = 0.2;
  cfg.optim.min_lr = 0.0;
  cfg.optim.warmup_steps = 2;  // step 0 runs at lr 0.1
  cfg.optim.eps = 1.0;
  cfg.optim.weight_decay = 0.5;
  cfg.optim.grad_clip = 0;
  cfg.param_groups = {{"all", "*", 1.0, std::nullopt}};
  cfg.train.steps = 10;
  Trainer t(*m, [&](const Batch&) { return 3.0 * m->w.sum(); }, cfg);
  Batch one;  // exactly one supervised token
  one.labels = torch::tensor({{-100, 5}}, torch::kInt64);
  auto r = t.step({one});
  CHECK(r.lr == Approx(0.1));
  // p1 = p0 (1 - lr wd) - lr * m̂ / (sqrt(v̂) + eps), with m̂ = g = 3, v̂ = g² on the first step.
  CHECK(m->w.item<double>() == Approx(2.0 * (1 - 0.1 * 0.5) - 0.1 * 3.0 / (3.0 + 1.0)).epsilon(1e-12));
}

}  // namespace owl2_test_trainer
