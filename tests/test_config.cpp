// Config system: includes, overrides, typed parsing, error messages, and the `owl2 config` CLI.
#include <catch2/catch.hpp>

#include "tests/helpers.h"
#include "trainers/config.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_config {

using Catch::Matchers::Contains;
using owl2::ConfigError;
using owl2::load_config;
using owl2::parse_config_text;
using owl2::test::run_owl2;
using owl2::test::source_path;

namespace {
std::string fixture(const std::string& name) { return source_path("tests/fixtures/config/" + name); }
}  // namespace

TEST_CASE("defaults are the released 7B model and the paper's stage-1 optimizer", "[config]") {
  const auto cfg = parse_config_text("{}");
  CHECK(cfg.model.vision.hidden_size == 1024);
  CHECK(cfg.model.vision.num_positions() == 1025);
  CHECK(cfg.model.vision.layer_norm_eps == 1e-6);
  CHECK(cfg.model.abstractor.attn_norm_eps == 1e-5);
  CHECK(cfg.model.decoder.rms_norm_eps == 1e-6);
  CHECK(cfg.model.decoder.max_position_embeddings == 2048);
  CHECK(cfg.model.visual_tokens_per_image() == 65);
  CHECK(cfg.optim.betas == std::vector<double>{0.9, 0.98});
  CHECK(cfg.optim.eps == 1e-6);
}

TEST_CASE("include merges maps and the including file wins", "[config]") {
  const auto cfg = load_config(fixture("child.yaml"));
  CHECK(cfg.model.vision.hidden_size == 64);  // from base.yaml
  CHECK(cfg.optim.lr == 5e-4);               // child overrides base
  CHECK(cfg.optim.warmup_steps == 2);
  CHECK(cfg.train.precision == owl2::Precision::kBf16);
  CHECK(cfg.train.steps == 10);  // base value kept in a merged section
}

TEST_CASE("set overrides win over files and are parsed as YAML", "[config]") {
  const auto cfg = load_config(fixture("child.yaml"), {"optim.lr=2e-5", "optim.betas=[0.8, 0.9]", "train.seed=7"});
  CHECK(cfg.optim.lr == 2e-5);
  CHECK(cfg.optim.betas == std::vector<double>{0.8, 0.9});
  CHECK(cfg.train.seed == 7);
}

TEST_CASE("an unknown key names its full path, file and line, and the closest valid key", "[config]") {
  REQUIRE_THROWS_WITH(load_config(fixture("typo.yaml")),
                      Contains("typo.yaml:4") && Contains("unknown key 'model.vision.hiden_size'") &&
                          Contains("did you mean 'model.vision.hidden_size'?"));
  REQUIRE_THROWS_WITH(load_config(fixture("base.yaml"), {"optim.lrr=1"}),
                      Contains("--set optim.lrr") && Contains("did you mean 'optim.lr'?"));
  REQUIRE_THROWS_WITH(parse_config_text("zzzzzz: 1"), Contains("unknown key 'zzzzzz'") &&
                                                          Contains("valid keys under '<top>': model, optim, train, data, init, eval, distributed, freeze, param_groups"));
}

TEST_CASE("a wrong type names the path, the expected type and the value", "[config]") {
  REQUIRE_THROWS_WITH(load_config(fixture("wrong_type.yaml")),
                      Contains("wrong_type.yaml:3") && Contains("train.steps: expected an integer, got 'many'"));
  REQUIRE_THROWS_WITH(parse_config_text("optim: {lr: [1, 2]}"), Contains("optim.lr: expected a number, got a list"));
  REQUIRE_THROWS_WITH(parse_config_text("optim: {betas: [0.9, x]}"),
                      Contains("optim.betas[1]: expected a number, got 'x'"));
  REQUIRE_THROWS_WITH(parse_config_text("model: 3"), Contains("model: expected a mapping, got '3'"));
  REQUIRE_THROWS_WITH(parse_config_text("train: {steps: 1.5}"), Contains("expected an integer, got '1.5'"));
  REQUIRE_THROWS_WITH(parse_config_text("train: {precision: fp8}"),
                      Contains("train.precision: expected one of fp32|bf16|bf16-autocast, got 'fp8'"));
}

TEST_CASE("values are validated once, with the numbers in the message", "[config]") {
  REQUIRE_THROWS_WITH(load_config(fixture("inconsistent.yaml")),
                      Contains("model.abstractor.encoder_hidden_size") && Contains("32 != 64"));
  REQUIRE_THROWS_WITH(parse_config_text("model: {vision: {hidden_size: 100}}"),
                      Contains("model.vision.hidden_size: must be divisible by vision.num_attention_heads"));
  REQUIRE_THROWS_WITH(parse_config_text("train: {global_batch_size: 6, micro_batch_size: 4}"),
                      Contains("train.global_batch_size: must be a positive multiple of train.micro_batch_size (4), got 6"));
  REQUIRE_THROWS_WITH(parse_config_text("optim: {betas: [0.9]}"), Contains("optim.betas: expected 2 values, got 1"));
  REQUIRE_THROWS_WITH(parse_config_text("model: {initializer_range: 0}"),
                      Contains("model.initializer_range: must be a positive finite standard deviation"));
  CHECK(parse_config_text("model: {initializer_range: 0.1}").model.initializer_range == 0.1);
  CHECK(parse_config_text("optim: {lr: 1.0e-3}").model.initializer_range == 0.02);  // the reference's value
}

