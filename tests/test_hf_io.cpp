// Hugging Face interchange: export -> import round trips bit for bit, the reference-layout .bin fixture imports
// to the reference logits, `owl2 init` reproduces HF CLIP and HF LLaMA, and errors name the key and the shapes.
// Fixtures: scripts/make_hf_fixtures.py (tests/fixtures/hf/).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "owl2/io/safetensors.h"
#include "owl2/io/state_dict.h"
#include "tests/golden_io.h"
#include "tests/helpers.h"
#include "trainers/io/hf_io.h"
#include "trainers/io/model_dir.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_hf_io {

using Catch::Matchers::Contains;
using owl2::test::max_abs_diff;
using owl2::test::read_golden;
using owl2::test::read_text;
using owl2::test::run_owl2;
using owl2::test::source_path;
using owl2::test::temp_dir;
namespace fs = std::filesystem;

namespace {

const std::string kTokenizer = "tests/fixtures/tokenizer/tiny_llama.model";

std::string hf_fixture(const std::string& rel) { return source_path("tests/fixtures/hf/" + rel); }

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text(path)); }

// A model directory (config.yaml + safetensors + tokenizer.model) of the tiny golden config with every parameter
// random, norm gains and biases included, so that any mix-up of names or bytes shows.
owl2::MPLUGOwl2ForCausalLM write_model_dir(const std::string& dir, torch::Dtype dtype) {
  owl2::RunConfig cfg;
  cfg.model = owl2::test::tiny_golden_config();
  torch::manual_seed(7);
  owl2::MPLUGOwl2ForCausalLM model(cfg.model);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0.0, 0.5);
  }
  model->to(dtype);
  owl2::save_state_dict(*model, dir);
  cfg.data.tokenizer = owl2::copy_tokenizer_into(source_path(kTokenizer), dir);
  std::ofstream(dir + "/config.yaml") << owl2::to_yaml(cfg);
  return model;
}

void require_bitwise_equal(const owl2::MPLUGOwl2ForCausalLM& a, const owl2::MPLUGOwl2ForCausalLM& b) {
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (const auto& item : pa) {
    INFO(item.key());
    const auto& other = pb[item.key()];
    REQUIRE(item.value().scalar_type() == other.scalar_type());
    CHECK(torch::equal(item.value(), other));
  }
}

void round_trip(torch::Dtype dtype, const std::string& flag) {
  const auto root = temp_dir("owl2_hf_rt");
  const auto before = write_model_dir(root + "/src", dtype);
  const auto ex = run_owl2("export --from " + root + "/src --to " + root + "/hf --shard-size 40KB --dtype " + flag);
  INFO(ex.out);
  REQUIRE(ex.rc == 0);
  // Several shards with an index, named as the reference, plus the abstractor's two buffers per layer.
  const auto index = read_json(root + "/hf/model.safetensors.index.json");
  const auto params = before->named_parameters();
  CHECK(index["weight_map"].size() == params.size() + 4);
  for (const auto& p : params) CHECK(index["weight_map"].contains(p.key()));
  CHECK(index["weight_map"].contains("model.visual_abstractor.encoder.layers.1.crossattention.attention.k_pos_embed"));
  const auto im = run_owl2("import --from " + root + "/hf --to " + root + "/back");
  INFO(im.out);
  REQUIRE(im.rc == 0);
  CHECK_THAT(im.out, Contains(std::to_string(params.size()) + " tensors matched; 4 recomputable buffers ignored"));

  owl2::RunConfig cfg;
  cfg.model = owl2::test::tiny_golden_config();
  owl2::MPLUGOwl2ForCausalLM after(cfg.model);
  after->to(dtype);
  const auto src = owl2::open_tensor_source(root + "/back");
  CHECK(src->meta("lm_head.weight").dtype == dtype);  // stored as exported, no silent widening
  owl2::load_state_dict(*after, *src);
  require_bitwise_equal(before, after);
  // The imported folder carries its tokenizer and names it relatively: moved, it still opens.
  CHECK_THAT(read_text(root + "/back/config.yaml"), Contains("tokenizer: tokenizer.model"));
  CHECK(read_text(root + "/back/tokenizer.model") == read_text(source_path(kTokenizer)));
  fs::rename(root + "/back", root + "/moved");
  const auto loaded = owl2::load_model_dir(root + "/moved");
  CHECK(loaded.cfg.data.tokenizer == root + "/moved/tokenizer.model");
  CHECK(torch::equal(loaded.model->lm_head->weight, before->lm_head->weight.to(torch::kFloat32)));
}

