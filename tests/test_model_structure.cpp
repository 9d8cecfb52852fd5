// Model structure: checkpoint names and shapes, the shape-only parameter table, `owl2 inspect`, init scheme.
#include <catch2/catch.hpp>

#include <set>

#include "owl2/model.h"
#include "tests/golden_io.h"
#include "tests/helpers.h"
#include "trainers/config.h"

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

TEST_CASE("reset_parameters applies the documented init scheme", "[model]") {
  MPLUGOwl2ForCausalLM model(test::tiny_golden_config());
  const auto p = model->named_parameters();
  CHECK(torch::equal(p["model.norm.weight"], torch::ones({32})));
  CHECK(torch::equal(p["model.layers.0.input_layernorm.multiway.1.weight"], torch::ones({32})));
  CHECK(torch::equal(p["model.visual_abstractor.visual_fc.bias"], torch::zeros({32})));
  CHECK(torch::equal(p["model.vision_model.post_layernorm.weight"], torch::ones({16})));
  const auto w = p["model.layers.0.mlp.up_proj.weight"];
  CHECK(std::abs(w.std().item<double>() - 0.02) < 0.003);
  CHECK(std::abs(p["lm_head.weight"].std().item<double>() - 0.02) < 0.003);
}
