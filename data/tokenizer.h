// The LLaMA SentencePiece tokenizer with mPLUG-Owl2's image placeholder (spec §3.2, §3.3).
#pragma once
#include "owl2/model/constants.h"
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace owl2 {

inline constexpr std::string_view kImagePlaceholder = "<|image|>";  // not in the vocabulary

// Thread-safe after construction (encode/decode are const and share no mutable state).
class Tokenizer {
 public:
  static constexpr int64_t kUnkId = 0, kBosId = 1, kEosId = 2;
  static constexpr int64_t kPadId = kUnkId;  // training pads with unk (spec §3.3)

  // Loads a SentencePiece .model file; throws std::runtime_error naming the path if it cannot be read or its
  // unk/bos/eos ids are not 0/1/2.
  explicit Tokenizer(const std::string& model_path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // As LLaMA's slow tokenizer: optional BOS, then the text split on the literal special tokens "<s>", "</s>",
  // "<unk>" (which become ids 1, 2, 0) and every other piece encoded on its own with SentencePiece (each with
  // its dummy-prefix "▁"). "<|image|>" is ordinary text here.
  std::vector<int64_t> encode(std::string_view text, bool add_bos = true) const;

  // The reference's tokenizer_image_token: split on "<|image|>", encode each chunk with encode(chunk, add_bos),
  // keep the first chunk's BOS only and join the chunks with one kImageTokenIndex each.
  std::vector<int64_t> encode_with_images(std::string_view text, bool add_bos = true) const;

  // Text of the ids with special tokens (unk, bos, eos) and negative ids (-200, -100) skipped.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t vocab_size() const;
  std::string id_to_piece(int64_t id) const;  // throws std::out_of_range for ids outside [0, vocab_size)
  const std::string& path() const { return path_; }

 private:
  void encode_plain(std::string_view text, std::vector<int64_t>& out) const;

  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace owl2