// A copy of the reference fixture with the tiny tokenizer added (import copies tokenizer.model when present).
std::string reference_copy() {
  const auto dir = temp_dir("owl2_hf_ref") + "/ref";
  fs::copy(hf_fixture("ref"), dir, fs::copy_options::recursive);
  fs::copy_file(source_path(kTokenizer), dir + "/tokenizer.model");
  return dir;
}

// The init fixture's model: `owl2 init` on clip/ + llama/ with tiny.yaml (8 px CLIP -> 12 px ViT).
std::string run_init(const std::string& out, int seed, const std::string& clip = hf_fixture("clip")) {
  const auto r = run_owl2("init --vision " + clip + " --llm " + hf_fixture("llama") + " --config " +
                          hf_fixture("tiny.yaml") + " --out " + out + " --seed " + std::to_string(seed));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  return r.out;
}

}  // namespace

TEST_CASE("export then import round-trips an fp32 model bit for bit", "[hf]") { round_trip(torch::kFloat32, "fp32"); }

TEST_CASE("export refuses a folder whose tokenizer lies outside it by file and key, unless allowed", "[hf]") {
  const auto root = temp_dir("owl2_hf_outside");
  write_model_dir(root + "/src", torch::kFloat32);
  std::string yaml = read_text(root + "/src/config.yaml");
  const auto at = yaml.find("tokenizer: tokenizer.model");
  REQUIRE(at != std::string::npos);
  yaml.replace(at, 26, "tokenizer: " + source_path(kTokenizer));  // what an older owl2 recorded
  std::ofstream(root + "/src/config.yaml") << yaml;
  const auto refused = run_owl2("export --from " + root + "/src --to " + root + "/hf");
  CHECK(refused.rc == 2);
  CHECK_THAT(refused.out, Contains(root + "/src/config.yaml: data.tokenizer '" + source_path(kTokenizer) +
                                   "' is outside the model folder") &&
                              Contains("--allow-external-tokenizer"));
  CHECK_FALSE(fs::exists(root + "/hf/config.json"));
  const auto allowed = run_owl2("export --from " + root + "/src --to " + root + "/hf --allow-external-tokenizer");
  INFO(allowed.out);
  CHECK(allowed.rc == 0);
  CHECK(read_text(root + "/hf/tokenizer.model") == read_text(source_path(kTokenizer)));
}

TEST_CASE("export then import round-trips a bf16 model bit for bit", "[hf]") { round_trip(torch::kBFloat16, "bf16"); }

TEST_CASE("import of the reference-layout .bin shards gives the reference logits", "[hf][golden]") {
  const auto ref = reference_copy();
  const auto out = fs::path(ref).parent_path().string() + "/imported";
  const auto r = run_owl2("import --from " + ref + " --to " + out + " --dtype fp32");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  // 2 rotary_emb.inv_freq + 2 x (q_pos_embed, k_pos_embed) are recomputed, not imported.
  CHECK_THAT(r.out, Contains("6 recomputable buffers ignored"));
  CHECK_THAT(r.out, Contains("model.layers.1.self_attn.rotary_emb.inv_freq"));
  auto loaded = owl2::load_model_dir(out);
  auto& model = loaded.model;
  model->to(torch::kFloat64);
  const auto g = read_golden("tests/fixtures/hf/ref_golden.safetensors");
  owl2::ModelInputs in;
  in.input_ids = g.at("in.input_ids");
  in.images = g.at("in.images");
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(in).logits;
  REQUIRE(logits.sizes() == g.at("out.logits").sizes());
  // The fixture stores float16; fp32 holds those values exactly and the model runs in float64 like the reference.
  CHECK(max_abs_diff(logits, g.at("out.logits")) < 1e-9);
}

