// Generation (owl2/infer/generate.h, kv_cache.h, sampling.h): the KV cache against a full recomputation in float64,
// batch invariance of greedy, sampling and beam search, the logits processors on hand-computed cases, beam
// search on a hand-made distribution, stops, log-probabilities against a separate forward pass, `owl2 chat` on
// piped stdin, `owl2 generate --json` and `--dtype bf16`, `owl2 bench generate` in fp32 and bf16.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "data/image.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "data/video.h"
#include "owl2/infer/generate.h"
#include "owl2/infer/sampling.h"
#include "owl2/io/state_dict.h"
#include "owl2/model/init.h"
#include "trainers/config.h"
#include "trainers/io/model_dir.h"
#include "tests/golden_io.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_generate {

using namespace owl2;
using Catch::Matchers::Contains;
using owl2::test::max_abs_diff;
using owl2::test::tiny_golden_config;
using Ids = std::vector<int64_t>;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The tiny golden configuration (5 visual tokens per image, 12 px images, 48 tokens) with random weights, in
// float64 so that cached and recomputed logits agree to ~1e-14. The vocabulary starts at 3 to avoid EOS (2).
struct Tiny {
  MPLUGOwl2ForCausalLM model{nullptr};
  torch::Tensor images_NCHW;
  Tiny() {
    model = MPLUGOwl2ForCausalLM(tiny_golden_config());
    init_weights(model, 7);
    {
      torch::NoGradGuard no_grad;
      // Larger weights than the documented init, so that the logits are far from uniform and ties impossible.
      for (auto& p : model->parameters()) {
        if (p.dim() >= 2) p.normal_(0.0, 0.3);
      }
    }
    model->to(torch::kFloat64);
    model->eval();
    images_NCHW = torch::randn({3, 3, 12, 12}, torch::kFloat64);
  }
  // Images [first, first + n) of images_NCHW.
  torch::Tensor images(int64_t first, int64_t n) const {
    return n == 0 ? torch::Tensor() : images_NCHW.narrow(0, first, n);
  }
};

// Prompts of different lengths and image counts (0, 1 and 2 images), so a batch has left padding.
const std::vector<Ids> kPrompts = {{1, kImageTokenIndex, 5, 9, 11}, {1, 7, 3}, {1, kImageTokenIndex, 4, kImageTokenIndex, 8}};
const std::vector<int64_t> kImageCounts = {1, 0, 2};

std::vector<Ids> tokens_of(const std::vector<Generation>& gens) {
  std::vector<Ids> out;
  for (const auto& g : gens) out.push_back(g.tokens);
  return out;
}

// Next-token logits of the last position of every prompt, by the training forward over the whole sequence.
torch::Tensor recompute_last_logits(Tiny& t, const std::vector<Ids>& seqs, const torch::Tensor& images) {
  size_t T = 0;
  for (const auto& s : seqs) T = std::max(T, s.size());
  const int64_t B = static_cast<int64_t>(seqs.size());
  auto ids = torch::zeros({B, static_cast<int64_t>(T)}, torch::kInt64);
  auto mask = torch::zeros_like(ids);
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = seqs[static_cast<size_t>(b)];
    const int64_t off = static_cast<int64_t>(T - s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      ids[b][off + static_cast<int64_t>(i)] = s[i];
      mask[b][off + static_cast<int64_t>(i)] = 1;
    }
  }
  ModelInputs in{ids, mask, images, {}};
  in.pad_left = true;
  torch::NoGradGuard no_grad;
  const auto logits = t.model->forward(in).logits;
  return logits.select(1, logits.size(1) - 1);
}

// A hand-made next-token distribution that depends on the last token only; rows hold their last token.
struct MarkovSource : TokenSource {
  std::map<int64_t, std::vector<double>> probs;  // last token -> next-token probabilities
  int64_t n_rows;
  explicit MarkovSource(int64_t rows) : n_rows(rows) {}
  int64_t rows() const override { return n_rows; }
  torch::Tensor logits(int64_t last) const { return torch::tensor(probs.at(last), torch::kFloat64).log(); }
  torch::Tensor step(const std::vector<int64_t>& tokens_R) override {
    std::vector<torch::Tensor> rows;
    for (auto t : tokens_R) rows.push_back(logits(t));
    return torch::stack(rows);
  }
  void select_rows(const std::vector<int64_t>& rows_R) override { n_rows = static_cast<int64_t>(rows_R.size()); }
};

}  // namespace

TEST_CASE("cached decoding equals recomputing the whole sequence, with images and left padding, in float64",
          "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 6;
  DecodeState st(t.model, 8);  // a small capacity: the cache has to grow on the way
  torch::NoGradGuard no_grad;
  auto logits = st.prefill(kPrompts, t.images(0, 3), o.pad_id);
  auto seqs = kPrompts;
  for (int step = 0; step < 6; ++step) {
    const auto expected = recompute_last_logits(t, seqs, t.images(0, 3));
    REQUIRE(logits.sizes() == expected.sizes());
    CHECK(max_abs_diff(logits, expected) < 1e-10);
    CHECK(logits.std().item<double>() > 0.1);  // the comparison is not between two near-constant vectors
    std::vector<int64_t> next;
    const auto argmax = logits.argmax(-1);
    for (int64_t b = 0; b < argmax.size(0); ++b) next.push_back(argmax[b].item<int64_t>());
    for (size_t b = 0; b < seqs.size(); ++b) seqs[b].push_back(next[b]);
    logits = st.step(next);
  }
  const auto expected = recompute_last_logits(t, seqs, t.images(0, 3));
  CHECK(max_abs_diff(logits, expected) < 1e-10);
  // That covers the image positions' cached keys / values only if the image copies matter: perturbing k_proj
  // and v_proj multiway.1 moves the logits of the prompts with images and leaves the text-only one.
  {
    auto attn = t.model->decoder_layer(0)->self_attn;
    attn->k_proj->multiway->ptr<owl2::LinearImpl>(1)->weight.add_(0.3);
    attn->v_proj->multiway->ptr<owl2::LinearImpl>(1)->weight.add_(0.3);
  }
  const auto perturbed = recompute_last_logits(t, seqs, t.images(0, 3));
  CHECK(max_abs_diff(perturbed.select(0, 0), expected.select(0, 0)) > 1e-3);
  CHECK(max_abs_diff(perturbed.select(0, 1), expected.select(0, 1)) < 1e-12);
  CHECK(max_abs_diff(perturbed.select(0, 2), expected.select(0, 2)) > 1e-3);
}

