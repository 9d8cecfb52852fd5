// Construction only registers tensors; init_weights writes every parameter once, reproducibly, by the documented
// scheme (docs/model.md "Init").
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>

#include "owl2/model/init.h"
#include "owl2/model/model.h"
#include "tests/helpers.h"
#include "trainers/config.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_model_init {

using namespace owl2;
using Catch::Matchers::Contains;

namespace {

ModelConfig tiny() { return load_config(test::source_path("configs/model/tiny.yaml")).model; }

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// What the documented scheme gives a parameter, read from its checkpoint name.
enum class Rule { kNormal, kZeros, kOnes };
Rule rule_of(const std::string& name) {
  if (ends_with(name, ".bias")) return Rule::kZeros;  // Linear and LayerNorm biases
  for (const char* norm : {"layernorm", "norm1.", "normk.", "norm2.", "ffn_ln.", "model.norm."}) {
    if (contains(name, norm)) return Rule::kOnes;  // LayerNorm and RMSNorm weights
  }
  return Rule::kNormal;
}

void fill_nan(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.parameters()) p.fill_(std::nan(""));
}

bool any_nan(const torch::nn::Module& m) {
  for (const auto& p : m.parameters()) {
    if (p.isnan().any().item<bool>()) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("constructing the model draws no random numbers", "[model][init]") {
  torch::manual_seed(123);
  auto gen = at::detail::getDefaultCPUGenerator();
  const auto before = gen.get_state();
  MPLUGOwl2ForCausalLM model(tiny());
  VisionModel vision(tiny().vision);
  VisualAbstractor abstractor(tiny().abstractor, tiny().decoder.hidden_size);
  CHECK(torch::equal(gen.get_state(), before));
  // init_weights does draw: the check above can tell.
  init_weights(model, 123);
  CHECK_FALSE(torch::equal(gen.get_state(), before));
}

TEST_CASE("init_weights is reproducible by seed and differs between seeds", "[model][init]") {
  MPLUGOwl2ForCausalLM a(tiny()), b(tiny()), c(tiny());
  init_weights(a, 5);
  init_weights(b, 5);
  init_weights(c, 6);
  const auto pb = b->named_parameters(), pc = c->named_parameters();
  size_t random = 0;
  for (const auto& item : a->named_parameters()) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), pb[item.key()]));
    if (rule_of(item.key()) == Rule::kNormal) {
      CHECK_FALSE(torch::equal(item.value(), pc[item.key()]));
      ++random;
    } else {
      CHECK(torch::equal(item.value(), pc[item.key()]));
    }
  }
  CHECK(random > 30);
}

TEST_CASE("model.initializer_range scales the same normal draws and leaves the constants alone", "[model][init]") {
  MPLUGOwl2ForCausalLM reference(tiny()), wide(tiny());
  init_weights(reference, 4);
  init_weights(wide, 4, 0.1);
  const auto a = reference->named_parameters();
  int scaled = 0;
  for (const auto& item : wide->named_parameters()) {
    INFO(item.key());
    const auto& r = a[item.key()];
    const bool constant = torch::equal(r, torch::zeros_like(r)) || torch::equal(r, torch::ones_like(r));
    if (constant) {
      CHECK(torch::equal(item.value(), r));
    } else {
      CHECK(torch::allclose(item.value(), r * 5.0, /*rtol=*/1e-5, /*atol=*/1e-7));
      ++scaled;
    }
  }
  CHECK(scaled > 20);
}

TEST_CASE("init_weights writes every parameter of the model and of a lone ViT or abstractor", "[model][init]") {
  MPLUGOwl2ForCausalLM model(tiny());
  fill_nan(*model);
  REQUIRE(any_nan(*model));
  init_weights(model, 0);
  CHECK_FALSE(any_nan(*model));

  VisionModel vision(tiny().vision);
  fill_nan(*vision);
  init_weights(vision, 0);
  CHECK_FALSE(any_nan(*vision));

  VisualAbstractor abstractor(tiny().abstractor, tiny().decoder.hidden_size);
  fill_nan(*abstractor);
  init_weights(abstractor, 0);
  CHECK_FALSE(any_nan(*abstractor));
}

TEST_CASE("init_weights refuses a parameter without an init rule", "[model][init]") {
  MPLUGOwl2ForCausalLM model(tiny());
  model->model->register_parameter("extra", torch::empty({3}));
  REQUIRE_THROWS_WITH(init_weights(model, 0), Contains("parameter model.extra has no init rule"));
}

TEST_CASE("init statistics follow the documented scheme per tensor class", "[model][init]") {
  MPLUGOwl2ForCausalLM model(tiny());
  init_weights(model, 1);
  std::vector<torch::Tensor> small_normals;
  std::map<Rule, int> count;
  for (const auto& item : model->named_parameters()) {
    const auto& name = item.key();
    const auto t = item.value().detach().to(torch::kFloat64).reshape({-1});
    INFO(name);
    const Rule r = rule_of(name);
    ++count[r];
    if (r == Rule::kZeros) {
      CHECK(torch::equal(t, torch::zeros_like(t)));
    } else if (r == Rule::kOnes) {
      CHECK(torch::equal(t, torch::ones_like(t)));
    } else if (t.numel() >= 4096) {
      // normal(0, 0.02): the sample std of n >= 4096 draws is within 5 % of 0.02 (about 4.5 sigma), the mean
      // within 5 standard errors of 0.
      CHECK(std::abs(t.std().item<double>() - kInitStd) < 0.05 * kInitStd);
      CHECK(std::abs(t.mean().item<double>()) < 5 * kInitStd / std::sqrt(static_cast<double>(t.numel())));
    } else {
      small_normals.push_back(t);
    }
  }
  // The class token, vit_eos and friends are too small alone: pooled, they must still look like normal(0, 0.02).
  const auto pooled = torch::cat(small_normals);
  INFO("pooled small tensors: " << pooled.numel());
  REQUIRE(pooled.numel() >= 500);
  CHECK(std::abs(pooled.std().item<double>() - kInitStd) < 0.1 * kInitStd);
  CHECK(count[Rule::kNormal] > 20);
  CHECK(count[Rule::kZeros] > 20);
  CHECK(count[Rule::kOnes] > 10);
  // The tensors registered outside any layer follow the scheme too (not zeros or ones by a misclassification).
  const auto p = model->named_parameters();
  for (const char* name : {"model.vision_model.embeddings.cls_token", "model.vision_model.embeddings.position_embedding",
                           "model.visual_abstractor.query_embeds", "model.visual_abstractor.vit_eos",
                           "model.vision_model.embeddings.patch_embed.weight", "model.embed_tokens.weight"}) {
    INFO(name);
    CHECK(rule_of(name) == Rule::kNormal);
    CHECK(p[name].std().item<double>() > 0.5 * kInitStd);
  }
}

}  // namespace owl2_test_model_init
