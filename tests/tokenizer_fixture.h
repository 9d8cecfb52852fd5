// The tiny SentencePiece model of tests/fixtures/tokenizer (made by scripts/make_tokenizer_golden.py) and id
// list helpers shared by the tokenizer and template tests.
#pragma once
#include <initializer_list>
#include <vector>

#include "data/tokenizer.h"
#include "tests/helpers.h"

namespace owl2::test {

using Ids = std::vector<int64_t>;

inline const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tok(source_path("tests/fixtures/tokenizer/tiny_llama.model"));
  return tok;
}

inline Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace owl2::test