TEST_CASE("same-length prompts with different image counts stay right-aligned", "[generate]") {
  // Without padding in input_ids the training splice would align them left; generation must not.
  Tiny t;
  const std::vector<Ids> prompts = {{1, kImageTokenIndex, 5}, {1, 6, 5}};
  DecodeState st(t.model, 32);
  torch::NoGradGuard no_grad;
  const auto cached = st.prefill(prompts, t.images(0, 1), 0);
  CHECK(max_abs_diff(cached.select(0, 0), recompute_last_logits(t, {prompts[0]}, t.images(0, 1)).select(0, 0)) < 1e-10);
  CHECK(max_abs_diff(cached.select(0, 1), recompute_last_logits(t, {prompts[1]}, {}).select(0, 0)) < 1e-10);
}

TEST_CASE("greedy with the cache equals greedy by full recomputation, and batched equals one by one", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 7;
  o.eos_id = -1;  // no EOS: all seven tokens
  const auto batched = greedy_generate(t.model, kPrompts, t.images(0, 3), o);
  REQUIRE(batched.size() == 3);
  int64_t first_image = 0;
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    const auto images = t.images(first_image, kImageCounts[b]);
    first_image += kImageCounts[b];
    CHECK(greedy_generate(t.model, {kPrompts[b]}, images, o)[0] == batched[b]);
    // The old algorithm: one full forward per new token.
    Ids seq = kPrompts[b], naive;
    for (int i = 0; i < 7; ++i) {
      const int64_t tok = recompute_last_logits(t, {seq}, images).argmax(-1)[0].item<int64_t>();
      naive.push_back(tok);
      seq.push_back(tok);
    }
    CHECK(naive == batched[b]);
  }
}

TEST_CASE("EOS ends a sample and the others go on, min_new_tokens suppresses EOS", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 5;
  o.eos_id = -1;
  const auto free_run = generate(t.model, {kPrompts[1]}, {}, o)[0].tokens;
  REQUIRE(free_run.size() == 5);
  // Call EOS the first token of the free run that did not occur before it: generation stops just before it.
  size_t k = 1;
  while (k < free_run.size() && std::count(free_run.begin(), free_run.begin() + static_cast<int64_t>(k), free_run[k]) > 0) ++k;
  REQUIRE(k < free_run.size());
  const Ids head(free_run.begin(), free_run.begin() + static_cast<int64_t>(k));
  o.eos_id = free_run[k];
  const auto stopped = generate(t.model, {kPrompts[1], kPrompts[0]}, t.images(0, 1), o);
  CHECK(stopped[0].tokens == head);
  CHECK(stopped[0].finish == FinishReason::kEos);
  CHECK(stopped[1].tokens == generate(t.model, {kPrompts[0]}, t.images(0, 1), o)[0].tokens);
  // With min_new_tokens k + 1 that token cannot be chosen at step k: the same head, then another token.
  o.min_new_tokens = static_cast<int64_t>(k) + 1;
  const auto forced = generate(t.model, {kPrompts[1]}, {}, o)[0];
  REQUIRE(forced.tokens.size() > k);
  CHECK(Ids(forced.tokens.begin(), forced.tokens.begin() + static_cast<int64_t>(k)) == head);
  CHECK(forced.tokens[k] != free_run[k]);
}

TEST_CASE("vocab_limit: ids past a smaller tokenizer's vocabulary are never chosen, in greedy, sampling and beams",
          "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.eos_id = -1;
  const auto free_run = generate(t.model, {kPrompts[1]}, {}, o)[0].tokens;
  const int64_t top = *std::max_element(free_run.begin(), free_run.end());
  REQUIRE(top > 0);
  o.vocab_limit = top;  // the largest id of the free run is now out of range
  for (int mode = 0; mode < 3; ++mode) {
    INFO("mode " << mode);
    GenerateOptions m = o;
    if (mode == 1) {
      m.do_sample = true;
      m.seed = 3;
    }
    if (mode == 2) m.num_beams = 3;
    const auto limited = generate(t.model, {kPrompts[1]}, {}, m)[0].tokens;
    REQUIRE(limited.size() == 6);
    for (int64_t id : limited) CHECK(id < top);
  }
  // Up to the first step that chose the now-excluded id, greedy is unchanged.
  const auto greedy = generate(t.model, {kPrompts[1]}, {}, o)[0].tokens;
  const auto first = std::find(free_run.begin(), free_run.end(), top) - free_run.begin();
  CHECK(Ids(greedy.begin(), greedy.begin() + first) == Ids(free_run.begin(), free_run.begin() + first));
  o.vocab_limit = -1;
  CHECK_THROWS_WITH(generate(t.model, {kPrompts[1]}, {}, o), Catch::Matchers::Contains("vocab_limit must be >= 0"));
}

