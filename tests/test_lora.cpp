// LoRA (owl2/model/lora.h) and its PEFT-layout files (owl2/io/lora_files.h) on the float64 tiny golden model:
// a fresh adapter changes nothing, PEFT's own adapter gives PEFT's logits (unmerged and merged), owl2's files load
// back bit-exactly and with the `peft` package, and bad targets or files are named.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "owl2/io/lora_files.h"
#include "owl2/io/state_dict.h"
#include "owl2/model/lora.h"
#include "tests/golden_io.h"
#include "tests/helpers.h"

namespace owl2_test_lora {
using namespace owl2;
using namespace owl2::test;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

const auto kGolden = read_golden("tests/golden/model_tiny.safetensors");

torch::Tensor logits_of(MPLUGOwl2ForCausalLM model) {
  torch::NoGradGuard no_grad;
  model->eval();
  ModelInputs in{kGolden.at("in.input_ids"), kGolden.at("in.attention_mask"), kGolden.at("in.images"), {}};
  return model->forward(in).logits;
}

// The largest difference at real (non-padding) positions of the golden batch: padded queries attend to nothing
// in the Python reference (a uniform softmax) and to themselves in owl2, so only real positions are compared.
double real_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const auto real = kGolden.at("out.attention_mask").to(torch::kBool);
  return max_abs_diff(a.index({real}), b.index({real}));
}

// Random values in every adapter (B included) and in the given full parameters, from a fixed seed.
void randomize(torch::nn::Module& model, const std::vector<std::string>& also = {}) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
  for (auto& item : model.named_parameters()) {
    bool hit = is_lora_parameter(item.key());
    for (const auto& prefix : also) hit = hit || item.key().starts_with(prefix + ".");
    if (hit) item.value().copy_(torch::randn(item.value().sizes(), gen, torch::kFloat64) * 0.3);
  }
}

LoraSpec tiny_spec() {
  LoraSpec s;
  s.rank = 4;
  s.alpha = 12;
  s.modules_to_save = {"model.visual_abstractor.visual_fc"};
  return s;
}

TEST_CASE("a fresh LoRA adapter leaves the logits bit-identical: A is drawn, B is zero", "[lora]") {
  auto model = tiny_golden_model();
  const auto before = logits_of(model);
  const auto adapted = add_lora(*model, tiny_spec(), 7);
  // 2 layers x (q, o, 2 k copies, 2 v copies, gate, up, down).
  REQUIRE(adapted.size() == 18);
  CHECK(adapted.front() == "model.layers.0.self_attn.q_proj");
  CHECK(std::count(adapted.begin(), adapted.end(), "model.layers.1.self_attn.v_proj.multiway.1") == 1);
  CHECK(lora_adapted_modules(*model) == adapted);
  auto params = model->named_parameters();
  const auto& a = params["model.layers.0.mlp.down_proj.lora_A.weight"];
  CHECK(a.sizes() == torch::IntArrayRef({4, 48}));
  CHECK(a.abs().max().item<double>() <= 1.0 / std::sqrt(48.0));
  CHECK(a.abs().max().item<double>() > 0.5 / std::sqrt(48.0));
  CHECK(params["model.layers.0.mlp.down_proj.lora_B.weight"].abs().max().item<double>() == 0.0);
  CHECK(torch::equal(logits_of(model), before));
  // The same seed draws the same A.
  auto again = tiny_golden_model();
  add_lora(*again, tiny_spec(), 7);
  CHECK(torch::equal(again->named_parameters()["model.layers.0.mlp.down_proj.lora_A.weight"], a));
}

TEST_CASE("merging an adapter gives the adapter model's logits to 1e-10 in float64 and removes it", "[lora]") {
  auto model = tiny_golden_model();
  auto spec = tiny_spec();
  spec.rslora = true;
  add_lora(*model, spec, 3);
  randomize(*model);
  const auto adapter_logits = logits_of(model);
  CHECK(max_abs_diff(adapter_logits, logits_of(tiny_golden_model())) > 1e-3);  // the adapter matters
  CHECK(merge_lora(*model) == 18);
  CHECK(lora_adapted_modules(*model).empty());
  for (const auto& item : model->named_parameters()) CHECK_FALSE(is_lora_parameter(item.key()));
  CHECK(max_abs_diff(logits_of(model), adapter_logits) < 1e-10);
}

