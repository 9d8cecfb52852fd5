// Chat templates and label masking: prompts as strings, labels token by token, and goldens from
// scripts/make_tokenizer_golden.py (conversations.json).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <set>

#include "data/template.h"
#include "tests/helpers.h"
#include "tests/tokenizer_fixture.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_template {

using Catch::Matchers::Contains;
using owl2::chat_template;
using owl2::generation_prompt;
using owl2::kIgnoreIndex;
using owl2::kImageTokenIndex;
using owl2::Role;
using owl2::Tokenizer;
using owl2::tokenize_conversation;
using owl2::training_prompt;
using owl2::Turn;
using owl2::turns_from_json;
using owl2::test::read_text;
using owl2::test::source_path;
using owl2::test::cat;
using owl2::test::Ids;

namespace {
const Tokenizer& tiny() { return owl2::test::tiny_tokenizer(); }
Ids masked(size_t n) { return Ids(n, kIgnoreIndex); }
const std::string kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";
}  // namespace

TEST_CASE("mplug_owl2 prompts: no system prompt, image moved to the front with a newline", "[template]") {
  const auto t = chat_template("mplug_owl2");
  const std::vector<Turn> conv{{Role::kHuman, "What is this? <|image|>"},
                               {Role::kGpt, "A circle."},
                               {Role::kHuman, "Colour?"},
                               {Role::kGpt, "Red."}};
  CHECK(training_prompt(t, conv) == "USER: <|image|>\nWhat is this? ASSISTANT: A circle.</s>USER: Colour? ASSISTANT: Red.</s>");
  const std::vector<Turn> ask{{Role::kHuman, "<|image|>What is this?"}};
  CHECK(generation_prompt(t, ask) == "USER: <|image|>What is this? ASSISTANT:");
  CHECK(generation_prompt(t, ask, owl2::ImageLayout::kTraining) == "USER: <|image|>\nWhat is this? ASSISTANT:");
  const std::vector<Turn> follow{conv[0], conv[1], {Role::kHuman, "Colour?"}};
  CHECK(generation_prompt(t, follow) == "USER: <|image|>What is this? ASSISTANT: A circle.</s>USER: Colour? ASSISTANT:");
  // Several images in one turn keep their count.
  CHECK(training_prompt(t, {{Role::kHuman, "<|image|> vs <|image|>"}, {Role::kGpt, "Same."}}) ==
        "USER: <|image|><|image|>\nvs ASSISTANT: Same.</s>");
  // A turn that is only an image: the trailing newline is stripped.
  CHECK(training_prompt(t, {{Role::kHuman, "<|image|>"}, {Role::kGpt, "A dog."}}) ==
        "USER: <|image|> ASSISTANT: A dog.</s>");
}

TEST_CASE("generate and chat prompts equal the reference CLI's, the training layout keeps its newline", "[template]") {
  // Golden prompts and ids: scripts/make_prompt_golden.py, the reference CLI's conversation building and
  // tokenizer_image_token on the reference tokenizer (an image first turn, a second turn, a text-only turn, a
  // typed placeholder, the vicuna_v1 template).
  const auto g = nlohmann::json::parse(read_text(source_path("tests/fixtures/tokenizer/generation_prompts.json")));
  REQUIRE(g["cases"].size() == 5);
  std::set<std::string> names;
  for (const auto& c : g["cases"]) {
    const auto name = c["name"].get<std::string>();
    INFO("case: " << name);
    names.insert(name);
    const auto tmpl = chat_template(c["template"].get<std::string>());
    // As owl2 generate / owl2 chat build it: the image belongs to the first message, replies go in the history.
    std::vector<Turn> turns;
    const auto& cturns = c["turns"];
    for (size_t i = 0; i < cturns.size(); ++i) {
      const int64_t images = i == 0 && c["image"].get<bool>() ? 1 : 0;
      turns.push_back({Role::kHuman, owl2::user_message(cturns[i]["user"].get<std::string>(), images)});
      if (!cturns[i]["reply"].is_null()) turns.push_back({Role::kGpt, cturns[i]["reply"].get<std::string>()});
    }
    const auto prompt = generation_prompt(tmpl, turns);
    CHECK(prompt == c["prompt"].get<std::string>());
    CHECK(tiny().encode_with_images(prompt) == c["ids"].get<Ids>());
    // The same conversation as a training sample: "<|image|>\n" + text.
    turns.push_back({Role::kGpt, c["answer"].get<std::string>()});
    CHECK(training_prompt(tmpl, turns) == c["training_prompt"].get<std::string>());
    const auto sample = tokenize_conversation(tiny(), tmpl, turns);
    CHECK(sample.input_ids == c["training_ids"].get<Ids>());
    CHECK_FALSE(sample.mismatch);
  }
  CHECK(names == std::set<std::string>{"image first turn", "second turn", "text-only turn", "typed placeholder",
                                       "vicuna_v1 image first turn"});
  // The three layouts spelled out, so that a regenerated golden cannot drift unnoticed.
  CHECK(g["cases"][0]["prompt"] == "USER: <|image|>What is in the picture? ASSISTANT:");
  CHECK(g["cases"][0]["training_prompt"] == "USER: <|image|>\nWhat is in the picture? ASSISTANT: A red circle.</s>");
  CHECK(g["cases"][1]["prompt"] ==
        "USER: <|image|>What is in the picture? ASSISTANT: A red circle.</s>USER: Where is it? ASSISTANT:");
  CHECK(g["cases"][2]["prompt"] == "USER: Text only question 12? ASSISTANT:");
  CHECK(g["cases"][3]["prompt"] == "USER: <|image|>Compare  with the square ASSISTANT:");
}