TEST_CASE("stop strings stop and are cut from the text, stop sequences are dropped from the tokens", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.eos_id = -1;
  o.detokenize = [](const Ids& ids) {
    std::string s;
    for (auto i : ids) s += "<" + std::to_string(i) + ">";
    return s;
  };
  const auto free_run = generate(t.model, {kPrompts[0]}, t.images(0, 1), o)[0];
  REQUIRE(free_run.tokens.size() == 6);
  CHECK(free_run.text == o.detokenize(free_run.tokens));
  CHECK(free_run.finish == FinishReason::kLength);

  auto s = o;
  s.stop_strings = {"<" + std::to_string(free_run.tokens[3]) + ">", "never matches"};
  const auto by_string = generate(t.model, {kPrompts[0]}, t.images(0, 1), s)[0];
  // Stops at the first occurrence of that token (it may occur earlier than index 3).
  const auto first = std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[3]) - free_run.tokens.begin();
  CHECK(by_string.finish == FinishReason::kStop);
  CHECK(by_string.tokens == Ids(free_run.tokens.begin(), free_run.tokens.begin() + first + 1));
  CHECK(by_string.text == o.detokenize(Ids(free_run.tokens.begin(), free_run.tokens.begin() + first)));

  auto q = o;
  q.stop_sequences = {{free_run.tokens[2], free_run.tokens[3]}};
  const auto by_seq = generate(t.model, {kPrompts[0]}, t.images(0, 1), q)[0];
  CHECK(by_seq.finish == FinishReason::kStop);
  CHECK(by_seq.tokens == Ids(free_run.tokens.begin(), free_run.tokens.begin() + 2));
  CHECK(by_seq.text == o.detokenize(by_seq.tokens));
}

TEST_CASE("streaming reports every new token of every sample in order", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 4;
  o.eos_id = -1;
  std::map<int64_t, Ids> streamed;
  o.on_token = [&](int64_t b, int64_t tok) { streamed[b].push_back(tok); };
  const auto out = generate(t.model, kPrompts, t.images(0, 3), o);
  for (size_t b = 0; b < out.size(); ++b) CHECK(streamed[static_cast<int64_t>(b)] == out[b].tokens);
}

TEST_CASE("sampling: a seed gives the same tokens, independent of the batch, top_k 1 is greedy", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 8;
  o.eos_id = -1;
  o.do_sample = true;
  o.temperature = 1.5;
  o.seed = 1234;
  const auto a = tokens_of(generate(t.model, kPrompts, t.images(0, 3), o));
  CHECK(a == tokens_of(generate(t.model, kPrompts, t.images(0, 3), o)));
  // Sample 1 alone, with the seed it had in the batch.
  auto alone = o;
  alone.sample_seeds = {sample_seed(o.seed, 1)};
  CHECK(generate(t.model, {kPrompts[1]}, {}, alone)[0].tokens == a[1]);
  // Another seed: other tokens (8 draws at temperature 1.5 over 48 tokens).
  auto other = o;
  other.seed = 99;
  CHECK(tokens_of(generate(t.model, kPrompts, t.images(0, 3), other)) != a);
  // Sampling is not greedy here, but top_k = 1 leaves one candidate.
  auto greedy = o;
  greedy.do_sample = false;
  const auto g = tokens_of(generate(t.model, kPrompts, t.images(0, 3), greedy));
  CHECK(a != g);
  auto k1 = o;
  k1.top_k = 1;
  CHECK(tokens_of(generate(t.model, kPrompts, t.images(0, 3), k1)) == g);
}

TEST_CASE("sample_token draws with the softmax probabilities", "[generate]") {
  auto gen = make_generator(5);
  const auto logits = torch::tensor({0.5, 0.3, 0.2, 0.0}, torch::kFloat64).log();
  std::vector<int> counts(4, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[static_cast<size_t>(sample_token(logits, gen))];
  CHECK(std::abs(counts[0] / double(n) - 0.5) < 0.015);
  CHECK(std::abs(counts[1] / double(n) - 0.3) < 0.015);
  CHECK(std::abs(counts[2] / double(n) - 0.2) < 0.015);
  CHECK(counts[3] == 0);  // probability 0 is never drawn
}

TEST_CASE("top-p, top-k and the repetition penalty on hand-computed logits", "[generate]") {
  const auto logits = torch::tensor({{0.5, 0.3, 0.15, 0.05}}, torch::kFloat64).log();
  auto kept = [](const torch::Tensor& x) {
    std::vector<int64_t> k;
    for (int64_t i = 0; i < x.size(1); ++i) {
      if (x[0][i].item<double>() > -kInf) k.push_back(i);
    }
    return k;
  };
  // Ascending probabilities 0.05, 0.15, 0.3, 0.5 have cumulative sums 0.05, 0.2, 0.5, 1.0; a token goes when its
  // sum is <= 1 - top_p.
  CHECK(kept(top_p_filter(logits, 0.75)) == Ids{0, 1});     // 0.05 and 0.2 <= 0.25
  CHECK(kept(top_p_filter(logits, 0.9)) == Ids{0, 1, 2});   // 0.05 <= 0.1
  CHECK(kept(top_p_filter(logits, 0.01)) == Ids{0});        // the most probable token always stays
  CHECK(kept(top_p_filter(logits, 1.0)) == Ids{0, 1, 2, 3});
  const auto kept_values = top_p_filter(logits, 0.75);
  CHECK(kept_values[0][0].item<double>() == logits[0][0].item<double>());  // survivors are unchanged

  const auto ties = torch::tensor({{1.0, 3.0, 3.0, 2.0}}, torch::kFloat64);
  CHECK(kept(top_k_filter(ties, 2)) == Ids{1, 2});
  CHECK(kept(top_k_filter(ties, 1)) == Ids{1, 2});  // ties with the k-th are kept, as HF does
  CHECK(kept(top_k_filter(ties, 3)) == Ids{1, 2, 3});
  CHECK(kept(top_k_filter(ties, 0)) == Ids{0, 1, 2, 3});

  const auto x = torch::tensor({{2.0, -1.0, 0.5, -0.5}}, torch::kFloat64);
  const auto seen = torch::tensor({{true, true, false, false}});
  const auto p = apply_repetition_penalty(x, seen, 2.0);
  CHECK(torch::equal(p, torch::tensor({{1.0, -2.0, 0.5, -0.5}}, torch::kFloat64)));
}

TEST_CASE("repetition penalty changes greedy output and counts prompt tokens", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 8;
  o.eos_id = -1;
  const auto plain = generate(t.model, {kPrompts[1]}, {}, o)[0].tokens;
  o.repetition_penalty = 1e6;  // a seen token is never chosen again while unseen ones are positive
  const auto penalized = generate(t.model, {kPrompts[1]}, {}, o)[0].tokens;
  CHECK(penalized != plain);
  std::set<int64_t> seen(kPrompts[1].begin(), kPrompts[1].end());
  int repeats = 0;
  for (auto tok : penalized) repeats += seen.insert(tok).second ? 0 : 1;
  CHECK(repeats == 0);
}

TEST_CASE("beam search: one beam is greedy, batched equals one by one", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.eos_id = -1;
  const auto greedy = tokens_of(generate(t.model, kPrompts, t.images(0, 3), o));
  o.num_beams = 1;
  CHECK(tokens_of(generate(t.model, kPrompts, t.images(0, 3), o)) == greedy);
  o.num_beams = 3;
  o.eos_id = 5;  // some hypotheses end early
  const auto batched = generate(t.model, kPrompts, t.images(0, 3), o);
  int64_t first_image = 0;
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    const auto alone = generate(t.model, {kPrompts[b]}, t.images(first_image, kImageCounts[b]), o)[0];
    first_image += kImageCounts[b];
    CHECK(alone.tokens == batched[b].tokens);
    CHECK(std::abs(alone.score - batched[b].score) < 1e-9);
  }
}