TEST_CASE("init: the ViT equals HF CLIP with interpolated positions, the decoder equals HF LLaMA", "[hf][golden]") {
  const auto out = temp_dir("owl2_hf_init") + "/m";
  const auto text = run_init(out, 0);
  CHECK_THAT(text, Contains("abstractor random (seed 0)"));
  owl2::ModelDirOptions with_tokenizer;  // the fixture's LLaMA folder has no tokenizer.model
  with_tokenizer.tokenizer = source_path(kTokenizer);
  auto loaded = owl2::load_model_dir(out, with_tokenizer);
  auto& model = loaded.model;
  model->to(torch::kFloat64);
  const auto g = read_golden("tests/fixtures/hf/init_golden.safetensors");
  torch::NoGradGuard no_grad;

  // Vision: HF CLIP (8 px, 2x2 grid) run at 12 px with interpolate_pos_encoding, post-LN on every token. owl2
  // interpolates the positions in float64 but stores them in float32 (the init dtype), hence 1e-6 (measured 2e-8),
  // not 1e-10; a wrong q/k/v interleave or grid is off by O(1).
  const auto vit = model->model->vision_model(g.at("in.images"));
  REQUIRE(vit.sizes() == g.at("out.vit_hidden").sizes());
  CHECK(max_abs_diff(vit, g.at("out.vit_hidden")) < 1e-6);

  // Decoder: text-only logits of HF LlamaForCausalLM on the same float16 weights, both in float64.
  owl2::ModelInputs in;
  in.input_ids = g.at("in.input_ids");
  const auto logits = model->forward(in).logits;
  REQUIRE(logits.sizes() == g.at("out.logits").sizes());
  CHECK(max_abs_diff(logits, g.at("out.logits")) < 1e-9);

  // Both multiway copies start as the LLaMA tensor, so an image-routed token takes the same path as text.
  for (const auto& p : model->named_parameters()) {
    const auto pos = p.key().find(".multiway.1.");
    if (pos == std::string::npos) continue;
    auto twin = p.key();
    twin.replace(pos, 12, ".multiway.0.");
    INFO(p.key());
    CHECK(torch::equal(p.value(), model->named_parameters()[twin]));
  }
  auto batch = model->splice_inputs(in);
  const auto text_only = model->lm_head(model->decode(batch.inputs_embeds_BSD, {}, batch.position_ids_BS, batch.routing));
  auto modality = torch::zeros_like(batch.modality_BS);
  modality.index_put_({torch::indexing::Slice(), torch::indexing::Slice(1, 4)}, 1);
  const auto mixed = model->lm_head(model->decode(batch.inputs_embeds_BSD, {}, batch.position_ids_BS,
                                                  owl2::ModalityRouting::from_modality(modality)));
  CHECK(max_abs_diff(mixed, text_only) < 1e-12);
}

TEST_CASE("init: the abstractor is the documented seeded init, the rest does not depend on the seed", "[hf]") {
  const auto root = temp_dir("owl2_hf_seed");
  run_init(root + "/a", 3);
  run_init(root + "/b", 3);
  run_init(root + "/c", 4);
  const owl2::SafetensorsFile a(root + "/a/model.safetensors"), b(root + "/b/model.safetensors"),
      c(root + "/c/model.safetensors");
  std::vector<torch::Tensor> weights;
  for (const auto& n : a.names()) {
    INFO(n);
    const bool abstractor = n.rfind("model.visual_abstractor.", 0) == 0;
    CHECK(torch::equal(a.get(n), b.get(n)));
    const bool random = abstractor && (n.find(".bias") == std::string::npos && n.find("norm") == std::string::npos &&
                                       n.find("ffn_ln") == std::string::npos);
    CHECK(torch::equal(a.get(n), c.get(n)) == !random);
    if (!abstractor) continue;
    if (random) weights.push_back(a.get(n).flatten());
    else if (n.find("weight") != std::string::npos) CHECK(torch::equal(a.get(n), torch::ones_like(a.get(n))));
    else CHECK(torch::equal(a.get(n), torch::zeros_like(a.get(n))));
  }
  // normal(0, 0.02) over ~5k values: the sample std is within a few percent of 0.02.
  const auto all = torch::cat(weights);
  CHECK(all.numel() > 4000);
  CHECK(all.std().item<double>() == Approx(0.02).epsilon(0.05));
  CHECK(std::abs(all.mean().item<double>()) < 0.002);
}

TEST_CASE("init: CLIP files with the vision_model. prefix (CLIPModel, transformers 4) give the same model", "[hf]") {
  const auto root = temp_dir("owl2_hf_prefix");
  fs::create_directories(root + "/clip");
  const owl2::SafetensorsFile clip(hf_fixture("clip/model.safetensors"));
  owl2::NamedTensors renamed;
  for (const auto& n : clip.names()) renamed.emplace_back("vision_model." + n, clip.get(n));
  renamed.emplace_back("text_model.embeddings.token_embedding.weight", torch::zeros({4, 2}));  // a CLIPModel's text half
  owl2::save_safetensors(root + "/clip/model.safetensors", renamed);
  run_init(root + "/plain", 0);
  const auto text = run_init(root + "/prefixed", 0, root + "/clip");
  CHECK_THAT(text, Contains("not used: text_model.embeddings.token_embedding.weight"));
  const owl2::SafetensorsFile a(root + "/plain/model.safetensors"), b(root + "/prefixed/model.safetensors");
  REQUIRE(a.names() == b.names());
  for (const auto& n : a.names()) CHECK(torch::equal(a.get(n), b.get(n)));
}