TEST_CASE("user_message puts one placeholder per attached image in front, a typed one without image is an error",
          "[template]") {
  using owl2::user_message;
  CHECK(user_message("What is this?", 1) == "<|image|>What is this?");
  CHECK(user_message("Compare these", 2) == "<|image|><|image|>Compare these");
  // Typed placeholders stand for the attached images: removed, the text stripped (the reference's conversation
  // class does the same for a message that carries an image).
  CHECK(user_message(" <|image|>\nWhat is this? ", 1) == "<|image|>What is this?");
  CHECK(user_message("a <|image|> b <|image|>", 1) == "<|image|>a  b");
  CHECK(user_message("", 1) == "<|image|>");
  // Without an image the text is kept as typed.
  CHECK(user_message(" Hello there ", 0) == " Hello there ");
  CHECK_THROWS_WITH(user_message("Describe <|image|>", 0),
                    Contains("the message contains <|image|> but no image is attached") && Contains("--image FILE") &&
                        Contains("/image PATH"));
}

TEST_CASE("vicuna_v1 prompts carry the system prompt, a system turn replaces it", "[template]") {
  const auto t = chat_template("vicuna_v1");
  CHECK(chat_template("v1").system == t.system);
  CHECK(t.system == kVicunaSystem);
  CHECK(training_prompt(t, {{Role::kHuman, "Hi"}, {Role::kGpt, "Hello"}}) ==
        kVicunaSystem + " USER: Hi ASSISTANT: Hello</s>");
  CHECK(training_prompt(t, {{Role::kSystem, " Be brief. "}, {Role::kHuman, "Hi"}, {Role::kGpt, "Hello"}}) ==
        "Be brief. USER: Hi ASSISTANT: Hello</s>");
  // mplug_owl2 has no default system prompt but emits one a sample carries.
  CHECK(training_prompt(chat_template("mplug_owl2"), {{Role::kSystem, "Be brief."}, {Role::kHuman, "Hi"}, {Role::kGpt, "Yo"}}) ==
        "Be brief. USER: Hi ASSISTANT: Yo</s>");
  CHECK(generation_prompt(t, {{Role::kHuman, "<|image|>\nHi"}}) == kVicunaSystem + " USER: <|image|>Hi ASSISTANT:");
}

TEST_CASE("bad conversations and template names are errors with the turn index", "[template]") {
  const auto t = chat_template("mplug_owl2");
  CHECK_THROWS_WITH(chat_template("llava"), Contains("expected mplug_owl2|vicuna_v1, got 'llava'"));
  CHECK_THROWS_WITH(training_prompt(t, {{Role::kHuman, "a"}, {Role::kHuman, "b"}}),
                    Contains("turn 1: expected a gpt turn, got human"));
  CHECK_THROWS_WITH(training_prompt(t, {{Role::kHuman, "a"}}), Contains("last turn (0) is a human turn"));
  CHECK_THROWS_WITH(generation_prompt(t, {{Role::kHuman, "a"}, {Role::kGpt, "b"}}), Contains("must be a human turn"));
  CHECK_THROWS_WITH(training_prompt(t, {}), Contains("no human turn"));
  // The reference drops a leading gpt turn.
  CHECK(training_prompt(t, {{Role::kGpt, "x"}, {Role::kHuman, "a"}, {Role::kGpt, "b"}}) == "USER: a ASSISTANT: b</s>");
}