TEST_CASE("beam search finds a more probable sequence than greedy on a hand-made distribution", "[generate]") {
  // Token 0 is EOS. First step: P(1) = 0.5, P(2) = 0.4. After 1 every token is at most 0.3 likely; after 2,
  // token 3 has 0.9. Greedy takes 1 then 0.3 (0.15); two beams find 2, 3 (0.36).
  auto make = [] {
    MarkovSource m(1);
    m.probs[-1] = {0.0, 0.5, 0.4, 0.05, 0.05};
    m.probs[1] = {0.1, 0.1, 0.3, 0.3, 0.2};
    m.probs[2] = {0.02, 0.02, 0.02, 0.9, 0.04};
    m.probs[3] = {0.96, 0.01, 0.01, 0.01, 0.01};
    m.probs[4] = {0.96, 0.01, 0.01, 0.01, 0.01};
    return m;
  };
  GenerateOptions o;
  o.eos_id = 0;
  o.max_new_tokens = 2;
  auto g = make();
  const auto greedy = generate_from(g, g.logits(-1).unsqueeze(0), {{9}}, o)[0];
  CHECK(greedy.tokens == Ids{1, 2});  // the first of the tied 0.3 tokens
  o.num_beams = 2;
  auto b = make();
  const auto beam = generate_from(b, b.logits(-1).unsqueeze(0), {{9}}, o)[0];
  CHECK(beam.tokens == Ids{2, 3});
  CHECK(beam.finish == FinishReason::kLength);
  CHECK(std::abs(beam.score - std::log(0.36) / 2.0) < 1e-12);  // summed log-prob / length^1
  // One more step: the hypothesis 2, 3, EOS (0.3456 over 3 tokens) wins.
  o.max_new_tokens = 4;
  auto c = make();
  const auto eos = generate_from(c, c.logits(-1).unsqueeze(0), {{9}}, o)[0];
  CHECK(eos.tokens == Ids{2, 3});
  CHECK(eos.finish == FinishReason::kEos);
  CHECK(std::abs(eos.score - std::log(0.4 * 0.9 * 0.96) / 3.0) < 1e-12);
}

TEST_CASE("bad generation options name the option", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.num_beams = 2;
  o.do_sample = true;
  CHECK_THROWS_WITH(generate(t.model, {kPrompts[1]}, {}, o), Contains("num_beams > 1"));
  o = {};
  o.do_sample = true;
  o.temperature = 0;
  CHECK_THROWS_WITH(generate(t.model, {kPrompts[1]}, {}, o), Contains("temperature must be > 0"));
  o = {};
  o.stop_strings = {"x"};
  CHECK_THROWS_WITH(generate(t.model, {kPrompts[1]}, {}, o), Contains("stop_strings need a detokenize"));
  o = {};
  CHECK_THROWS_WITH(generate(t.model, {kPrompts[1], {}}, {}, o), Contains("prompt 1 is empty"));
}

namespace {

// The log-probability of each of `answer`'s tokens under one forward pass of the training code over prompt +
// answer (batch 1, no cache): row S - n - 1 + k of the spliced sequence's logits predicts answer[k].
std::vector<double> forward_logprobs(MPLUGOwl2ForCausalLM& model, const Ids& prompt, const Ids& answer,
                                     const torch::Tensor& images) {
  Ids seq = prompt;
  seq.insert(seq.end(), answer.begin(), answer.end());
  const auto ids = torch::tensor(seq, torch::kInt64).unsqueeze(0);
  ModelInputs in{ids, torch::ones_like(ids), images, {}};
  torch::NoGradGuard no_grad;
  const auto logp_SV = model->forward(in).logits.select(0, 0).to(torch::kFloat64).log_softmax(-1);
  const int64_t S = logp_SV.size(0), n = static_cast<int64_t>(answer.size());
  std::vector<double> out;
  for (int64_t k = 0; k < n; ++k) out.push_back(logp_SV[S - n - 1 + k][answer[static_cast<size_t>(k)]].item<double>());
  return out;
}

void check_logprobs(Tiny& t, const Generation& g, const Ids& prompt, const torch::Tensor& images) {
  REQUIRE(g.logprobs.size() == g.tokens.size());
  const auto expected = forward_logprobs(t.model, prompt, g.tokens, images);
  for (size_t k = 0; k < expected.size(); ++k) {
    INFO("token " << k);
    CHECK(std::abs(g.logprobs[k] - expected[k]) < 1e-10);
    CHECK(g.logprobs[k] < 0);
  }
}

}  // namespace