TEST_CASE("include problems are reported with the including file", "[config]") {
  REQUIRE_THROWS_WITH(load_config(fixture("cycle_a.yaml")), Contains("include cycle") && Contains("cycle_b.yaml"));
  REQUIRE_THROWS_WITH(load_config(fixture("bad_include.yaml")),
                      Contains("bad_include.yaml:1") && Contains("include 'does_not_exist.yaml' not found"));
  REQUIRE_THROWS_WITH(load_config(fixture("nope.yaml")), Contains("nope.yaml: config file not found"));
  REQUIRE_THROWS_WITH(parse_config_text("a: [1, 2", "inline"), Contains("inline:") && Contains("YAML syntax error"));
  REQUIRE_THROWS_WITH(load_config(fixture("base.yaml"), {"noequals"}), Contains("expected key.path=value"));
}

TEST_CASE("lists of rules parse with per-item paths in errors", "[config]") {
  const auto cfg = parse_config_text(
      "freeze: [{pattern: 'model.vision_model.*'}, {pattern: '*', trainable: false}]\n"
      "param_groups: [{pattern: '*.bias', weight_decay: 0}, {pattern: '*', lr_scale: 0.5}]\n");
  REQUIRE(cfg.freeze.size() == 2);
  CHECK(cfg.freeze[0].trainable);
  CHECK_FALSE(cfg.freeze[1].trainable);
  REQUIRE(cfg.param_groups.size() == 2);
  CHECK(cfg.param_groups[0].weight_decay == 0.0);
  CHECK_FALSE(cfg.param_groups[1].weight_decay.has_value());
  CHECK(cfg.param_groups[1].lr_scale == 0.5);
  REQUIRE_THROWS_WITH(parse_config_text("freeze: [{pattern: '*', trainabel: true}]"),
                      Contains("unknown key 'freeze[0].trainabel'; did you mean 'freeze[0].trainable'?"));
  REQUIRE_THROWS_WITH(parse_config_text("param_groups: [{pattern: '*', lr_scale: -1}]"),
                      Contains("param_groups[0].lr_scale: must be >= 0, got -1"));
  REQUIRE_THROWS_WITH(parse_config_text("freeze: []"), Contains("freeze: must list at least one rule"));
}

TEST_CASE("the printed config parses back to the same config", "[config]") {
  const auto cfg = load_config(fixture("child.yaml"), {"optim.lr=3.3e-5"});
  const std::string text = owl2::to_yaml(cfg);
  const auto again = parse_config_text(text);
  CHECK(owl2::to_yaml(again) == text);
  CHECK(again.optim.lr == 3.3e-5);
  CHECK(again.model.abstractor.grid_size == 4);
  CHECK(owl2::edit_distance(std::string("kitten"), std::string("sitting")) == 3);
}

TEST_CASE("owl2 config check: exit 0 on a valid file, 2 with the key path and suggestion on a typo", "[config][cli]") {
  auto ok = run_owl2("config check " + fixture("child.yaml"));
  CHECK(ok.rc == 0);
  CHECK_THAT(ok.out, Contains(": ok"));

  auto bad = run_owl2("config check " + fixture("typo.yaml"));
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.out, Contains("unknown key 'model.vision.hiden_size'") &&
                          Contains("did you mean 'model.vision.hidden_size'?"));

  auto set = run_owl2("config show " + fixture("child.yaml") + " --set optim.lr=2e-5");
  CHECK(set.rc == 0);
  CHECK_THAT(set.out, Contains("lr: 2e-05"));
}

TEST_CASE("owl2 CLI: --version, --help and usage errors", "[cli]") {
  auto v = run_owl2("--version");
  CHECK(v.rc == 0);
  CHECK_THAT(v.out, Contains(std::string("owl2 ") + OWL2_VERSION));
  auto h = run_owl2("config check --help");
  CHECK(h.rc == 0);
  CHECK_THAT(h.out, Contains("--set"));
  auto none = run_owl2("");
  CHECK(none.rc == 2);
  auto unknown = run_owl2("frobnicate");
  CHECK(unknown.rc == 2);
}

TEST_CASE("the reference config.json layout reads into the model section", "[config][model]") {
  const auto hf = load_config(fixture("owl2-7b-config.json"));
  const auto yaml = load_config(source_path("configs/model/owl2-7b.yaml"));
  CHECK(owl2::to_yaml(hf) == owl2::to_yaml(yaml));
  const auto small = load_config(fixture("owl2-7b-config.json"), {"model.decoder.num_hidden_layers=2"});
  CHECK(small.model.decoder.num_hidden_layers == 2);
  REQUIRE_THROWS_WITH(load_config(fixture("hf_bad_type.json")),
                      Contains("visual_config.visual_model.hidden_act: expected \"quick_gelu\", got \"gelu\""));
  auto inspect = run_owl2("inspect --config " + fixture("owl2-7b-config.json"));
  CHECK(inspect.rc == 0);
  CHECK_THAT(inspect.out, Contains("8,197,859,328") || Contains("8197859328"));
}

TEST_CASE("config.json values of the wrong type name the JSON field", "[config]") {
  std::ofstream(source_path("build/hf_wrong.json")) << R"({"model_type": "mplug_owl2", "hidden_size": "large"})";
  REQUIRE_THROWS_WITH(load_config(source_path("build/hf_wrong.json")),
                      Contains("hf_wrong.json (hidden_size): model.decoder.hidden_size: expected an integer, got 'large'"));
}

}  // namespace owl2_test_config
