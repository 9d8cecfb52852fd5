// Freeze rules, parameter groups with layer-wise LR decay, and the LR schedule.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "trainers/param_rules.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_param_rules {

using Catch::Matchers::Contains;
using namespace owl2;

namespace {

// A module tree whose parameter names follow the reference checkpoint layout (two ViT blocks).
struct Leaf : torch::nn::Module {
  explicit Leaf(std::vector<std::pair<std::string, std::vector<int64_t>>> params) {
    for (auto& [n, shape] : params) register_parameter(n, torch::zeros(shape));
  }
};

std::shared_ptr<torch::nn::Module> tiny_tree() {
  auto root = std::make_shared<torch::nn::Module>();
  auto model = root->register_module("model", std::make_shared<torch::nn::Module>());
  auto vit = model->register_module("vision_model", std::make_shared<torch::nn::Module>());
  vit->register_module("embeddings", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{
                                         {"cls_token", {1, 1, 4}}, {"position_embedding", {1, 5, 4}}}));
  auto enc = vit->register_module("encoder", std::make_shared<torch::nn::Module>());
  auto layers = enc->register_module("layers", std::make_shared<torch::nn::Module>());
  for (int i = 0; i < 2; ++i) {
    auto blk = layers->register_module(std::to_string(i), std::make_shared<torch::nn::Module>());
    blk->register_module("fc1", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{
                                    {"weight", {8, 4}}, {"bias", {8}}}));
  }
  vit->register_module("post_layernorm", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{
                                             {"weight", {4}}, {"bias", {4}}}));
  model->register_module("visual_abstractor", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{
                                                  {"query_embeds", {1, 2, 4}}}));
  auto dl = model->register_module("layers", std::make_shared<torch::nn::Module>());
  auto l0 = dl->register_module("0", std::make_shared<torch::nn::Module>());
  auto k = l0->register_module("k_proj", std::make_shared<torch::nn::Module>());
  auto mw = k->register_module("multiway", std::make_shared<torch::nn::Module>());
  mw->register_module("0", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{{"weight", {4, 4}}}));
  mw->register_module("1", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{{"weight", {4, 4}}}));
  auto in = l0->register_module("input_layernorm", std::make_shared<torch::nn::Module>());
  auto inmw = in->register_module("multiway", std::make_shared<torch::nn::Module>());
  inmw->register_module("0", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{{"weight", {4}}}));
  inmw->register_module("1", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{{"weight", {4}}}));
  root->register_module("lm_head", std::make_shared<Leaf>(std::vector<std::pair<std::string, std::vector<int64_t>>>{{"weight", {10, 4}}}));
  return root;
}

bool trainable(torch::nn::Module& m, const std::string& name) { return m.named_parameters()[name].requires_grad(); }

const std::vector<FreezeRule> kStage1 = {{"model.vision_model.*", true},
                                         {"model.visual_abstractor.*", true},
                                         {"*.multiway.1.*", true},
                                         {"*", false}};

}  // namespace

TEST_CASE("glob patterns span dots and match whole names", "[train][rules]") {
  CHECK(glob_match("*.bias", "model.layers.0.mlp.fc1.bias"));
  CHECK_FALSE(glob_match("*.bias", "model.layers.0.mlp.fc1.bias_x"));
  CHECK(glob_match("model.layers.*.multiway.1.*", "model.layers.12.self_attn.k_proj.multiway.1.weight"));
  CHECK_FALSE(glob_match("model.layers.*.multiway.1.*", "model.layers.12.self_attn.k_proj.multiway.0.weight"));
  CHECK(glob_match("lm_hea?.weight", "lm_head.weight"));
  CHECK(glob_match("*", ""));
  CHECK_FALSE(glob_match("", "x"));
}

TEST_CASE("stage-1 freeze rules: ViT, abstractor and image-side copies train, the rest is frozen", "[train][rules]") {
  auto m = tiny_tree();
  const std::string table = apply_freeze_rules(*m, kStage1);
  CHECK(trainable(*m, "model.vision_model.embeddings.cls_token"));
  CHECK(trainable(*m, "model.visual_abstractor.query_embeds"));
  CHECK(trainable(*m, "model.layers.0.k_proj.multiway.1.weight"));
  CHECK(trainable(*m, "model.layers.0.input_layernorm.multiway.1.weight"));
  CHECK_FALSE(trainable(*m, "model.layers.0.k_proj.multiway.0.weight"));
  CHECK_FALSE(trainable(*m, "model.layers.0.input_layernorm.multiway.0.weight"));
  CHECK_FALSE(trainable(*m, "lm_head.weight"));
  // model.layers: trainable = 16 + 4 (multiway.1), frozen = 16 + 4 (multiway.0); lm_head 40 frozen.
  CHECK_THAT(table, Contains("model.layers") && Contains("lm_head"));
  CHECK(table.find("model.layers                               20               20") != std::string::npos);
}