TEST_CASE("logprobs are the model's raw log-probabilities of the chosen tokens, as a separate forward pass gives them",
          "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.eos_id = -1;
  o.logprobs = true;
  // Greedy in a batch, with a repetition penalty: the penalty picks the tokens, the reported log-probabilities
  // are still the model's own.
  o.repetition_penalty = 1.5;
  const auto greedy = generate(t.model, kPrompts, t.images(0, 3), o);
  int64_t first_image = 0;
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    INFO("greedy prompt " << b);
    const auto images = t.images(first_image, kImageCounts[b]);
    first_image += kImageCounts[b];
    REQUIRE(greedy[b].tokens.size() == 6);
    check_logprobs(t, greedy[b], kPrompts[b], images);
    CHECK(std::isnan(greedy[b].eos_logprob));
  }
  // The penalized distribution gives another value for the first token: the test tells the two apart.
  {
    torch::NoGradGuard no_grad;
    const auto logits_V = recompute_last_logits(t, {kPrompts[1]}, {}).select(0, 0);
    auto seen_V = torch::zeros({logits_V.size(0)}, torch::kBool);
    for (int64_t id : kPrompts[1]) seen_V.index_put_({id}, true);
    const auto penalized_V = apply_repetition_penalty(logits_V, seen_V, 1.5).log_softmax(-1);
    CHECK(std::abs(penalized_V[greedy[1].tokens[0]].item<double>() - greedy[1].logprobs[0]) > 1e-6);
  }
  // Sampling at temperature 0.7 with top-k: the log-probabilities are those of the untempered distribution.
  o.repetition_penalty = 1.0;
  o.do_sample = true;
  o.temperature = 0.7;
  o.top_k = 5;
  o.seed = 11;
  const auto sampled = generate(t.model, {kPrompts[0]}, t.images(0, 1), o)[0];
  check_logprobs(t, sampled, kPrompts[0], t.images(0, 1));
  // Beam search: the winning hypothesis' tokens; with length penalty 1 its score is their mean.
  o.do_sample = false;
  o.num_beams = 3;
  const auto beam = generate(t.model, {kPrompts[2]}, t.images(1, 2), o)[0];
  check_logprobs(t, beam, kPrompts[2], t.images(1, 2));
  double sum = 0;
  for (double lp : beam.logprobs) sum += lp;
  CHECK(std::abs(sum / 6.0 - beam.score) < 1e-10);
}

TEST_CASE("logprobs: the EOS's log-probability is reported apart, stop sequences drop theirs", "[generate]") {
  Tiny t;
  GenerateOptions o;
  o.max_new_tokens = 5;
  o.eos_id = -1;
  o.logprobs = true;
  const auto free_run = generate(t.model, {kPrompts[1]}, {}, o)[0].tokens;
  // Call EOS the first token that did not occur before it (as in the EOS test).
  size_t k = 1;
  while (k < free_run.size() && std::count(free_run.begin(), free_run.begin() + static_cast<int64_t>(k), free_run[k]) > 0) ++k;
  REQUIRE(k < free_run.size());
  for (const int64_t beams : {1, 2}) {
    INFO("beams " << beams);
    o.eos_id = free_run[k];
    o.num_beams = beams;
    const auto g = generate(t.model, {kPrompts[1]}, {}, o)[0];
    if (beams == 1) REQUIRE(g.tokens == Ids(free_run.begin(), free_run.begin() + static_cast<int64_t>(k)));
    if (g.finish != FinishReason::kEos) continue;  // beam search may prefer a hypothesis that runs to the length
    check_logprobs(t, g, kPrompts[1], {});
    Ids with_eos = g.tokens;
    with_eos.push_back(o.eos_id);
    CHECK(std::abs(g.eos_logprob - forward_logprobs(t.model, kPrompts[1], with_eos, {}).back()) < 1e-10);
  }
  // A stop sequence: its tokens leave the result and so do their log-probabilities.
  o.eos_id = -1;
  o.num_beams = 1;
  o.stop_sequences = {{free_run[2]}};
  const auto stop_at = std::find(free_run.begin(), free_run.end(), free_run[2]);
  const auto stopped = generate(t.model, {kPrompts[1]}, {}, o)[0];
  CHECK(stopped.finish == FinishReason::kStop);
  CHECK(stopped.tokens == Ids(free_run.begin(), stop_at));
  check_logprobs(t, stopped, kPrompts[1], {});
}

namespace {

// A model directory with the tiny configuration (vocabulary widened to the fixture tokenizer's 1000 pieces),
// random weights and its own copy of the tokenizer, as owl2 writes one.
std::string tiny_model_dir() {
  const auto dir = owl2::test::temp_dir("owl2_chat");
  RunConfig cfg = load_config(owl2::test::source_path("configs/model/tiny.yaml"), {"model.decoder.vocab_size=1000"});
  cfg.data.tokenizer =
      copy_tokenizer_into(owl2::test::source_path("tests/fixtures/tokenizer/tiny_llama.model"), dir);
  std::ofstream(dir + "/config.yaml") << to_yaml(cfg);
  MPLUGOwl2ForCausalLM model(cfg.model);
  init_weights(model, 3);
  save_state_dict(*model, dir);
  return dir;
}

size_t count_of(const std::string& text, const std::string& piece) {
  size_t n = 0;
  for (auto at = text.find(piece); at != std::string::npos; at = text.find(piece, at + piece.size())) ++n;
  return n;
}

}  // namespace

