// Chat templates and label masking, following the reference's round-by-round length arithmetic (spec §3.5).
#include "data/template.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace owl2 {
namespace {

constexpr std::string_view kWhitespace = " \t\n\r\v\f";

std::string_view strip(std::string_view s) {
  const size_t b = s.find_first_not_of(kWhitespace);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(kWhitespace);
  return s.substr(b, e - b + 1);
}

// Python's str.split(sep): n separators give n + 1 parts, empty parts kept.
std::vector<std::string_view> split(std::string_view s, std::string_view sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t hit = s.find(sep, start);
    if (hit == std::string_view::npos) break;
    parts.push_back(s.substr(start, hit - start));
    start = hit + sep.size();
  }
  parts.push_back(s.substr(start));
  return parts;
}

// Removes every placeholder and puts them all in front: "<|image|>" * k + separator + stripped text.
std::string images_to_front(std::string_view value, std::string_view separator) {
  std::string text;
  size_t count = 0, start = 0;
  while (true) {
    const size_t hit = value.find(kImagePlaceholder, start);
    text.append(value.substr(start, hit == std::string_view::npos ? std::string_view::npos : hit - start));
    if (hit == std::string_view::npos) break;
    ++count;
    start = hit + kImagePlaceholder.size();
  }
  if (count == 0) return std::string(value);
  std::string out;
  for (size_t i = 0; i < count; ++i) out += kImagePlaceholder;
  out += separator;
  out += strip(text);
  return std::string(strip(out));
}

const char* role_name(Role r) { return r == Role::kSystem ? "system" : r == Role::kHuman ? "human" : "gpt"; }

// Appends the human/gpt turns (system already handled) in the TWO layout; checks the alternation.
std::string build(const ChatTemplate& tmpl, const std::vector<Turn>& turns, bool for_generation,
                  std::string_view image_separator) {
  size_t i = 0;
  std::string system = tmpl.system;
  if (!turns.empty() && turns[0].role == Role::kSystem) {
    system = std::string(strip(turns[0].value));
    i = 1;
  }
  if (i < turns.size() && turns[i].role == Role::kGpt) ++i;  // the reference drops a leading answer
  std::string out;
  if (!system.empty()) out = system + tmpl.sep;
  const size_t first = i;
  for (; i < turns.size(); ++i) {
    const Role want = (i - first) % 2 == 0 ? Role::kHuman : Role::kGpt;
    if (turns[i].role != want) {
      throw std::invalid_argument(fmt::format("conversation turn {}: expected a {} turn, got {}", i,
                                              role_name(want), role_name(turns[i].role)));
    }
    const std::string value = images_to_front(turns[i].value, image_separator);
    const std::string& role = want == Role::kHuman ? tmpl.user : tmpl.assistant;
    // As the reference: an empty message is written as "ROLE:" with no separator.
    out += value.empty() ? role + ":" : role + ": " + value + (want == Role::kHuman ? tmpl.sep : tmpl.sep2);
  }
  const size_t n = turns.size() - first;
  if (n == 0) throw std::invalid_argument("conversation has no human turn");
  const bool ends_with_human = n % 2 == 1;
  if (for_generation && !ends_with_human) {
    throw std::invalid_argument(fmt::format("generation prompt: the last turn ({}) must be a human turn", turns.size() - 1));
  }
  if (!for_generation && ends_with_human) {
    throw std::invalid_argument(fmt::format("training conversation: the last turn ({}) is a human turn without an answer",
                                            turns.size() - 1));
  }
  if (for_generation) {
    // "USER: q " + "ASSISTANT:" — the template emits no space after the generation role.
    out += tmpl.assistant + ":";
  }
  return out;
}

}  // namespace

Role parse_role(std::string_view from) {
  if (from == "human") return Role::kHuman;
  if (from == "gpt") return Role::kGpt;
  if (from == "system") return Role::kSystem;
  throw std::invalid_argument(fmt::format("conversation role: expected human|gpt|system, got '{}'", from));
}

std::vector<Turn> turns_from_json(const nlohmann::json& conversations, const std::string& where) {
  if (!conversations.is_array()) {
    throw std::invalid_argument(fmt::format("{}: conversations: expected a list, got {}", where, conversations.type_name()));
  }
  std::vector<Turn> turns;
  turns.reserve(conversations.size());
  for (size_t i = 0; i < conversations.size(); ++i) {
    const auto& t = conversations[i];
    const auto from = t.is_object() ? t.find("from") : t.end();
    const auto value = t.is_object() ? t.find("value") : t.end();
    if (!t.is_object() || from == t.end() || value == t.end() || !from->is_string() || !value->is_string()) {
      throw std::invalid_argument(fmt::format(
          "{}: conversations[{}]: expected {{\"from\": string, \"value\": string}}, got {}", where, i, t.dump()));
    }
    try {
      turns.push_back({parse_role(from->get_ref<const std::string&>()), value->get<std::string>()});
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("{}: conversations[{}]: {}", where, i, e.what()));
    }
    if (turns.back().role == Role::kSystem && i != 0) {
      throw std::invalid_argument(fmt::format("{}: conversations[{}]: a system turn must come first", where, i));
    }
  }
  return turns;
}

