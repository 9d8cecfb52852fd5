// Tokenizer: ids against the slow sentencepiece LLaMA tokenizer (golden.json from
// scripts/make_tokenizer_golden.py), the <|image|> chunking token by token, decode, and load errors.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "tests/helpers.h"
#include "tests/tokenizer_fixture.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_tokenizer {

using Catch::Matchers::Contains;
using owl2::kImageTokenIndex;
using owl2::Tokenizer;
using owl2::test::read_text;
using owl2::test::source_path;
using owl2::test::cat;
using owl2::test::Ids;

namespace {
const Tokenizer& tiny() { return owl2::test::tiny_tokenizer(); }
nlohmann::json golden() { return nlohmann::json::parse(read_text(source_path("tests/fixtures/tokenizer/golden.json"))); }
}  // namespace

TEST_CASE("encode matches the slow sentencepiece LLaMA tokenizer on every golden case", "[tokenizer]") {
  const auto g = golden();
  REQUIRE(tiny().vocab_size() == g["vocab_size"].get<int64_t>());
  REQUIRE(g["cases"].size() >= 15);
  for (const auto& c : g["cases"]) {
    const auto text = c["text"].get<std::string>();
    INFO("text: '" << text << "'");
    CHECK(tiny().encode(text) == c["ids"].get<Ids>());
    CHECK(tiny().encode_with_images(text) == c["image_ids"].get<Ids>());
    CHECK(tiny().decode(c["image_ids"].get<Ids>()) == c["decoded"].get<std::string>());
  }
}

TEST_CASE("special tokens: BOS 1, EOS 2, unk 0 = pad, literal </s> in text becomes id 2", "[tokenizer]") {
  CHECK(Tokenizer::kBosId == 1);
  CHECK(Tokenizer::kEosId == 2);
  CHECK(Tokenizer::kUnkId == 0);
  CHECK(Tokenizer::kPadId == 0);
  CHECK(tiny().id_to_piece(1) == "<s>");
  CHECK(tiny().id_to_piece(2) == "</s>");
  CHECK(tiny().id_to_piece(0) == "<unk>");
  CHECK(tiny().encode("").size() == 1);
  CHECK(tiny().encode("", false).empty());
  // "a</s>b": each side is a separate chunk with its own dummy prefix.
  CHECK(tiny().encode("a</s>b") == cat({{1}, tiny().encode("a", false), {2}, tiny().encode("b", false)}));
  CHECK(tiny().encode("</s>") == Ids{1, 2});
  CHECK(tiny().encode("<s>x", false) == cat({{1}, tiny().encode("x", false)}));
  CHECK(tiny().encode("<unk>", false) == Ids{0});
  CHECK(tiny().encode("hello", false)[0] != 1);
  CHECK_THROWS_AS(tiny().id_to_piece(1000), std::out_of_range);
}

TEST_CASE("image placeholder: chunks encoded alone, first BOS only, one -200 per placeholder", "[tokenizer]") {
  const auto& t = tiny();
  const Ids describe = t.encode("\nDescribe the image.", false);  // a fresh chunk: starts with the dummy "▁"
  REQUIRE(t.id_to_piece(describe[0]).rfind("\xE2\x96\x81", 0) == 0);  // "▁..."
  CHECK(t.encode_with_images("<|image|>\nDescribe the image.") == cat({{1, kImageTokenIndex}, describe}));
  CHECK(t.encode_with_images("<|image|>") == Ids{1, kImageTokenIndex});
  CHECK(t.encode_with_images("<|image|>", false) == Ids{kImageTokenIndex});
  CHECK(t.encode_with_images("<|image|><|image|>") == Ids{1, kImageTokenIndex, kImageTokenIndex});
  CHECK(t.encode_with_images("x<|image|>") == cat({t.encode("x"), {kImageTokenIndex}}));
  // Mid-text: both sides tokenized as separate strings, no BOS after the first chunk.
  const Ids ids = t.encode_with_images("USER: <|image|>What is it? ASSISTANT:");
  CHECK(ids == cat({t.encode("USER: "), {kImageTokenIndex}, t.encode("What is it? ASSISTANT:", false)}));
  CHECK(std::count(ids.begin(), ids.end(), Tokenizer::kBosId) == 1);
  // The same text without chunking differs: "<|image|>" is then ordinary text.
  CHECK(t.encode("USER: <|image|>What is it?") != t.encode_with_images("USER: <|image|>What is it?"));
  // Three placeholders, with text between and after.
  const Ids three = t.encode_with_images("a<|image|>b c<|image|><|image|> d");
  CHECK(three == cat({t.encode("a"), {-200}, t.encode("b c", false), {-200, -200}, t.encode(" d", false)}));
}

TEST_CASE("decode skips special tokens and placeholders and round-trips text", "[tokenizer]") {
  const auto& t = tiny();
  for (const std::string s : {"The image shows a red circle.", "two  spaces", "café 日本", "a\nb"}) {
    CHECK(t.decode(t.encode(s)) == s);
  }
  CHECK(t.decode({1, -200, -100, 2, 0}).empty());
  CHECK(t.decode(cat({t.encode("left"), {2}})) == "left");
  CHECK_THROWS_WITH(t.decode({5000}), Contains("id 5000 >= vocab size 1000"));
}

TEST_CASE("a missing or non-LLaMA model file is an error naming the path", "[tokenizer]") {
  CHECK_THROWS_WITH(Tokenizer("/nonexistent/tok.model"),
                    Contains("/nonexistent/tok.model") && Contains("cannot load SentencePiece model"));
  const std::string not_a_model = source_path("tests/fixtures/tokenizer/golden.json");
  CHECK_THROWS_WITH(Tokenizer(not_a_model), Contains(not_a_model));
}

}  // namespace owl2_test_tokenizer