TEST_CASE("owl2 chat on piped stdin: two turns with history, a missing /image file, /reset", "[generate][cli]") {
  const auto dir = tiny_model_dir();
  const auto image = owl2::test::source_path("tests/fixtures/image/logo2.png");
  std::string too_long;
  for (int i = 0; i < 300; ++i) too_long += "word ";
  std::ofstream(dir + "/input.txt") << "Hello\n/image " << dir << "/missing.png\n/image " << image
                                    << "\nWhat is in the picture?\n" << too_long
                                    << "\n/reset\nHello\n/quit\nnot read\n";
  const auto r = owl2::test::run_owl2("chat --model " + dir + " --max-new-tokens 4 < " + dir + "/input.txt");
  INFO(r.out);
  REQUIRE(r.rc == 0);

  // The replies the conversation should get, generated in process from the same template and images.
  auto l = load_model_dir(dir);
  const auto tmpl = chat_template(l.cfg.data.chat_template);
  ImageConfig ic;
  ic.size = l.cfg.model.vision.image_size;
  ic.mode = l.cfg.data.image_mode;
  GenerateOptions o;
  o.max_new_tokens = 4;
  o.stop_strings = {"</s>"};
  o.detokenize = [&](const Ids& ids) { return l.tokenizer->decode(ids); };
  // The reference CLI's layout (spec §6): the image in front of its message with no newline, the stripped
  // reply in the history.
  std::vector<Turn> turns{{Role::kHuman, user_message("Hello", 0)}};
  const auto first = generate(l.model, {l.tokenizer->encode_with_images(generation_prompt(tmpl, turns))}, {}, o)[0].text;
  const auto b = first.find_first_not_of(" \t\r\n"), e = first.find_last_not_of(" \t\r\n");
  const std::string reply = b == std::string::npos ? "" : first.substr(b, e - b + 1);
  turns.push_back({Role::kGpt, reply});
  turns.push_back({Role::kHuman, user_message("What is in the picture?", 1)});
  REQUIRE(generation_prompt(tmpl, turns) == "USER: Hello ASSISTANT:" + (reply.empty() ? "" : " " + reply + "</s>") +
                                                "USER: <|image|>What is in the picture? ASSISTANT:");
  const auto second = generate(l.model, {l.tokenizer->encode_with_images(generation_prompt(tmpl, turns))},
                               preprocess_image(load_image(image), ic).unsqueeze(0), o)[0].text;

  CHECK(count_of(r.out, "ASSISTANT: ") == 3);
  CHECK(count_of(r.out, "ASSISTANT: " + first + "\n") == 2);  // the first turn, and the same question after /reset
  CHECK_THAT(r.out, Contains("ASSISTANT: " + second + "\n"));
  CHECK_THAT(r.out, Contains("error: image " + dir + "/missing.png"));
  CHECK_THAT(r.out, Contains("[image attached: " + image + "]"));
  CHECK_THAT(r.out, Contains("[conversation reset]"));
  CHECK_THAT(r.out, Contains("and the context is 256 (max_position_embeddings)"));  // tiny.yaml; the chat goes on

  // `owl2 generate` streams the same answer as the chat's first turn.
  const auto g = owl2::test::run_owl2("generate --model " + dir + " --prompt Hello --max-new-tokens 4");
  CHECK(g.rc == 0);
  CHECK(g.out == first + "\n");
}

TEST_CASE("owl2 generate --video: the image-list prompt of the clip's frames, and generate() on those frames",
          "[generate][cli][video]") {
  if (!data::video_decoding_available()) {
    WARN("built without OpenCV videoio: nothing to check");
    return;
  }
  const auto dir = tiny_model_dir();
  std::vector<torch::Tensor> frames;
  for (int64_t i = 0; i < 7; ++i) {
    auto f = torch::full({40, 40, 3}, 20 + 25 * i, torch::kUInt8);
    f.slice(0, 10, 20).slice(1, 4 * i, 4 * i + 10).fill_(240);
    frames.push_back(f);
  }
  data::write_video(dir + "/clip.avi", frames);
  const auto r = owl2::test::run_owl2_streams("generate --model " + dir + " --video " + dir + "/clip.avi --frames 3 "
                                              "--prompt 'Where does the square go?' --max-new-tokens 4 "
                                              "--min-new-tokens 4 --json");
  INFO(r.out << r.err);
  REQUIRE(r.rc == 0);
  const auto j = nlohmann::json::parse(r.out);
  // The reference CLI's first turn with three image placeholders, all before the text.
  CHECK(j["prompt"] == "USER: <|image|><|image|><|image|>Where does the square go? ASSISTANT:");
  CHECK(j["video"] == dir + "/clip.avi");
  const auto ids = j["prompt_ids"].get<Ids>();
  CHECK(std::count(ids.begin(), ids.end(), int64_t{-200}) == 3);

  auto l = load_model_dir(dir);
  ImageConfig ic;
  ic.size = l.cfg.model.vision.image_size;
  ic.mode = l.cfg.data.image_mode;
  std::vector<torch::Tensor> chosen;
  const auto clip = data::decode_video(dir + "/clip.avi", 3);
  CHECK(clip.indices == std::vector<int64_t>{1, 3, 5});
  for (const auto& f : clip.frames) chosen.push_back(preprocess_image(f, ic));
  GenerateOptions o;
  o.max_new_tokens = o.min_new_tokens = 4;
  const auto g = generate(l.model, {ids}, torch::stack(chosen), o)[0];
  CHECK(j["generated_ids"].get<Ids>() == g.tokens);
  // --video and --image together are refused.
  const auto both = owl2::test::run_owl2("generate --model " + dir + " --video " + dir + "/clip.avi --image x.png "
                                         "--prompt hi");
  CHECK(both.rc != 0);
  CHECK_THAT(both.out, Contains("excludes"));
}