TEST_CASE("freeze rules that match nothing, or parameters no rule claims, are errors", "[train][rules]") {
  auto m = tiny_tree();
  REQUIRE_THROWS_WITH(apply_freeze_rules(*m, {{"model.vision_model.*", true}, {"model.nothing.*", false}, {"*", false}}),
                      Contains("freeze[1]: pattern 'model.nothing.*' matches no parameter"));
  REQUIRE_THROWS_WITH(apply_freeze_rules(*m, {{"model.*", true}}),
                      Contains("parameter 'lm_head.weight' matches no rule"));
  // A rule shadowed by an earlier one matches nothing too.
  REQUIRE_THROWS_WITH(apply_freeze_rules(*m, {{"*", true}, {"lm_head.*", false}}), Contains("freeze[1]"));
}

TEST_CASE("parameter groups: no decay on biases and norms, ViT layer-wise LR decay", "[train][rules]") {
  auto m = tiny_tree();
  apply_freeze_rules(*m, {{"*", true}});
  const std::vector<ParamGroupRule> rules = {{"no_decay", "*.bias", 1.0, 0.0},
                                             {"norms", "*norm*", 1.0, 0.0},
                                             {"default", "*", 1.0, std::nullopt}};
  const auto groups = resolve_param_groups(*m, rules, 0.05, 0.9, /*vision_layers=*/2);
  auto find = [&](const std::string& param) -> const ParamGroup& {
    for (const auto& g : groups) {
      for (const auto& n : g.names) {
        if (n == param) return g;
      }
    }
    FAIL("parameter not in any group: " << param);
    return groups.front();
  };
  // L = 2: embeddings id 0 -> 0.9^3, block 0 -> 0.9^2, block 1 -> 0.9, post-LN -> 1, outside the ViT -> 1.
  CHECK(find("model.vision_model.embeddings.cls_token").lr_scale == Approx(0.729));
  CHECK(find("model.vision_model.encoder.layers.0.fc1.weight").lr_scale == Approx(0.81));
  CHECK(find("model.vision_model.encoder.layers.1.fc1.weight").lr_scale == Approx(0.9));
  CHECK(find("model.vision_model.encoder.layers.1.fc1.weight").weight_decay == 0.05);
  CHECK(find("model.vision_model.encoder.layers.1.fc1.bias").weight_decay == 0.0);
  CHECK(find("model.vision_model.encoder.layers.1.fc1.bias").lr_scale == Approx(0.9));
  CHECK(find("model.vision_model.post_layernorm.weight").lr_scale == 1.0);
  CHECK(find("model.layers.0.input_layernorm.multiway.1.weight").weight_decay == 0.0);
  CHECK(find("lm_head.weight").lr_scale == 1.0);
  CHECK(find("lm_head.weight").weight_decay == 0.05);
  int64_t total = 0;
  for (const auto& g : groups) total += g.numel;
  int64_t expect = 0;
  for (const auto& p : m->parameters()) expect += p.numel();
  CHECK(total == expect);  // every trainable parameter in exactly one group
  CHECK_THAT(describe_param_groups(groups), Contains("no_decay [vit 2]"));
}

TEST_CASE("parameter groups: frozen parameters are left out, unclaimed or empty groups are errors", "[train][rules]") {
  auto m = tiny_tree();
  apply_freeze_rules(*m, kStage1);
  const auto groups = resolve_param_groups(*m, {{"all", "*", 1.0, std::nullopt}}, 0.0, 1.0, 2);
  REQUIRE(groups.size() == 1);
  for (const auto& n : groups[0].names) CHECK(n.find("multiway.0") == std::string::npos);
  REQUIRE_THROWS_WITH(resolve_param_groups(*m, {{"vit", "model.vision_model.*", 1.0, std::nullopt}}, 0.0, 1.0, 2),
                      Contains("trainable parameter 'model.visual_abstractor.query_embeds' is claimed by no group"));
  REQUIRE_THROWS_WITH(resolve_param_groups(*m, {{"head", "lm_head.*", 1.0, std::nullopt}, {"all", "*", 1.0, std::nullopt}},
                                           0.0, 1.0, 2),
                      Contains("param_groups[0]: pattern 'lm_head.*' matches no trainable parameter"));
}

TEST_CASE("cosine schedule: linear warm-up, cosine to the minimum", "[train][rules]") {
  // warmup 10, total 110, peak 1, min 0.1
  CHECK(cosine_lr(0, 110, 10, 1.0, 0.1) == Approx(0.1));
  CHECK(cosine_lr(9, 110, 10, 1.0, 0.1) == Approx(1.0));
  CHECK(cosine_lr(10, 110, 10, 1.0, 0.1) == Approx(1.0));
  CHECK(cosine_lr(60, 110, 10, 1.0, 0.1) == Approx(0.55));
  CHECK(cosine_lr(35, 110, 10, 1.0, 0.1) == Approx(0.1 + 0.45 * (1 + std::cos(M_PI / 4))));
  CHECK(cosine_lr(110, 110, 10, 1.0, 0.1) == Approx(0.1));
  CHECK(cosine_lr(500, 110, 10, 1.0, 0.1) == Approx(0.1));
  CHECK(cosine_lr(0, 100, 0, 2.0, 0.0) == Approx(2.0));
}

}  // namespace owl2_test_param_rules