TEST_CASE("LLaVA JSON conversations parse, and malformed turns name the entry", "[template]") {
  const auto j = nlohmann::json::parse(
      R"([{"from":"system","value":"S"},{"from":"human","value":"<|image|>\nQ"},{"from":"gpt","value":"A"}])");
  const auto turns = turns_from_json(j, "d.json: sample 7");
  REQUIRE(turns.size() == 3);
  CHECK(turns[0].role == Role::kSystem);
  CHECK(turns[1].role == Role::kHuman);
  CHECK(turns[1].value == "<|image|>\nQ");
  CHECK(turns[2].role == Role::kGpt);
  CHECK_THROWS_WITH(turns_from_json(nlohmann::json::parse(R"([{"from":"bot","value":"x"}])"), "d.json: sample 7"),
                    Contains("d.json: sample 7: conversations[0]") && Contains("expected human|gpt|system, got 'bot'"));
  CHECK_THROWS_WITH(turns_from_json(nlohmann::json::parse(R"([{"from":"human"}])"), "f"),
                    Contains("f: conversations[0]: expected {\"from\": string, \"value\": string}"));
  CHECK_THROWS_WITH(turns_from_json(nlohmann::json::parse(R"({"from":"human"})"), "f"), Contains("expected a list, got object"));
  CHECK_THROWS_WITH(turns_from_json(nlohmann::json::parse(R"([{"from":"human","value":"q"},{"from":"system","value":"s"}])"), "f"),
                    Contains("conversations[1]: a system turn must come first"));
}

TEST_CASE("labels: prompt and human turns -100, answers and their </s> supervised, token by token", "[template]") {
  const auto& tok = tiny();
  const auto t = chat_template("mplug_owl2");
  const auto r = tokenize_conversation(tok, t,
                                       {{Role::kHuman, "<|image|>\nWhat shape is there?"},
                                        {Role::kGpt, "A red circle."},
                                        {Role::kHuman, "Where?"},
                                        {Role::kGpt, "On the left."}});
  // Expected ids built from the pieces: the answers start a new word after "ASSISTANT:" ("▁A" ...), and the
  // text after "</s>" is a fresh chunk ("▁USER").
  const Ids q1 = cat({tok.encode("USER: "), {kImageTokenIndex}, tok.encode("\nWhat shape is there? ASSISTANT:", false)});
  const Ids a1 = tok.encode("A red circle.", false);
  const Ids q2 = tok.encode("USER: Where? ASSISTANT:", false);
  const Ids a2 = tok.encode("On the left.", false);
  CHECK_FALSE(r.mismatch);
  CHECK(r.num_images == 1);
  CHECK(r.input_ids == cat({q1, a1, {2}, q2, a2, {2}}));
  CHECK(r.labels == cat({masked(q1.size()), a1, {2}, masked(q2.size()), a2, {2}}));

  // vicuna_v1: the system prompt is masked with the first question.
  const auto v = tokenize_conversation(tok, chat_template("vicuna_v1"), {{Role::kHuman, "Hi"}, {Role::kGpt, "Hello"}});
  const Ids head = tok.encode(kVicunaSystem + " USER: Hi ASSISTANT:");
  const Ids answer = tok.encode("Hello", false);
  CHECK(v.input_ids == cat({head, answer, {2}}));
  CHECK(v.labels == cat({masked(head.size()), answer, {2}}));
  CHECK(v.num_images == 0);
}

TEST_CASE("a sample whose round lengths disagree is fully masked and flagged", "[template]") {
  const auto& tok = tiny();
  const auto t = chat_template("mplug_owl2");
  // The answer contains " ASSISTANT: ": the round splits into three parts and the lengths no longer add up.
  const auto r = tokenize_conversation(tok, t, {{Role::kHuman, "Repeat."}, {Role::kGpt, "USER: hi ASSISTANT: yo"}});
  CHECK(r.mismatch);
  CHECK_THAT(r.mismatch_detail, Contains("tokenization mismatch: 1 vs. "));
  CHECK(r.labels == masked(r.input_ids.size()));
  // A literal <unk> is id 0 = pad, which the reference's non-pad count leaves out.
  const auto u = tokenize_conversation(tok, t, {{Role::kHuman, "Say <unk>."}, {Role::kGpt, "No."}});
  CHECK(u.mismatch);
  CHECK(u.labels == masked(u.input_ids.size()));
}

TEST_CASE("prompts, ids and labels match the golden conversations", "[template]") {
  const auto g = nlohmann::json::parse(read_text(source_path("tests/fixtures/tokenizer/conversations.json")));
  REQUIRE(g["cases"].size() >= 8);
  int mismatches = 0;
  for (const auto& c : g["cases"]) {
    const auto prompt = c["prompt"].get<std::string>();
    INFO("prompt: " << prompt);
    const auto turns = turns_from_json(c["conversations"], "conversations.json");
    const auto tmpl = chat_template(c["template"].get<std::string>());
    CHECK(training_prompt(tmpl, turns) == prompt);
    const auto r = tokenize_conversation(tiny(), tmpl, turns);
    CHECK(r.input_ids == c["input_ids"].get<Ids>());
    CHECK(r.labels == c["labels"].get<Ids>());
    CHECK(r.mismatch == c["mismatch"].get<bool>());
    mismatches += r.mismatch;
  }
  CHECK(mismatches == 2);
}

}  // namespace owl2_test_template