TEST_CASE("an adapter written by PEFT gives PEFT's logits, unmerged and merged", "[lora][golden]") {
  const auto expected = read_golden("tests/golden/lora_tiny/expected.safetensors");
  auto model = tiny_golden_model();
  const auto loaded = load_lora_adapter(*model, source_path("tests/golden/lora_tiny/adapter"));
  CHECK(loaded.modules.size() == 18);
  CHECK(loaded.spec.rank == 4);
  CHECK(loaded.spec.alpha == 12);
  CHECK(loaded.saved_params.size() == 4);  // visual_fc weight + bias, the two post-attention RMSNorm copies
  CHECK(real_diff(logits_of(model), expected.at("logits")) < 1e-10);
  merge_lora(*model);
  CHECK(real_diff(logits_of(model), expected.at("merged_logits")) < 1e-10);
}

TEST_CASE("owl2's adapter files load back bit-exactly and give owl2's logits in PEFT", "[lora][python]") {
  auto model = tiny_golden_model();
  const auto spec = tiny_spec();
  const auto saved = lora_modules_to_save(*model, spec);
  REQUIRE(saved == std::vector<std::string>{"model.visual_abstractor.visual_fc"});
  add_lora(*model, spec, 5);
  randomize(*model, saved);
  const auto logits = logits_of(model);
  const auto dir = temp_dir("owl2_lora") + "/adapter";
  CHECK(save_lora_adapter(dir, module_state(*model), spec, saved, "base/dir") == 18 * 2 + 2);
  const auto cfg = nlohmann::json::parse(read_text(dir + "/adapter_config.json"));
  CHECK(cfg.at("peft_type") == "LORA");
  CHECK(cfg.at("r") == 4);
  CHECK(cfg.at("modules_to_save") == nlohmann::json{"model.visual_abstractor.visual_fc"});
  CHECK(cfg.at("base_model_name_or_path") == "base/dir");
  // PEFT's own file has the same keys for the same targets.
  const SafetensorsFile mine(dir + "/adapter_model.safetensors"),
      peft(source_path("tests/golden/lora_tiny/adapter/adapter_model.safetensors"));
  std::set<std::string> peft_adapter_keys, my_adapter_keys;
  for (const auto& k : peft.names()) if (k.find(".lora_") != std::string::npos) peft_adapter_keys.insert(k);
  for (const auto& k : mine.names()) if (k.find(".lora_") != std::string::npos) my_adapter_keys.insert(k);
  CHECK(my_adapter_keys == peft_adapter_keys);
  CHECK(mine.contains("base_model.model.model.visual_abstractor.visual_fc.bias"));

  // The files hold float32: loading and writing again reproduces them bit for bit.
  auto back = tiny_golden_model();
  const auto loaded = load_lora_adapter(*back, dir);
  CHECK(loaded.modules == lora_adapted_modules(*back));
  const auto dir2 = temp_dir("owl2_lora") + "/again";
  save_lora_adapter(dir2, module_state(*back), spec, saved);
  const SafetensorsFile again(dir2 + "/adapter_model.safetensors");
  REQUIRE(again.names() == mine.names());
  for (const auto& k : mine.names()) CHECK(torch::equal(again.get(k), mine.get(k)));
  CHECK(max_abs_diff(logits_of(back), logits) < 1e-5);  // the float32 rounding of the adapter only

  const std::string out = temp_dir("owl2_lora_py") + "/peft.safetensors";
  const std::string cmd = std::string(OWL2_PYTHON) + " " + source_path("scripts/reference/peft_logits.py") + " " + dir +
                          " " + out + " 2>&1";
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  const SafetensorsFile py(out);
  CHECK(real_diff(py.get("logits"), logits_of(back)) < 1e-9);
  CHECK(real_diff(py.get("merged_logits"), logits_of(back)) < 1e-9);
}