TEST_CASE("owl2 generate --json prints one object: the reference CLI's prompt ids, the answer, raw log-probs, timings",
          "[generate][cli]") {
  const auto dir = tiny_model_dir();
  const auto image = owl2::test::source_path("tests/fixtures/image/logo2.png");
  const auto golden = nlohmann::json::parse(
      owl2::test::read_text(owl2::test::source_path("tests/fixtures/tokenizer/generation_prompts.json")))["cases"];
  REQUIRE(golden[0]["name"] == "image first turn");
  // min_new_tokens = max_new_tokens: five tokens whatever the random model prefers, and a processor that the
  // reported log-probabilities must ignore.
  const auto r = owl2::test::run_owl2_streams("generate --model " + dir + " --image " + image +
                                              " --prompt 'What is in the picture?' --max-new-tokens 5 "
                                              "--min-new-tokens 5 --json");
  INFO(r.out << r.err);
  REQUIRE(r.rc == 0);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  const auto j = nlohmann::json::parse(r.out);  // stdout holds the object and nothing else
  CHECK(j["prompt"] == golden[0]["prompt"]);
  CHECK(j["prompt_ids"] == golden[0]["ids"]);
  CHECK(j["image"] == image);

  // The same answer in process; its log-probabilities from a separate forward pass in float64.
  auto l = load_model_dir(dir);
  ImageConfig ic;
  ic.size = l.cfg.model.vision.image_size;
  ic.mode = l.cfg.data.image_mode;
  const auto images = preprocess_image(load_image(image), ic).unsqueeze(0);
  GenerateOptions o;
  o.max_new_tokens = o.min_new_tokens = 5;
  o.stop_strings = {"</s>"};
  o.detokenize = [&](const Ids& ids) { return l.tokenizer->decode(ids); };
  const auto prompt = j["prompt_ids"].get<Ids>();
  const auto g = generate(l.model, {prompt}, images, o)[0];
  REQUIRE(g.tokens.size() == 5);
  CHECK(j["generated_ids"].get<Ids>() == g.tokens);
  CHECK(j["text"] == g.text);
  CHECK(j["stop_reason"] == "length");
  CHECK(j["eos_logprob"].is_null());
  l.model->to(torch::kFloat64);
  const auto expected = forward_logprobs(l.model, prompt, g.tokens, images.to(torch::kFloat64));
  const auto logprobs = j["logprobs"].get<std::vector<double>>();
  REQUIRE(logprobs.size() == expected.size());
  for (size_t k = 0; k < expected.size(); ++k) CHECK(std::abs(logprobs[k] - expected[k]) < 1e-4);  // fp32 run
  const auto& t = j["timings"];
  CHECK(t["load_s"].get<double>() > 0);
  CHECK(t["ttft_s"].get<double>() > 0);
  CHECK(t["total_s"].get<double>() >= t["ttft_s"].get<double>());
  CHECK(t["tokens_per_s"].get<double>() > 0);

  // A text-only prompt, and a typed placeholder with no image to stand for.
  const auto text = owl2::test::run_owl2_streams("generate --model " + dir +
                                                 " --prompt 'Text only question 12?' --max-new-tokens 2 --json");
  REQUIRE(text.rc == 0);
  const auto tj = nlohmann::json::parse(text.out);
  CHECK(tj["prompt"] == golden[2]["prompt"]);
  CHECK(tj["prompt_ids"] == golden[2]["ids"]);
  CHECK(tj["image"].is_null());
  const auto bad = owl2::test::run_owl2_streams("generate --model " + dir + " --prompt '<|image|> hi' --json");
  CHECK(bad.rc == 2);
  CHECK(bad.out.empty());
  CHECK_THAT(bad.err, Contains("the message contains <|image|> but no image is attached"));
}

TEST_CASE("owl2 generate --dtype bf16 tracks the fp32 model step by step and a bad --dtype is named",
          "[generate][cli]") {
  const auto dir = tiny_model_dir();
  const auto image = owl2::test::source_path("tests/fixtures/image/logo2.png");
  // Eight decode steps at batch 1: on a CPU with AVX2 and no native bf16 these run the bf16 matrix-vector kernel.
  const auto r = owl2::test::run_owl2_streams("generate --model " + dir + " --image " + image +
                                              " --prompt 'What is in the picture?' --max-new-tokens 8 "
                                              "--min-new-tokens 8 --json --dtype bf16");
  INFO(r.out << r.err);
  REQUIRE(r.rc == 0);
  const auto j = nlohmann::json::parse(r.out);
  const auto prompt = j["prompt_ids"].get<Ids>();
  const auto tokens = j["generated_ids"].get<Ids>();
  const auto logprobs = j["logprobs"].get<std::vector<double>>();
  REQUIRE(tokens.size() == 8);

  // The fp32 model's log-probabilities of the same tokens, and those of a model with other weights.
  auto fp32 = load_model_dir(dir);
  ImageConfig ic;
  ic.size = fp32.cfg.model.vision.image_size;
  ic.mode = fp32.cfg.data.image_mode;
  const auto images = preprocess_image(load_image(image), ic).unsqueeze(0);
  const auto expected = forward_logprobs(fp32.model, prompt, tokens, images);
  MPLUGOwl2ForCausalLM other(fp32.cfg.model);
  init_weights(other, 4);
  other->eval();
  const auto garbage = forward_logprobs(other, prompt, tokens, images);
  // bf16 keeps 8 significant bits: the log-probs (about -6.9, logits spread about 0.2) move by a few 1e-3.
  constexpr double kLogprobTol = 0.02;
  double worst = 0, garbage_worst = 0;
  for (size_t k = 0; k < tokens.size(); ++k) {
    worst = std::max(worst, std::abs(logprobs[k] - expected[k]));
    garbage_worst = std::max(garbage_worst, std::abs(garbage[k] - expected[k]));
  }
  INFO("bf16 vs fp32 " << worst << ", other weights vs fp32 " << garbage_worst);
  CHECK(worst < kLogprobTol);
  CHECK(garbage_worst > 5 * kLogprobTol);  // the tolerance tells a right model from a wrong one

  // The whole logits of every position, in process: the bf16 model loaded as the CLI loads it.
  ModelDirOptions bo;
  bo.dtype = torch::kBFloat16;
  auto bf16 = load_model_dir(dir, bo);
  for (const auto& p : bf16.model->parameters()) REQUIRE(p.scalar_type() == torch::kBFloat16);
  Ids seq = prompt;
  seq.insert(seq.end(), tokens.begin(), tokens.end());
  const auto ids = torch::tensor(seq, torch::kInt64).unsqueeze(0);
  torch::NoGradGuard no_grad;
  auto logits = [&](MPLUGOwl2ForCausalLM& m) {
    return m->forward({ids, torch::ones_like(ids), images, {}}).logits.to(torch::kFloat64);
  };
  const auto ref = logits(fp32.model);
  constexpr double kLogitTol = 0.02;
  CHECK(max_abs_diff(logits(bf16.model), ref) < kLogitTol);
  CHECK(max_abs_diff(logits(other), ref) > 5 * kLogitTol);

  for (const char* cmd : {"generate --prompt hi", "chat"}) {
    const auto bad = owl2::test::run_owl2_streams(std::string(cmd) + " --model " + dir + " --dtype fp16x < /dev/null");
    CHECK(bad.rc == 2);
    CHECK_THAT(bad.err, Contains("--dtype 'fp16x': expected fp32 or bf16"));
  }
}

