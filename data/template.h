// Chat templates (spec §3.4) and training-sample construction with label masking (spec §3.5).
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/choices.h"
#include "data/tokenizer.h"

namespace owl2 {

// One conversation turn in the LLaVA JSON form {"from": "human"|"gpt"|"system", "value": "..."}.
enum class Role { kSystem, kHuman, kGpt };
struct Turn {
  Role role;
  std::string value;
};

Role parse_role(std::string_view from);  // throws std::invalid_argument listing the valid names
// Reads a LLaVA "conversations" array; `where` (e.g. "train.json: sample 'abc'") prefixes error messages.
std::vector<Turn> turns_from_json(const nlohmann::json& conversations, const std::string& where);

// The two-separator template family: "[system sep]USER: q sep ASSISTANT: a sep2 USER: ...".
struct ChatTemplate {
  std::string name;
  std::string system;  // default system prompt; empty: none is emitted (mplug_owl2)
  std::string user = "USER";
  std::string assistant = "ASSISTANT";
  std::string sep = " ";      // after a user message
  std::string sep2 = "</s>";  // after an assistant message
};

// "mplug_owl2" (no system prompt) or "vicuna_v1" (alias "v1", with the Vicuna system prompt); other names throw
// std::invalid_argument listing these.
ChatTemplate chat_template(std::string_view name);
ChatTemplate chat_template(TemplateKind kind);

// Training prompt: an optional leading system turn replaces the template's system prompt; then strictly
// alternating human/gpt turns that end with a gpt turn (a leading gpt turn is dropped, as the reference does).
// In every turn the image placeholders are moved to the front as "<|image|>…<|image|>\n" + text (one
// placeholder per image, so several images per turn keep their count). Throws std::invalid_argument naming the
// turn index when the roles do not fit.
std::string training_prompt(const ChatTemplate& tmpl, const std::vector<Turn>& turns);

// Where a turn's image placeholders go. Training (spec §3.5): "<|image|>\n" + text. Inference (spec §6, the
// reference CLI and README): "<|image|>" + text, no newline.
enum class ImageLayout { kTraining, kInference };

// Generation prompt: the same layout for turns that end with a human turn, followed by "ASSISTANT:" (no trailing
// space). Placeholders are moved to the front of their turn, followed by the text directly (kInference, what
// `owl2 generate` and `owl2 chat` send) or by "\n" (kTraining, what the held-out evaluation of a run sends).
std::string generation_prompt(const ChatTemplate& tmpl, const std::vector<Turn>& turns,
                              ImageLayout layout = ImageLayout::kInference);

// A user's message with `images` images attached, as `owl2 generate` and `owl2 chat` put it into a human turn.
// The reference CLI sends "<|image|>" + text for its one image (spec §6). Placeholders the user typed are removed
// and the text stripped, as the reference's conversation class does for a message that carries an image, so a
// message has exactly one placeholder per attached image, in front. Without images the text is kept as typed;
// a placeholder in it has no image and throws std::invalid_argument.
std::string user_message(std::string_view text, int64_t images);
// The same with the attached images' placeholders spelled as `slots` (one <|image|> per attached image, in
// order), which replaces the "<|image|>" x images in front: a video's frames in its data.video_layout
// (data::video_frame_slots). Throws std::invalid_argument when `slots` holds another number of placeholders.
std::string user_message(std::string_view text, int64_t images, const std::string& slots);

struct TokenizedConversation {
  std::vector<int64_t> input_ids;  // kImageTokenIndex (-200) for each image
  std::vector<int64_t> labels;     // kIgnoreIndex (-100) where not supervised; same length as input_ids
  int64_t num_images = 0;          // placeholders in input_ids
  bool mismatch = false;           // round lengths disagreed with the full tokenization: all labels are -100
  std::string mismatch_detail;     // "tokenization mismatch: 37 vs. 38" when mismatch
};

// Builds the training prompt, tokenizes it with encode_with_images and masks it per round (spec §3.5): BOS,
// system prompt and human turns get -100; each answer and its closing "</s>" are supervised. Image positions
// are -100 in labels. A sample whose summed round lengths differ from its non-pad length is fully masked and
// flagged (the caller counts it).
TokenizedConversation tokenize_conversation(const Tokenizer& tok, const ChatTemplate& tmpl,
                                            const std::vector<Turn>& turns);

}  // namespace owl2
