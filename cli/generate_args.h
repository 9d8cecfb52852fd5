// Decoding options shared by `owl2 generate` and `owl2 chat`, and the streamer that prints a reply as its tokens
// arrive while holding back text that may turn out to be the start of a stop string.
#pragma once
#include <CLI/CLI.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <ostream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "owl2/infer/generate.h"

namespace owl2::cli {

struct DecodingArgs {
  int64_t max_new_tokens = 512;  // the reference CLI's default (spec §6)
  int64_t min_new_tokens = 0;
  double temperature = 0.0;  // > 0 samples (the reference's model worker: do_sample = temperature > 0.001)
  double top_p = 1.0;
  int64_t top_k = 50;  // HF's generation default, used when sampling
  uint64_t seed = 0;
  int64_t num_beams = 1;
  double length_penalty = 1.0;
  double repetition_penalty = 1.0;
  std::vector<std::string> stop;
  bool no_stream = false;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--max-new-tokens", max_new_tokens, "Tokens to generate at most (default 512)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--min-new-tokens", min_new_tokens, "EOS is suppressed before this many tokens")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--temperature", temperature, "0 (default): greedy; > 0: sample at this temperature")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--top-p", top_p, "Nucleus sampling mass (default 1 = off)")->check(CLI::Range(0.0, 1.0));
    cmd->add_option("--top-k", top_k, "Sample from the k most likely tokens (default 50, 0 = off)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--seed", seed, "Sampling seed; sample i of a batch draws from its own stream (default 0)");
    cmd->add_option("--num-beams", num_beams, "Beam search with this many beams (default 1 = off)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--length-penalty", length_penalty, "Beam score = log-prob / length^this (default 1)");
    cmd->add_option("--repetition-penalty", repetition_penalty, "HF repetition penalty (default 1 = off)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--stop", stop, "Stop when the reply contains this text (repeatable; \"</s>\" always stops)");
    cmd->add_flag("--no-stream", no_stream, "Print the reply when it is complete instead of token by token");
  }

  GenerateOptions options(const Tokenizer& tok) const {
    GenerateOptions o;
    o.max_new_tokens = max_new_tokens;
    o.min_new_tokens = min_new_tokens;
    o.eos_id = Tokenizer::kEosId;
    o.vocab_limit = tok.vocab_size();
    o.pad_id = Tokenizer::kPadId;
    o.do_sample = temperature > 0.001;
    o.temperature = o.do_sample ? temperature : 1.0;
    o.top_p = top_p;
    o.top_k = top_k;
    o.seed = seed;
    o.num_beams = num_beams;
    o.length_penalty = length_penalty;
    o.repetition_penalty = repetition_penalty;
    o.stop_strings = stop;
    o.stop_strings.push_back("</s>");  // the template's sep2, as the reference's KeywordsStoppingCriteria
    o.detokenize = [&tok](const std::vector<int64_t>& ids) { return tok.decode(ids); };
    return o;
  }
};

// The reference's model worker caps the new tokens at the context left after the prompt, visual tokens counted
// (spec §6); a prompt that leaves no room is an error.
inline int64_t fit_context(const ModelConfig& cfg, const std::vector<int64_t>& prompt, int64_t requested) {
  const int64_t images = std::count(prompt.begin(), prompt.end(), kImageTokenIndex);
  const int64_t used = static_cast<int64_t>(prompt.size()) + (cfg.visual_tokens_per_image() - 1) * images;
  const int64_t context = cfg.decoder.max_position_embeddings;
  if (used >= context) {
    throw std::invalid_argument(fmt::format(
        "the prompt takes {} positions ({} tokens, {} images) and the context is {} (max_position_embeddings); "
        "/reset or shorten it", used, prompt.size(), images, context));
  }
  return std::min(requested, context - used);
}

// Prints the text of a growing token list. Text that could still become a stop string (a suffix that is a
// prefix of one) or an unfinished UTF-8 character is held back until the next token decides it.
class TextStreamer {
 public:
  TextStreamer(const Tokenizer& tok, std::vector<std::string> stops, std::ostream& out)
      : tok_(tok), stops_(std::move(stops)), out_(out) {}

  void push(int64_t token) {
    ids_.push_back(token);
    const auto text = tok_.decode(ids_);
    size_t safe = text.size();
    for (const auto& s : stops_) {
      const auto at = text.find(s);
      if (at != std::string::npos) safe = std::min(safe, at);
      for (size_t k = std::min(s.size() - 1, text.size()); k > 0; --k) {
        if (text.compare(text.size() - k, k, s, 0, k) == 0) {
          safe = std::min(safe, text.size() - k);
          break;
        }
      }
    }
    // Do not split a UTF-8 character: back up to its lead byte and keep it only if the character is complete.
    size_t cut = safe;
    while (cut > 0 && (static_cast<unsigned char>(text[cut - 1]) & 0xC0) == 0x80) --cut;
    if (cut > 0 && static_cast<unsigned char>(text[cut - 1]) >= 0xC0) {
      const auto lead = static_cast<unsigned char>(text[cut - 1]);
      const size_t len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
      cut = cut - 1 + len <= safe ? safe : cut - 1;
    }
    if (cut > printed_) {
      out_ << text.substr(printed_, cut - printed_) << std::flush;
      printed_ = cut;
    }
  }

  // Prints whatever of the final (stop-trimmed) text has not been printed yet.
  void finish(const std::string& final_text) {
    if (final_text.size() > printed_) out_ << final_text.substr(printed_);
    out_ << "\n" << std::flush;
    ids_.clear();
    printed_ = 0;
  }

 private:
  const Tokenizer& tok_;
  std::vector<std::string> stops_;
  std::ostream& out_;
  std::vector<int64_t> ids_;
  size_t printed_ = 0;
};

}  // namespace owl2::cli
