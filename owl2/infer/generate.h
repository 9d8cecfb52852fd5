// Generation with a KV cache (spec §6): greedy, sampling and beam search over a left-padded batch in which each
// sample gets the positions and mask it would get alone, so answers do not depend on the batch (the reference's
// eval needs batch size 1 for that). Shapes: B prompts, R rows (samples or beams), V vocabulary.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "owl2/infer/lockstep.h"
#include "owl2/model/kv_cache.h"
#include "owl2/model/model.h"

namespace owl2 {

// HF's `early_stopping`: kHeuristic (False, HF's default) stops a sample once num_beams hypotheses are finished
// and the best running beam, scored at its current length, cannot beat the worst of them; kAlways (True) stops
// as soon as num_beams hypotheses are finished; kNever ("never") scores the running beam at max_new_tokens
// when length_penalty > 0.
enum class EarlyStopping { kHeuristic, kAlways, kNever };
enum class FinishReason { kEos, kStop, kLength };

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  int64_t eos_id = 2;
  int64_t pad_id = 0;
  int64_t min_new_tokens = 0;  // EOS is suppressed before this many new tokens (HF MinNewTokensLengthLogitsProcessor)
  // > 0: ids from this one up are never chosen. Set to the tokenizer's size when the model's vocabulary is larger
  // (its extra rows have no text to decode to); 0 = the whole vocabulary.
  int64_t vocab_limit = 0;

  // Processors in HF's order: repetition penalty, min_new_tokens, then (sampling only) temperature, top-k, top-p.
  double repetition_penalty = 1.0;  // over the prompt's text tokens and the generated ones; 1 = off
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0 = off (HF's generation default is 50; the CLI passes that)
  double top_p = 1.0;  // 1 = off
  // Sample b draws from its own generator seeded with sample_seeds[b], or sample_seed(seed, b) when
  // sample_seeds is empty: its tokens depend on (seed, b, its prompt) only, never on the rest of the batch.
  uint64_t seed = 0;
  std::vector<uint64_t> sample_seeds;

  // Beam search (HF semantics): num_beams > 1, scores are summed log-probs divided by length^length_penalty
  // (length counts the new tokens, the final EOS included).
  int64_t num_beams = 1;
  double length_penalty = 1.0;
  EarlyStopping early_stopping = EarlyStopping::kHeuristic;

  // A sample also stops when its new tokens end with one of `stop_sequences` (those tokens are dropped from the
  // result) or when the text of its new tokens contains one of `stop_strings` (needs `detokenize`; the text is
  // cut before the stop string). `detokenize` keeps owl2/ free of the tokenizer.
  std::vector<std::vector<int64_t>> stop_sequences;
  std::vector<std::string> stop_strings;
  std::function<std::string(const std::vector<int64_t>&)> detokenize;

  // Called for every new token of every sample as soon as it is chosen (EOS is not reported). Beam search
  // reports the winning hypothesis' tokens when its search ends.
  std::function<void(int64_t sample, int64_t token)> on_token;

  // Record Generation::logprobs: each chosen token's log-probability under the model's own next-token
  // distribution, log_softmax of the raw logits, before the repetition penalty, min_new_tokens, temperature,
  // top-k and top-p (what OpenAI-style APIs report; the processors only decide which token is chosen).
  bool logprobs = false;
};

struct Generation {
  std::vector<int64_t> tokens;  // new tokens without the EOS and without a matched stop sequence
  std::string text;             // detokenize(tokens) cut before a matched stop string; empty without detokenize
  FinishReason finish = FinishReason::kLength;
  double score = 0.0;  // beam search: the length-penalized score of the returned hypothesis
  // With GenerateOptions::logprobs: one raw log-probability per entry of `tokens`, and the EOS's when
  // finish == kEos (NaN otherwise).
  std::vector<double> logprobs;
  double eos_logprob = std::numeric_limits<double>::quiet_NaN();
};

// What the search loops need from a model: the next-token logits of every row after one more token per row, and
// row selection (beam reordering, finished samples leaving). DecodeState is the model's; tests drive the loops
// with hand-made distributions through it.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t rows() const = 0;
  virtual torch::Tensor step(const std::vector<int64_t>& tokens_R) = 0;   // [R,V]
  virtual void select_rows(const std::vector<int64_t>& rows_R) = 0;       // keeps / reorders / repeats rows
};

// Incremental decoding of a batch: prefill() fills the cache with the prompts, step() feeds one token per row.
// Exposed so that tests can compare the cached logits with a full recomputation.
class DecodeState : public TokenSource {
 public:
  DecodeState(MPLUGOwl2ForCausalLM model, int64_t capacity_hint);
  // Left-pads the prompts (ids with -200 per image; images_NCHW: every prompt's images in order), splices the
  // images so that every sample ends at the last position, runs the decoder and caches every layer's keys and
  // values (image positions through the image copies). Returns the next-token logits [B,V].
  torch::Tensor prefill(const std::vector<std::vector<int64_t>>& prompts, const torch::Tensor& images_NCHW,
                        int64_t pad_id);
  // One new text token per row at its own next position; returns the next-token logits [R,V].
  torch::Tensor step(const std::vector<int64_t>& tokens_R) override;
  // Keeps (reorders, repeats) the rows `rows_R` of the current rows.
  void select_rows(const std::vector<int64_t>& rows_R) override;
  int64_t rows() const override { return next_position_R_.defined() ? next_position_R_.size(0) : 0; }
  const KVCache& cache() const { return cache_; }

 private:
  MPLUGOwl2ForCausalLM model_;
  KVCache cache_;
  torch::Tensor next_position_R_;  // int64: each row's next position (its count of real tokens so far)
};

// Generates for every prompt (token ids with -200 per image; images_NCHW: every prompt's images in order,
// undefined if none). Throws std::invalid_argument naming the option when options are inconsistent.
std::vector<Generation> generate(MPLUGOwl2ForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                 const torch::Tensor& images_NCHW, const GenerateOptions& options);

// The search loops of generate() on any TokenSource whose rows are the prompts, given their first next-token
// logits [B,V]; `prompts` only feeds the repetition penalty.
std::vector<Generation> generate_from(TokenSource& source, const torch::Tensor& first_logits_BV,
                                      const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options);

// generate() for this rank's prompts (may be none), in step with the same call on every other rank: the rank's
// own passes (prefill, one per new token) are each paired with one pass of every other rank, and a rank that
// has finished (or had nothing to do) makes a one-token pass whose result it drops until every rank has
// finished. The results equal generate()'s; the model's collectives are the caller's (its block runners).
std::vector<Generation> generate_in_lockstep(MPLUGOwl2ForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                             const torch::Tensor& images_NCHW, const GenerateOptions& options,
                                             const Lockstep& lockstep);

// The new tokens of each prompt without the EOS: generate() with `options` (greedy unless options says otherwise).
std::vector<std::vector<int64_t>> greedy_generate(MPLUGOwl2ForCausalLM& model,
                                                  const std::vector<std::vector<int64_t>>& prompts,
                                                  const torch::Tensor& images_NCHW, const GenerateOptions& options);

}  // namespace owl2