TEST_CASE("LoRA targets and modules to save - errors name the pattern or the module", "[lora]") {
  auto model = tiny_golden_model();
  LoraSpec s = tiny_spec();
  s.targets = {"model.layers.*.self_attn.q_proj", "model.layers.*.attn.nothing"};
  CHECK_THROWS_WITH(add_lora(*model, s, 0), Contains("lora.targets[1]") && Contains("matches no module"));
  s.targets = {"model.layers.*.self_attn.k_proj"};
  CHECK_THROWS_WITH(add_lora(*model, s, 0), Contains("model.layers.0.self_attn.k_proj' is not a Linear") &&
                                                Contains("multiway.0"));
  s.targets = {"lm_head"};
  CHECK_THROWS_WITH(add_lora(*model, s, 0), Contains("lm_head") && Contains("modules_to_save"));
  s.targets = {"model.visual_abstractor.visual_fc"};
  CHECK_THROWS_WITH(lora_modules_to_save(*model, s), Contains("both a LoRA target"));
  s = tiny_spec();
  s.modules_to_save = {"model.no_such_module"};
  CHECK_THROWS_WITH(lora_modules_to_save(*model, s), Contains("lora.modules_to_save[0]"));
  s = tiny_spec();
  s.rank = 0;
  CHECK_THROWS_WITH(add_lora(*model, s, 0), Contains("lora.rank"));
  s = tiny_spec();
  add_lora(*model, s, 0);
  CHECK_THROWS_WITH(add_lora(*model, s, 0), Contains("already has one"));
  // The planner's adapter shapes are the ones add_lora registers.
  const auto shapes = lora_parameter_shapes(parameter_shapes(tiny_golden_config()), tiny_spec());
  std::map<std::string, std::vector<int64_t>> registered;
  for (const auto& item : model->named_parameters()) {
    if (is_lora_parameter(item.key())) registered[item.key()] = item.value().sizes().vec();
  }
  REQUIRE(shapes.size() == registered.size());
  for (const auto& p : shapes) CHECK(registered.at(p.name) == p.shape);
}

// A copy of PEFT's adapter with `edit` applied to its config (or its weights file replaced).
std::string edited_adapter(const std::function<void(nlohmann::json&)>& edit) {
  const auto dir = temp_dir("owl2_lora_bad");
  fs::copy(source_path("tests/golden/lora_tiny/adapter"), dir, fs::copy_options::recursive);
  auto cfg = nlohmann::json::parse(read_text(dir + "/adapter_config.json"));
  edit(cfg);
  std::ofstream(dir + "/adapter_config.json") << cfg.dump();
  return dir;
}

TEST_CASE("a bad adapter directory is an error naming the file and what is wrong", "[lora]") {
  auto model = tiny_golden_model();
  CHECK_THROWS_WITH(load_lora_adapter(*model, temp_dir("owl2_lora_empty")), Contains("no adapter_config.json"));
  CHECK_THROWS_WITH(load_lora_adapter(*model, edited_adapter([](auto& c) { c["peft_type"] = "IA3"; })),
                    Contains("adapter_config.json: peft_type is 'IA3'"));
  CHECK_THROWS_WITH(load_lora_adapter(*model, edited_adapter([](auto& c) { c["use_dora"] = true; })), Contains("DoRA"));
  CHECK_THROWS_WITH(load_lora_adapter(*model, edited_adapter([](auto& c) { c["r"] = 8; })),
                    Contains("rank r = 8"));
  CHECK_THROWS_WITH(load_lora_adapter(*model, edited_adapter([](auto& c) { c["rank_pattern"] = {{"q_proj", 2}}; })),
                    Contains("rank_pattern"));
  CHECK_THROWS_WITH(load_lora_adapter(*model, edited_adapter([](auto& c) { c["lora_alpha"] = "big"; })),
                    Contains("'lora_alpha' has the wrong type"));
  // Weights for a model with other names.
  const auto dir = edited_adapter([](auto&) {});
  save_safetensors(dir + "/adapter_model.safetensors",
                   {{"base_model.model.model.layers.7.mlp.up_proj.lora_A.weight", torch::zeros({4, 32})},
                    {"base_model.model.model.layers.7.mlp.up_proj.lora_B.weight", torch::zeros({48, 4})}});
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Contains("adapter_model.safetensors: the model has no module "
                                                             "'model.layers.7.mlp.up_proj'"));
  save_safetensors(dir + "/adapter_model.safetensors",
                   {{"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", torch::zeros({4, 32})}});
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Contains("has lora_A but not lora_B"));
  save_safetensors(dir + "/adapter_model.safetensors", {{"model.layers.0.mlp.up_proj.lora_A.weight", torch::zeros({4, 32})}});
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Contains("does not start with 'base_model.model.'"));
}

}  // namespace owl2_test_lora