TEST_CASE("owl2 bench generate: owl2 and the Python reference with its own KV cache pick the same tokens",
          "[generate][cli]") {
  // The reference side (scripts/bench/bench_generate_reference.py) is an independent cache implementation over the
  // reference layers; its greedy tokens must equal owl2's at batch 1 and 2 on the same weights and prompts.
  // In bf16 both sides round the same weights once; the tiny model's tokens agree there too.
  const auto r = owl2::test::run_owl2("bench generate --config " + owl2::test::source_path("configs/model/tiny.yaml") +
                                      " --threads 1 --iters 1 --batches 1 2 --new-tokens 6 --text-tokens 8");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  // One line per dtype and batch compares owl2 with the reference; owl2's bf16 against its fp32 may differ.
  std::istringstream lines(r.out);
  int compared = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("owl2 vs reference") == std::string::npos) continue;
    INFO(line);
    ++compared;
    CHECK_THAT(line, Contains("tokens identical"));
  }
  CHECK(compared == 4);
  CHECK_THAT(r.out, Contains("batch 1: owl2 bf16 / owl2 fp32"));
  CHECK_THAT(r.out, Contains("/ reference fp32"));
  CHECK_THAT(r.out, Contains("/ reference bf16"));
  const auto bad = owl2::test::run_owl2("bench generate --dtypes fp16 --no-reference");
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.out, Contains("--dtypes"));
}

TEST_CASE("beam search equals HF transformers' beam search on a toy model (scripts/make_generate_golden.py)",
          "[generate][golden]") {
  // A next-token table that depends on the last token only, 72 settings: 2-4 beams, length penalty 1, 0, 2,
  // -0.5, early stopping False / True / "never", with and without min_new_tokens.
  const auto j = nlohmann::json::parse(owl2::test::read_text(owl2::test::source_path("tests/golden/generate_beam.json")));
  std::vector<torch::Tensor> rows;
  for (const auto& r : j.at("table")) rows.push_back(torch::tensor(r.get<std::vector<double>>(), torch::kFloat32));
  const auto logp_VV = torch::stack(rows);
  struct TableSource : TokenSource {
    torch::Tensor logp_VV;
    int64_t n = 1;
    int64_t rows() const override { return n; }
    torch::Tensor step(const std::vector<int64_t>& tokens_R) override {
      return logp_VV.index_select(0, torch::tensor(tokens_R, torch::kInt64));
    }
    void select_rows(const std::vector<int64_t>& rows_R) override { n = static_cast<int64_t>(rows_R.size()); }
  };
  int checked = 0, ended_by_eos = 0;
  for (const auto& c : j.at("cases")) {
    GenerateOptions o;
    o.eos_id = j.at("eos").get<int64_t>();
    o.num_beams = c.at("num_beams").get<int64_t>();
    o.length_penalty = c.at("length_penalty").get<double>();
    o.min_new_tokens = c.at("min_new_tokens").get<int64_t>();
    o.max_new_tokens = c.at("max_new_tokens").get<int64_t>();
    const auto& es = c.at("early_stopping");
    o.early_stopping = es.is_string() ? EarlyStopping::kNever : es.get<bool>() ? EarlyStopping::kAlways : EarlyStopping::kHeuristic;
    TableSource src;
    src.logp_VV = logp_VV;
    const int64_t start = c.at("start").get<int64_t>();
    const auto got = generate_from(src, logp_VV.narrow(0, start, 1), {{start}}, o)[0];
    auto expected = c.at("tokens").get<Ids>();
    const bool eos = !expected.empty() && expected.back() == o.eos_id;
    if (eos) expected.pop_back();
    INFO("case " << c.dump());
    CHECK(got.tokens == expected);
    CHECK(got.finish == (eos ? FinishReason::kEos : FinishReason::kLength));
    CHECK(std::abs(got.score - c.at("score").get<double>()) < 1e-5);
    ++checked;
    ended_by_eos += eos;
  }
  CHECK(checked == 72);
  CHECK(ended_by_eos > 10);  // the cases exercise finished hypotheses, not only max length
}

}  // namespace owl2_test_generate