TEST_CASE("init: a CLIP whose width differs from the config names the key and both shapes", "[hf]") {
  const auto root = temp_dir("owl2_hf_wide");
  // A 32-wide ViT (and abstractor, which must read it) against the 16-wide CLIP fixture; the decoder fits.
  const std::string yaml = R"(model:
  vision: {hidden_size: 32, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2, image_size: 12, patch_size: 4}
  abstractor: {num_learnable_queries: 4, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
               intermediate_size: 24, encoder_hidden_size: 32, grid_size: 3}
  decoder: {vocab_size: 48, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
            num_key_value_heads: 4, max_position_embeddings: 64}
)";
  std::ofstream(root + "/wide.yaml") << yaml;
  const auto r = run_owl2("init --vision " + hf_fixture("clip") + " --llm " + hf_fixture("llama") + " --config " +
                          root + "/wide.yaml --out " + root + "/m");
  INFO(r.out);
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("CLIP key embeddings.class_embedding has shape [16] in"));
  CHECK_THAT(r.out, Contains("the config needs [32] (for model.vision_model.embeddings.cls_token)"));
  CHECK_THAT(r.out, Contains("CLIP key encoder.layers.1.self_attn.q_proj.weight has shape [16, 16]"));
  CHECK_THAT(r.out, Contains("the config needs [32, 32] (for model.vision_model.encoder.layers.1.self_attn.query_key_value.weight)"));
  CHECK_FALSE(fs::exists(root + "/m/config.yaml"));  // nothing that looks like a model directory
}

TEST_CASE("init: a CLIP head count other than the config's is refused (the interleave depends on it)", "[hf]") {
  const auto root = temp_dir("owl2_hf_heads");
  std::string yaml = read_text(hf_fixture("tiny.yaml"));
  const std::string from = "num_hidden_layers: 2, num_attention_heads: 2, num_channels: 3";
  REQUIRE(yaml.find(from) != std::string::npos);
  yaml.replace(yaml.find(from), from.size(), "num_hidden_layers: 2, num_attention_heads: 4, num_channels: 3");
  std::ofstream(root + "/heads.yaml") << yaml;
  const auto r = run_owl2("init --vision " + hf_fixture("clip") + " --llm " + hf_fixture("llama") + " --config " +
                          root + "/heads.yaml --out " + root + "/m");
  INFO(r.out);
  CHECK(r.rc == 2);
  CHECK_THAT(r.out, Contains("clip/config.json: num_attention_heads 2 but the config's vision.num_attention_heads is 4"));
}

TEST_CASE("import: a wrong shape names the key, the file and both shapes", "[hf]") {
  const auto ref = reference_copy();
  auto j = read_json(ref + "/config.json");
  j["intermediate_size"] = 40;
  std::ofstream(ref + "/other.json") << j.dump();
  const auto r = run_owl2("import --from " + ref + " --to " + ref + "/../out --config " + ref + "/other.json");
  INFO(r.out);
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("model.layers.0.mlp.down_proj.weight: checkpoint [32, 48] in " + ref +
                             "/pytorch_model-00001-of-00002.bin vs config [32, 40]"));
  CHECK_THAT(r.out, Contains("6 shape mismatch(es)"));  // gate, up, down in each of the 2 layers
}

