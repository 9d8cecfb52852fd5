// LLaMA SentencePiece tokenizer: special-token splitting as the slow HF tokenizer does it, and the
// image-placeholder chunking of spec §3.2.
#include "data/tokenizer.h"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <array>
#include <stdexcept>

namespace owl2 {
namespace {

struct Special {
  std::string_view text;
  int64_t id;
};
// The slow LLaMA tokenizer matches these literally in the input (so the template's "</s>" becomes id 2).
constexpr std::array<Special, 3> kSpecials{{{"<s>", Tokenizer::kBosId},
                                            {"</s>", Tokenizer::kEosId},
                                            {"<unk>", Tokenizer::kUnkId}}};

}  // namespace

Tokenizer::Tokenizer(const std::string& model_path)
    : path_(model_path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const auto status = sp_->Load(model_path);
  if (!status.ok()) {
    throw std::runtime_error(fmt::format("tokenizer {}: cannot load SentencePiece model: {}", model_path,
                                         status.ToString()));
  }
  if (sp_->unk_id() != kUnkId || sp_->bos_id() != kBosId || sp_->eos_id() != kEosId) {
    throw std::runtime_error(fmt::format(
        "tokenizer {}: expected LLaMA special ids unk 0, bos 1, eos 2, found unk {}, bos {}, eos {}", model_path,
        sp_->unk_id(), sp_->bos_id(), sp_->eos_id()));
  }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::string Tokenizer::id_to_piece(int64_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw std::out_of_range(fmt::format("tokenizer {}: id {} outside [0, {})", path_, id, vocab_size()));
  }
  return sp_->IdToPiece(static_cast<int>(id));
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int64_t>& out) const {
  if (text.empty()) return;
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw std::runtime_error(fmt::format("tokenizer {}: encode failed: {}", path_, status.ToString()));
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int64_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos) out.push_back(kBosId);
  size_t start = 0;  // start of the pending ordinary text
  size_t pos = 0;
  while (pos < text.size()) {
    const Special* hit = nullptr;
    if (text[pos] == '<') {
      for (const auto& s : kSpecials) {
        if (text.compare(pos, s.text.size(), s.text) == 0) {
          hit = &s;
          break;
        }
      }
    }
    if (!hit) {
      ++pos;
      continue;
    }
    encode_plain(text.substr(start, pos - start), out);
    out.push_back(hit->id);
    pos += hit->text.size();
    start = pos;
  }
  encode_plain(text.substr(start), out);
  return out;
}

std::vector<int64_t> Tokenizer::encode_with_images(std::string_view text, bool add_bos) const {
  std::vector<int64_t> out;
  size_t start = 0;
  bool first = true;
  while (true) {
    const size_t hit = text.find(kImagePlaceholder, start);
    const auto chunk = text.substr(start, hit == std::string_view::npos ? std::string_view::npos : hit - start);
    // Each chunk is a fresh string (its own dummy prefix); later chunks lose their BOS.
    const auto ids = encode(chunk, add_bos);
    out.insert(out.end(), ids.begin() + (!first && add_bos ? 1 : 0), ids.end());
    if (hit == std::string_view::npos) break;
    out.push_back(kImageTokenIndex);
    start = hit + kImagePlaceholder.size();
    first = false;
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> kept;
  kept.reserve(ids.size());
  const int64_t n = vocab_size();
  for (const int64_t id : ids) {
    if (id == kUnkId || id == kBosId || id == kEosId || id < 0) continue;
    if (id >= n) throw std::out_of_range(fmt::format("tokenizer {}: decode: id {} >= vocab size {}", path_, id, n));
    kept.push_back(static_cast<int>(id));
  }
  std::string text;
  const auto status = sp_->Decode(kept, &text);
  if (!status.ok()) throw std::runtime_error(fmt::format("tokenizer {}: decode failed: {}", path_, status.ToString()));
  return text;
}

}  // namespace owl2