ChatTemplate chat_template(std::string_view name) {
  if (name == "v1") return chat_template(TemplateKind::kVicunaV1);  // the reference's short alias
  if (const auto kind = find_by_name(kTemplateKindNames, name)) return chat_template(*kind);
  throw std::invalid_argument(
      fmt::format("chat template: expected {}, got '{}'", joined_names(kTemplateKindNames), name));
}

ChatTemplate chat_template(TemplateKind kind) {
  ChatTemplate t;
  t.name = name_of(kTemplateKindNames, kind);
  if (kind == TemplateKind::kVicunaV1) {
    t.system =
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.";
  }
  return t;
}

std::string training_prompt(const ChatTemplate& tmpl, const std::vector<Turn>& turns) {
  return build(tmpl, turns, /*for_generation=*/false, "\n");
}

std::string generation_prompt(const ChatTemplate& tmpl, const std::vector<Turn>& turns, ImageLayout layout) {
  return build(tmpl, turns, /*for_generation=*/true, layout == ImageLayout::kTraining ? "\n" : "");
}

std::string user_message(std::string_view text, int64_t images) {
  if (images < 0) throw std::invalid_argument(fmt::format("user message: {} images", images));
  if (images == 0) {
    if (text.find(kImagePlaceholder) != std::string_view::npos) {
      throw std::invalid_argument(fmt::format(
          "the message contains {} but no image is attached to it (owl2 generate: --image FILE; owl2 chat: "
          "/image PATH before the message); the placeholder is added for each attached image",
          kImagePlaceholder));
    }
    return std::string(text);
  }
  std::string rest;  // the text without the placeholders the user typed
  size_t start = 0;
  while (true) {
    const size_t hit = text.find(kImagePlaceholder, start);
    rest.append(text.substr(start, hit == std::string_view::npos ? std::string_view::npos : hit - start));
    if (hit == std::string_view::npos) break;
    start = hit + kImagePlaceholder.size();
  }
  std::string out;
  for (int64_t i = 0; i < images; ++i) out += kImagePlaceholder;
  return out + std::string(strip(rest));
}

std::string user_message(std::string_view text, int64_t images, const std::string& slots) {
  std::string out = user_message(text, images);
  if (images == 0) return out;
  int64_t in_slots = 0;
  for (size_t p = slots.find(kImagePlaceholder); p != std::string::npos; p = slots.find(kImagePlaceholder, p + 1))
    ++in_slots;
  if (in_slots != images)
    throw std::invalid_argument(fmt::format("user message: {} placeholders spelled for {} images", in_slots, images));
  return slots + out.substr(static_cast<size_t>(images) * kImagePlaceholder.size());
}

TokenizedConversation tokenize_conversation(const Tokenizer& tok, const ChatTemplate& tmpl,
                                            const std::vector<Turn>& turns) {
  const std::string prompt = training_prompt(tmpl, turns);
  TokenizedConversation r;
  r.input_ids = tok.encode_with_images(prompt);
  r.labels = r.input_ids;
  const auto n = static_cast<int64_t>(r.input_ids.size());
  const auto total_len = static_cast<int64_t>(std::count_if(r.input_ids.begin(), r.input_ids.end(),
                                                            [](int64_t id) { return id != Tokenizer::kPadId; }));
  auto mask = [&](int64_t from, int64_t to) {
    for (int64_t k = std::max<int64_t>(from, 0); k < std::min(to, n); ++k) r.labels[k] = kIgnoreIndex;
  };

  // Per round "...USER: q ASSISTANT: a" (split on sep2): the instruction part up to and including
  // "ASSISTANT: " is masked. Its length is len(tok(part)) - 2 (BOS and the stray "▁" of the trailing space);
  // the round advances by len(tok(round)), whose BOS stands in for the removed "</s>", so the answer and its
  // "</s>" stay supervised.
  const std::string sep = tmpl.sep + tmpl.assistant + ": ";
  int64_t cur = 1;
  mask(0, cur);
  for (const auto round : split(prompt, tmpl.sep2)) {
    if (round.empty()) break;
    const auto parts = split(round, sep);
    if (parts.size() != 2) break;
    const std::string instruction = std::string(parts[0]) + sep;
    const auto round_len = static_cast<int64_t>(tok.encode_with_images(round).size());
    const auto instruction_len = static_cast<int64_t>(tok.encode_with_images(instruction).size()) - 2;
    mask(cur, cur + instruction_len);
    cur += round_len;
  }
  mask(cur, n);
  if (cur != total_len) {
    mask(0, n);
    r.mismatch = true;
    r.mismatch_detail = fmt::format("tokenization mismatch: {} vs. {}", cur, total_len);
  }
  for (int64_t k = 0; k < n; ++k) {
    if (r.input_ids[k] == kImageTokenIndex) {
      r.labels[k] = kIgnoreIndex;
      ++r.num_images;
    }
  }
  return r;
}

}  // namespace owl2
