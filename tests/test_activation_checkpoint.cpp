// Activation checkpointing gives the same outputs and gradients as running the block directly.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "trainers/activation_checkpoint.h"
#include "owl2/model/init.h"
#include "owl2/model/model.h"
#include "tests/helpers.h"
#include "trainers/config.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_activation_checkpoint {

using namespace owl2;

namespace {

struct Block : torch::nn::Module {
  Block() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 12));
    fc2 = register_module("fc2", torch::nn::Linear(12, 6));
    to(torch::kFloat64);
  }
  // Dropout inside: the recompute must replay the same mask.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& scale) {
    return x + fc2(torch::dropout(torch::gelu(fc1(x)), 0.3, true)) * scale;
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

}  // namespace

TEST_CASE("checkpointed blocks match direct execution in values and gradients with dropout", "[train][checkpoint]") {
  torch::manual_seed(0);
  auto a = std::make_shared<Block>(), b = std::make_shared<Block>();
  for (auto& item : b->named_parameters()) item.value().data().copy_(a->named_parameters()[item.key()]);
  auto x0 = torch::randn({3, 4, 6}, torch::kFloat64);
  auto scale = torch::full({1}, 0.5, torch::kFloat64);  // an input that needs no gradient

  auto xa = x0.clone().requires_grad_(true);
  torch::manual_seed(5);
  auto ya = a->forward(a->forward(xa, scale), scale);
  const auto rng_after_direct = torch::rand({1}, torch::kFloat64);
  (ya * ya).sum().backward();

  auto xb = x0.clone().requires_grad_(true);
  torch::manual_seed(5);
  auto run = [&](const std::vector<torch::Tensor>& in) { return b->forward(in[0], in[1]); };
  auto yb = checkpoint(run, {checkpoint(run, {xb, scale}), scale});
  const auto rng_after_ckpt = torch::rand({1}, torch::kFloat64);
  (yb * yb).sum().backward();

  CHECK(torch::allclose(ya, yb, 0, 1e-14));
  CHECK(torch::equal(rng_after_direct, rng_after_ckpt));  // the recompute does not disturb the RNG stream
  CHECK(torch::allclose(xa.grad(), xb.grad(), 0, 1e-12));
  for (auto& item : a->named_parameters()) {
    INFO(item.key());
    CHECK(torch::allclose(item.value().grad(), b->named_parameters()[item.key()].grad(), 0, 1e-12));
  }
}

TEST_CASE("checkpointing still trains parameters when no input requires grad", "[train][checkpoint]") {
  torch::manual_seed(1);
  auto blk = std::make_shared<Block>();
  auto x = torch::randn({2, 6}, torch::kFloat64);  // e.g. frozen embeddings
  auto scale = torch::ones({1}, torch::kFloat64);
  auto y = checkpoint([&](const std::vector<torch::Tensor>& in) { return blk->forward(in[0], in[1]); }, {x, scale});
  REQUIRE(y.requires_grad());
  y.sum().backward();
  REQUIRE(blk->fc1->weight.grad().defined());
  CHECK(blk->fc1->weight.grad().abs().sum().item<double>() > 0);
}

TEST_CASE("activation checkpointing of the ViT, abstractor and decoder gives the same loss and gradients", "[train][checkpoint][model]") {
  const auto cfg = owl2::load_config(owl2::test::source_path("configs/model/tiny.yaml")).model;
  owl2::MPLUGOwl2ForCausalLM plain(cfg), ckpt(cfg);
  owl2::init_weights(plain, 3);  // ckpt gets plain's values below
  plain->to(torch::kFloat64);
  ckpt->to(torch::kFloat64);
  {
    torch::NoGradGuard g;
    auto src = plain->named_parameters();
    for (auto& item : ckpt->named_parameters()) item.value().copy_(src[item.key()]);
  }
  ckpt->model->vision_model->block_runner = owl2::checkpointing_runner();
  ckpt->model->visual_abstractor->block_runner = owl2::checkpointing_runner();
  ckpt->decoder_block_runner = owl2::checkpointing_runner();
  owl2::ModelInputs in;
  in.input_ids = torch::tensor({{1, -200, 5, 6, 7, 8}, {1, 9, 10, 11, 0, 0}}, torch::kLong);
  in.attention_mask = torch::tensor({{1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 0, 0}}, torch::kLong);
  in.labels = torch::tensor({{-100, -100, 5, 6, 7, 8}, {-100, 9, 10, 11, -100, -100}}, torch::kLong);
  in.images = torch::randn({1, 3, cfg.vision.image_size, cfg.vision.image_size}, torch::kFloat64);
  auto a = plain->forward(in).loss_sum;
  auto b = ckpt->forward(in).loss_sum;
  CHECK(std::abs(a.item<double>() - b.item<double>()) < 1e-12);
  a.backward();
  b.backward();
  auto pa = plain->named_parameters();
  size_t compared = 0;
  for (auto& item : ckpt->named_parameters()) {
    const auto& ga = pa[item.key()].grad();
    const auto& gb = item.value().grad();
    INFO(item.key());
    REQUIRE(ga.defined() == gb.defined());
    if (!ga.defined()) continue;
    CHECK((ga - gb).abs().max().item<double>() < 1e-12);
    ++compared;
  }
  CHECK(compared > 40);
  CHECK(ckpt->model->vision_model->embeddings->patch_embed->weight.grad().abs().sum().item<double>() > 0);
}

TEST_CASE("each stack tells its block runner the index of the block it runs", "[train][checkpoint][model]") {
  const auto cfg = owl2::load_config(owl2::test::source_path("configs/model/tiny.yaml")).model;
  torch::manual_seed(3);
  owl2::MPLUGOwl2ForCausalLM model(cfg);
  std::vector<int64_t> vision, abstractor, decoder;
  auto recording = [](std::vector<int64_t>& seen) {
    return [&seen](int64_t index, const owl2::BlockFn& fn, const std::vector<torch::Tensor>& inputs) {
      seen.push_back(index);
      return fn(inputs);
    };
  };
  model->model->vision_model->block_runner = recording(vision);
  model->model->visual_abstractor->block_runner = recording(abstractor);
  model->decoder_block_runner = recording(decoder);
  owl2::ModelInputs in;
  in.input_ids = torch::tensor({{1, -200, 5, 6}}, torch::kLong);
  in.attention_mask = torch::ones({1, 4}, torch::kLong);
  in.images = torch::randn({1, 3, cfg.vision.image_size, cfg.vision.image_size});
  model->forward(in);
  auto range = [](int64_t n) {
    std::vector<int64_t> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i;
    return out;
  };
  CHECK(vision == range(cfg.vision.num_hidden_layers));
  CHECK(abstractor == range(cfg.abstractor.num_hidden_layers));
  CHECK(decoder == range(cfg.decoder.num_hidden_layers));
  CHECK(decoder.size() == 2);  // the tiny config has more than one block per stack where it matters
}

}  // namespace owl2_test_activation_checkpoint