TEST_CASE("import: missing and unexpected keys are listed by name", "[hf]") {
  const auto ref = reference_copy();
  const auto src = owl2::open_tensor_source(ref);
  owl2::NamedTensors kept;
  for (const auto& n : src->names())
    if (n != "lm_head.weight") kept.emplace_back(n, src->get(n));
  kept.emplace_back("model.layers.2.mlp.up_proj.weight", torch::zeros({48, 32}));
  const auto dir = fs::path(ref).parent_path().string() + "/st";
  fs::create_directories(dir);
  fs::copy_file(ref + "/config.json", dir + "/config.json");
  owl2::save_safetensors(dir + "/model.safetensors", kept);
  const auto r = run_owl2("import --from " + dir + " --to " + dir + "/../out");
  INFO(r.out);
  CHECK(r.rc == 1);
  CHECK_THAT(r.out, Contains("1 missing from the checkpoint:\n  lm_head.weight [48, 32]"));
  CHECK_THAT(r.out, Contains("1 unexpected in the checkpoint"));
  CHECK_THAT(r.out, Contains("\n  model.layers.2.mlp.up_proj.weight"));
  CHECK_FALSE(r.out.find("inv_freq") != std::string::npos);  // recomputable buffers are not problems
  // --allow-unexpected drops the extra name; the missing one is still an error.
  const auto r2 = run_owl2("import --allow-unexpected --from " + dir + " --to " + dir + "/../out");
  INFO(r2.out);
  CHECK(r2.rc == 1);
  CHECK_THAT(r2.out, Contains("lm_head.weight [48, 32]"));
  CHECK_FALSE(r2.out.find("up_proj") != std::string::npos);
}

TEST_CASE("export config.json: the reference fields of spec 2.3, readable by load_config", "[hf]") {
  // The 7B values: every field of the reference-layout fixture, with the same value.
  const auto ref = read_json(source_path("tests/fixtures/config/owl2-7b-config.json"));
  const auto cfg7b = owl2::load_config(source_path("tests/fixtures/config/owl2-7b-config.json"));
  const auto ours = owl2::hf_config_json(cfg7b, "float16");
  std::set<std::string> keys, want;
  for (const auto& [k, v] : ours.items()) keys.insert(k);
  for (const auto& [k, v] : ref.items()) want.insert(k);
  want.insert({"attention_bias", "transformers_version", "image_aspect_ratio"});  // spec §1.3 / §2.3 / §3.1
  CHECK(keys == want);
  for (const auto& [k, v] : ref.items()) {
    INFO(k);
    CHECK(ours[k] == v);
  }
  CHECK(ours["image_aspect_ratio"] == "pad");  // data.image_mode's default

  // Round trip of the tiny config through an exported config.json.
  owl2::RunConfig tiny;
  tiny.model = owl2::test::tiny_golden_config();
  const auto dir = temp_dir("owl2_hf_cfg");
  std::ofstream(dir + "/config.json") << owl2::hf_config_json(tiny, "float32").dump(2);
  owl2::RunConfig back;
  back.model = owl2::load_config(dir + "/config.json").model;
  CHECK(owl2::to_yaml(back) == owl2::to_yaml(tiny));
}

TEST_CASE("export writes the processor, generation and tokenizer files of the reference layout", "[hf]") {
  const auto root = temp_dir("owl2_hf_files");
  write_model_dir(root + "/src", torch::kFloat32);
  const auto r = run_owl2("export --from " + root + "/src --to " + root + "/hf");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const auto hf = root + "/hf/";
  CHECK(fs::exists(hf + "model.safetensors"));
  CHECK_FALSE(fs::exists(hf + "model.safetensors.index.json"));  // one shard under 5GB
  CHECK(read_json(hf + "config.json")["torch_dtype"] == "float32");
  // CLIPImageProcessor for the tiny 12 px model (spec §3.1).
  const auto pre = read_json(hf + "preprocessor_config.json");
  CHECK(pre["image_processor_type"] == "CLIPImageProcessor");
  CHECK(pre["size"] == nlohmann::json{{"shortest_edge", 12}});
  CHECK(pre["crop_size"] == nlohmann::json{{"height", 12}, {"width", 12}});
  CHECK(pre["resample"] == 3);
  CHECK(pre["image_mean"] == nlohmann::json{0.48145466, 0.4578275, 0.40821073});
  CHECK(pre["image_std"] == nlohmann::json{0.26862954, 0.26130258, 0.27577711});
  const auto gen = read_json(hf + "generation_config.json");
  CHECK(gen["bos_token_id"] == 1);
  CHECK(gen["eos_token_id"] == 2);
  CHECK(gen["pad_token_id"] == 0);
  const auto tok = read_json(hf + "tokenizer_config.json");
  CHECK(tok["tokenizer_class"] == "LlamaTokenizer");
  CHECK(tok["bos_token"] == "<s>");
  CHECK(tok["eos_token"] == "</s>");
  CHECK(read_json(hf + "special_tokens_map.json")["unk_token"] == "<unk>");
  CHECK(read_text(hf + "tokenizer.model") == read_text(source_path(kTokenizer)));
}

}  // namespace owl2_test_hf_io
