// The name tables of the config's choices and of the weight dtypes: every value round-trips through its name, an
// unknown name is refused with the valid ones listed, and `owl2 score` dispatches every metric it documents.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "eval/score_files.h"
#include "owl2/io/dtype_names.h"
#include "trainers/config.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_choices {

using Catch::Matchers::Contains;
using namespace owl2;

namespace {

// parse(print(x)) == x for every value of a table, and no two values share a name.
template <class E, size_t N> void check_round_trip(const NameTable<E, N>& table) {
  std::vector<std::string_view> seen;
  for (const auto& e : table) {
    INFO(std::string(e.name));
    CHECK(find_by_name(table, name_of(table, e.value)) == e.value);
    CHECK(std::find(seen.begin(), seen.end(), e.name) == seen.end());
    seen.push_back(e.name);
  }
  CHECK_FALSE(find_by_name(table, "no-such-name").has_value());
}

}  // namespace

TEST_CASE("every choice name table round-trips", "[config][choices]") {
  check_round_trip(kPrecisionNames);
  check_round_trip(kImageModeNames);
  check_round_trip(kTemplateKindNames);
  check_round_trip(data::kLengthPolicyNames);
  check_round_trip(kVideoLayoutNames);
  CHECK(joined_names(kPrecisionNames) == "fp32|bf16|bf16-autocast");
}

TEST_CASE("every choice value survives to_yaml and back through the reader", "[config][choices]") {
  for (const auto& p : kPrecisionNames) {
    for (const auto& m : kImageModeNames) {
      RunConfig cfg;
      cfg.train.precision = p.value;
      cfg.data.image_mode = m.value;
      cfg.data.chat_template = TemplateKind::kVicunaV1;
      cfg.data.length_policy = data::LengthPolicy::kTruncate;
      const std::string yaml = to_yaml(cfg);
      CHECK_THAT(yaml, Contains("precision: " + std::string(p.name)) && Contains("image_mode: " + std::string(m.name)));
      const RunConfig back = parse_config_text(yaml);
      CHECK(back.train.precision == p.value);
      CHECK(back.data.image_mode == m.value);
      CHECK(back.data.chat_template == TemplateKind::kVicunaV1);
      CHECK(back.data.length_policy == data::LengthPolicy::kTruncate);
    }
  }
}

TEST_CASE("an unknown choice names the file, line and key and lists the valid values", "[config][choices]") {
  CHECK_THROWS_WITH(parse_config_text("data:\n  image_mode: stretch\n", "run.yaml"),
                    Contains("run.yaml:2") && Contains("data.image_mode: expected one of resize|pad|crop, got 'stretch'"));
  CHECK_THROWS_WITH(parse_config_text("data: {length_policy: cut}\n", "run.yaml"),
                    Contains("data.length_policy: expected one of drop|truncate, got 'cut'"));
  CHECK_THROWS_WITH(parse_config_text("data: {chat_template: v2}\n", "run.yaml"),
                    Contains("data.chat_template: expected one of mplug_owl2|vicuna_v1, got 'v2'"));
  CHECK_THROWS_WITH(parse_config_text("train: {precision: [bf16]}\n", "run.yaml"),
                    Contains("train.precision: expected a string"));
}

TEST_CASE("the dtype name table round-trips and rejects an unknown name by name", "[io][choices]") {
  for (const auto& e : kDtypeNames) {
    CHECK(parse_dtype_flag(std::string(dtype_flag_name(e.dtype))) == e.dtype);
    CHECK(hf_dtype_name(e.dtype) == e.hf);
  }
  CHECK(hf_dtype_name(c10::kBFloat16) == "bfloat16");
  CHECK_FALSE(parse_dtype_flag("").has_value());
  CHECK_THROWS_WITH(parse_dtype_flag("float16"), Contains("--dtype 'float16': expected bf16, fp16 or fp32"));
  CHECK_THROWS_WITH(hf_dtype_name(c10::kLong), Contains("no HF torch_dtype for Long"));
}

TEST_CASE("owl2 score has a table row for every metric it documents", "[eval][choices]") {
  // The metrics docs/eval.md documents for `owl2 score`.
  const std::vector<std::string> documented = {"cider", "bleu", "rouge_l", "captions", "vqa", "vqa_official",
                                               "textvqa", "pope", "mme", "mmbench", "scienceqa", "gqa",
                                               "seed", "video_qa", "qbench", "mmmu", "mmlu"};
  CHECK(eval::score_metric_names() == documented);
  for (const auto& m : documented) {
    INFO(m);
    // A dispatched metric reads its files, so a missing file (not an unknown metric) is the error.
    try {
      eval::score_files(m, "/nonexistent/refs.json", "/nonexistent/preds.json");
      FAIL("scored missing files");
    } catch (const std::exception& e) {
      CHECK_THAT(e.what(), !Contains("unknown metric"));
    }
    CHECK(eval::score_metric_needs_refs(m) == (m != "mme"));
  }
  CHECK_THROWS_WITH(eval::score_files("cidr", "a", "b"),
                    Contains("unknown metric 'cidr': expected one of cider, bleu") && Contains("mmlu"));
}

}  // namespace owl2_test_choices
