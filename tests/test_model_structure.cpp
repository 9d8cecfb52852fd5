// Model structure: checkpoint names and shapes, the shape-only parameter table, `owl2 inspect`, init scheme.
#include <catch2/catch.hpp>

#include <set>

#include "owl2/model/init.h"
#include "owl2/model/model.h"
#include "tests/golden_io.h"
#include "tests/helpers.h"
#include "trainers/config.h"
#include "owl2/io/weights.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_model_structure {

using namespace owl2;
using Catch::Matchers::Contains;

TEST_CASE("named_parameters equal the reference checkpoint keys and the shape-only table", "[model]") {
  const auto cfg = load_config(test::source_path("configs/model/tiny.yaml")).model;
  MPLUGOwl2ForCausalLM model(cfg);
  std::map<std::string, std::vector<int64_t>> built, table;
  for (const auto& p : model->named_parameters()) built[p.key()] = p.value().sizes().vec();
  for (const auto& p : parameter_shapes(cfg)) table[p.name] = p.shape;
  CHECK(built == table);
  for (const char* key : {"model.layers.1.self_attn.k_proj.multiway.1.weight",
                          "model.layers.0.input_layernorm.multiway.0.weight",
                          "model.layers.0.post_attention_layernorm.multiway.1.weight",
                          "model.vision_model.encoder.layers.0.self_attn.query_key_value.weight",
                          "model.vision_model.embeddings.patch_embed.weight", "model.vision_model.embeddings.cls_token",
                          "model.visual_abstractor.query_embeds", "model.visual_abstractor.vit_eos",
                          "model.visual_abstractor.encoder.layers.0.crossattention.output.mlp.ffn_ln.bias",
                          "model.norm.weight", "lm_head.weight"}) {
    INFO(key);
    CHECK(built.count(key) == 1);
  }
  CHECK(built.at("model.vision_model.embeddings.position_embedding") == std::vector<int64_t>{1, 65, 64});
  CHECK(model->named_buffers().size() == 0);  // the sin-cos tables are recomputed, never loaded
}

TEST_CASE("owl2 inspect prints 8,197,859,328 parameters for the 7B config", "[model][cli]") {
  const auto r = test::run_owl2("inspect --config configs/model/owl2-7b.yaml");
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, Contains("8,197,859,328"));
  CHECK_THAT(r.out, Contains("303,966,208"));                         // ViT (spec §0: 303.97M)
  CHECK_THAT(r.out, Contains("81,473,536"));                          // abstractor (81.47M)
  CHECK_THAT(r.out, Contains("7,550,271,488 (32 x 235,945,984)"));  // decoder layers with MAM
  const auto tiny = test::run_owl2("inspect --config configs/model/tiny.yaml");
  MPLUGOwl2ForCausalLM model(load_config(test::source_path("configs/model/tiny.yaml")).model);
  int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  CHECK_THAT(tiny.out, Contains("767,232"));
  CHECK(total == 767232);
}

TEST_CASE("init_weights applies the documented init scheme", "[model]") {
  MPLUGOwl2ForCausalLM model(test::tiny_golden_config());
  init_weights(model, 0);
  const auto p = model->named_parameters();
  CHECK(torch::equal(p["model.norm.weight"], torch::ones({32})));
  CHECK(torch::equal(p["model.layers.0.input_layernorm.multiway.1.weight"], torch::ones({32})));
  CHECK(torch::equal(p["model.visual_abstractor.visual_fc.bias"], torch::zeros({32})));
  CHECK(torch::equal(p["model.vision_model.post_layernorm.weight"], torch::ones({16})));
  const auto w = p["model.layers.0.mlp.up_proj.weight"];
  CHECK(std::abs(w.std().item<double>() - 0.02) < 0.003);
  CHECK(std::abs(p["lm_head.weight"].std().item<double>() - 0.02) < 0.003);
}

TEST_CASE("stage hand-over: 16 px weights load into a 32 px model with interpolated ViT positions", "[model][checkpoint]") {
  auto small_cfg = owl2::load_config(owl2::test::source_path("configs/model/tiny.yaml"),
                                     {"model.vision.image_size=16", "model.abstractor.grid_size=4"}).model;
  const auto big_cfg = owl2::load_config(owl2::test::source_path("configs/model/tiny.yaml")).model;
  owl2::MPLUGOwl2ForCausalLM small(small_cfg), big(big_cfg);
  owl2::init_weights(small, 11);  // big gets every tensor from small's directory
  const std::string dir = owl2::test::source_path("build/test_handover");
  std::filesystem::remove_all(dir);
  owl2::save_state_dict(*small, dir);
  const auto summary = owl2::load_model_weights(big, dir);
  CHECK_THAT(summary, Catch::Matchers::Contains("interpolated from a 4x4 to a 8x8 grid"));
  const auto& pos = big->model->vision_model->embeddings->position_embedding;
  CHECK(pos.sizes() == torch::IntArrayRef({1, 65, 64}));
  CHECK(torch::allclose(pos, owl2::interpolate_position_embedding(
                                 small->model->vision_model->embeddings->position_embedding.detach(), 8)));
  CHECK(torch::equal(pos.select(1, 0), small->model->vision_model->embeddings->position_embedding.select(1, 0)));
  CHECK(torch::equal(big->lm_head->weight, small->lm_head->weight));
  CHECK(torch::equal(big->model->visual_abstractor->query_embeds, small->model->visual_abstractor->query_embeds));
  owl2::ModelInputs in;
  in.input_ids = torch::tensor({{1, -200, 5}}, torch::kLong);
  in.images = torch::randn({1, 3, 32, 32});
  CHECK(big->forward(in).logits.size(1) == 3 + 8);
  // A width change is not a grid change.
  auto wide = owl2::load_config(owl2::test::source_path("configs/model/tiny.yaml"),
                                {"model.vision.hidden_size=128", "model.abstractor.encoder_hidden_size=128",
                                 "model.abstractor.hidden_size=128"}).model;
  owl2::MPLUGOwl2ForCausalLM other(wide);
  REQUIRE_THROWS_WITH(owl2::load_model_weights(other, dir), Catch::Matchers::Contains("no grid interpolation"));
}

}  // namespace owl2_test_model_structure
