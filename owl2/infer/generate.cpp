// DecodeState (prefill + cached decode steps) and generate(): greedy, sampling and HF-style beam search
// (spec §6). Legend: B prompts, R rows (samples or beams), V vocabulary, N beams per sample.
#include "owl2/infer/generate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <utility>

#include "owl2/model/constants.h"
#include "owl2/infer/sampling.h"

namespace owl2 {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kFinishedPenalty = -1.0e9;  // HF's offset that keeps finished candidates out of the running beams

void validate(const GenerateOptions& o, size_t num_prompts) {
  auto bad = [](const std::string& m) { throw std::invalid_argument("generate: " + m); };
  if (o.max_new_tokens < 0) bad(fmt::format("max_new_tokens must be >= 0, got {}", o.max_new_tokens));
  if (o.min_new_tokens < 0) bad(fmt::format("min_new_tokens must be >= 0, got {}", o.min_new_tokens));
  if (o.vocab_limit < 0) bad(fmt::format("vocab_limit must be >= 0, got {}", o.vocab_limit));
  if (o.num_beams < 1) bad(fmt::format("num_beams must be >= 1, got {}", o.num_beams));
  if (o.num_beams > 1 && o.do_sample) bad("beam search with sampling is not implemented (num_beams > 1 needs greedy)");
  if (o.do_sample && !(o.temperature > 0)) bad(fmt::format("temperature must be > 0 when sampling, got {}", o.temperature));
  if (!(o.top_p > 0 && o.top_p <= 1)) bad(fmt::format("top_p must be in (0, 1], got {}", o.top_p));
  if (o.top_k < 0) bad(fmt::format("top_k must be >= 0, got {}", o.top_k));
  if (!(o.repetition_penalty > 0)) bad(fmt::format("repetition_penalty must be > 0, got {}", o.repetition_penalty));
  if (!o.stop_strings.empty() && !o.detokenize) bad("stop_strings need a detokenize function");
  for (size_t i = 0; i < o.stop_strings.size(); ++i) {
    if (o.stop_strings[i].empty()) bad(fmt::format("stop_strings[{}] is empty", i));
  }
  for (size_t i = 0; i < o.stop_sequences.size(); ++i) {
    if (o.stop_sequences[i].empty()) bad(fmt::format("stop_sequences[{}] is empty", i));
  }
  if (!o.sample_seeds.empty() && o.sample_seeds.size() != num_prompts) {
    bad(fmt::format("sample_seeds has {} seeds for {} prompts", o.sample_seeds.size(), num_prompts));
  }
}

// How a sequence of new tokens ends, if it does: a stop sequence at its tail (drop those tokens) or a stop string
// in its text (cut the text there).
struct StopMatch {
  bool hit = false;
  size_t drop_tokens = 0;
  std::string text;  // detokenized, cut before the stop string (set when a stop string matched)
};

StopMatch match_stop(const std::vector<int64_t>& tokens, const GenerateOptions& o) {
  StopMatch m;
  for (const auto& seq : o.stop_sequences) {
    if (seq.size() <= tokens.size() && std::equal(seq.rbegin(), seq.rend(), tokens.rbegin())) {
      m.hit = true;
      m.drop_tokens = seq.size();
      return m;
    }
  }
  if (o.stop_strings.empty()) return m;
  const auto text = o.detokenize(tokens);
  size_t cut = std::string::npos;
  for (const auto& s : o.stop_strings) cut = std::min(cut, text.find(s));
  if (cut != std::string::npos) {
    m.hit = true;
    m.text = text.substr(0, cut);
  }
  return m;
}

// The scores a token is chosen from: logits (greedy, sampling) or log-probs (beam search) after the processors,
// in HF's order. `step` counts the new tokens so far.
torch::Tensor process(torch::Tensor scores_RV, const GenerateOptions& o, const torch::Tensor& seen_RV, int64_t step) {
  if (o.vocab_limit > 0 && o.vocab_limit < scores_RV.size(1)) {
    scores_RV = scores_RV.clone();
    scores_RV.slice(1, o.vocab_limit).fill_(kNegInf);
  }
  if (seen_RV.defined()) scores_RV = apply_repetition_penalty(scores_RV, seen_RV, o.repetition_penalty);
  if (step < o.min_new_tokens && o.eos_id >= 0 && o.eos_id < scores_RV.size(1)) {
    scores_RV = scores_RV.index_fill(1, torch::tensor({o.eos_id}, torch::kInt64).to(scores_RV.device()), kNegInf);
  }
  if (o.do_sample) {
    if (o.temperature != 1.0) scores_RV = scores_RV / o.temperature;
    scores_RV = top_p_filter(top_k_filter(scores_RV, o.top_k), o.top_p);
  }
  return scores_RV;
}

torch::Tensor at_least_float32(const torch::Tensor& t) {
  return t.to(torch::promote_types(t.scalar_type(), torch::kFloat32));
}

// Which tokens each prompt holds (for the repetition penalty): [B,V] bool, placeholders and negative ids skipped.
torch::Tensor prompt_tokens_seen(const std::vector<std::vector<int64_t>>& prompts, int64_t vocab, torch::Device device) {
  auto seen = torch::zeros({static_cast<int64_t>(prompts.size()), vocab}, torch::kBool);
  auto a = seen.accessor<bool, 2>();
  for (size_t b = 0; b < prompts.size(); ++b) {
    for (int64_t t : prompts[b]) {
      if (t >= 0 && t < vocab) a[static_cast<int64_t>(b)][t] = true;
    }
  }
  return seen.to(device);
}

void mark_seen(torch::Tensor& seen_RV, const std::vector<int64_t>& tokens_R) {
  if (!seen_RV.defined()) return;
  const auto rows = torch::arange(static_cast<int64_t>(tokens_R.size()), seen_RV.options().dtype(torch::kInt64));
  const auto cols = torch::tensor(tokens_R, torch::kInt64).to(seen_RV.device());
  seen_RV.index_put_({rows, cols}, true);
}

// The raw log-probability of each row's chosen token: log_softmax of the logits before any processor (see
// GenerateOptions::logprobs). Host sync: one small copy per step.
std::vector<double> chosen_logprobs(const torch::Tensor& logits_RV, const std::vector<int64_t>& tokens_R) {
  const auto idx_R1 = torch::tensor(tokens_R, torch::kInt64).to(logits_RV.device()).unsqueeze(1);
  const auto logp_R = logits_RV.log_softmax(-1).gather(1, idx_R1).squeeze(1).to(torch::kCPU, torch::kFloat64);
  return {logp_R.data_ptr<double>(), logp_R.data_ptr<double>() + logp_R.numel()};
}

void finish_text(Generation& g, const GenerateOptions& o) {
  if (o.detokenize && g.finish != FinishReason::kStop) g.text = o.detokenize(g.tokens);
}

std::vector<Generation> greedy_or_sample(TokenSource& st, torch::Tensor logits_RV, torch::Tensor seen_RV,
                                         const GenerateOptions& o) {
  const int64_t B = st.rows();
  std::vector<Generation> out(static_cast<size_t>(B));
  std::vector<int64_t> row_sample(static_cast<size_t>(B));
  std::iota(row_sample.begin(), row_sample.end(), 0);
  std::vector<at::Generator> gens;
  if (o.do_sample) {
    for (int64_t b = 0; b < B; ++b) {
      gens.push_back(make_generator(o.sample_seeds.empty() ? sample_seed(o.seed, b) : o.sample_seeds[b]));
    }
  }
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const auto raw_RV = at_least_float32(logits_RV);
    const auto scores_RV = process(raw_RV, o, seen_RV, step);
    std::vector<int64_t> next(row_sample.size());
    if (o.do_sample) {
      for (size_t r = 0; r < next.size(); ++r) {
        next[r] = sample_token(scores_RV[static_cast<int64_t>(r)], gens[static_cast<size_t>(row_sample[r])]);
      }
    } else {
      const auto argmax = scores_RV.argmax(-1).cpu();  // host sync: one per step
      next.assign(argmax.data_ptr<int64_t>(), argmax.data_ptr<int64_t>() + argmax.numel());
    }
    const std::vector<double> logp_R = o.logprobs ? chosen_logprobs(raw_RV, next) : std::vector<double>();
    std::vector<int64_t> keep_rows, keep_tokens;
    for (size_t r = 0; r < next.size(); ++r) {
      const int64_t b = row_sample[r], t = next[r];
      auto& g = out[static_cast<size_t>(b)];
      if (t == o.eos_id) {
        g.finish = FinishReason::kEos;
        if (o.logprobs) g.eos_logprob = logp_R[r];
        continue;
      }
      g.tokens.push_back(t);
      if (o.logprobs) g.logprobs.push_back(logp_R[r]);
      if (o.on_token) o.on_token(b, t);
      if (auto m = match_stop(g.tokens, o); m.hit) {
        g.tokens.resize(g.tokens.size() - m.drop_tokens);
        if (o.logprobs) g.logprobs.resize(g.tokens.size());
        g.text = std::move(m.text);
        if (m.drop_tokens > 0 && o.detokenize) g.text = o.detokenize(g.tokens);
        g.finish = FinishReason::kStop;
        continue;
      }
      if (static_cast<int64_t>(g.tokens.size()) == o.max_new_tokens) continue;  // kLength
      keep_rows.push_back(static_cast<int64_t>(r));
      keep_tokens.push_back(t);
    }
    if (keep_rows.empty()) break;
    if (keep_rows.size() != next.size()) {  // finished samples leave the batch
      st.select_rows(keep_rows);
      if (seen_RV.defined()) seen_RV = seen_RV.index_select(0, torch::tensor(keep_rows).to(seen_RV.device()));
      std::vector<int64_t> rs;
      for (auto r : keep_rows) rs.push_back(row_sample[static_cast<size_t>(r)]);
      row_sample = std::move(rs);
    }
    mark_seen(seen_RV, keep_tokens);
    logits_RV = st.step(keep_tokens);
  }
  for (auto& g : out) finish_text(g, o);
  return out;
}

// One beam-search hypothesis: its new tokens and summed log-prob (running) or length-penalized score (finished).
struct Hyp {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;  // raw, per token (GenerateOptions::logprobs)
  double score = 0;
  FinishReason finish = FinishReason::kLength;
  StopMatch stop;
};

// HF's beam search (transformers 5 `_beam_search`), one sample at a time on the host, the forward batched over
// every active sample's beams: the top 2N continuations over all beams; those of the top N that end (EOS, stop,
// or the last allowed token) become finished hypotheses scored sum / length^length_penalty; the best N that do
// not end continue.
std::vector<Generation> beam_search(TokenSource& st, torch::Tensor logits_RV, torch::Tensor seen_RV,
                                    const GenerateOptions& o) {
  const int64_t B = st.rows(), N = o.num_beams, K = 2 * N;
  struct Sample {
    std::vector<Hyp> running, finished;  // finished: best first, at most N
    bool improvable = true;
  };
  std::vector<Sample> samples(static_cast<size_t>(B));
  for (auto& s : samples) {
    s.running.resize(static_cast<size_t>(N));
    for (int64_t n = 1; n < N; ++n) s.running[static_cast<size_t>(n)].score = kFinishedPenalty;  // only beam 0 expands
  }
  std::vector<int64_t> expand;  // every sample's row repeated N times
  for (int64_t b = 0; b < B; ++b) expand.insert(expand.end(), static_cast<size_t>(N), b);
  st.select_rows(expand);
  const auto expand_t = torch::tensor(expand).to(logits_RV.device());
  logits_RV = logits_RV.index_select(0, expand_t);
  if (seen_RV.defined()) seen_RV = seen_RV.index_select(0, expand_t);
  std::vector<int64_t> active(static_cast<size_t>(B));
  std::iota(active.begin(), active.end(), 0);

  for (int64_t step = 0; step < o.max_new_tokens && !active.empty(); ++step) {
    const auto raw_logp_RV = at_least_float32(logits_RV).log_softmax(-1);
    const auto logp_RV = process(raw_logp_RV, o, seen_RV, step).to(torch::kCPU, torch::kFloat64);
    const auto chosen_logp_RV = o.logprobs ? raw_logp_RV.to(torch::kCPU, torch::kFloat64) : torch::Tensor();
    const int64_t V = logp_RV.size(1);
    std::vector<int64_t> next_rows, next_tokens, next_active;
    for (size_t a = 0; a < active.size(); ++a) {
      auto& s = samples[static_cast<size_t>(active[a])];
      std::vector<double> running_scores;
      for (const auto& h : s.running) running_scores.push_back(h.score);
      const auto acc = (logp_RV.narrow(0, static_cast<int64_t>(a) * N, N) +
                        torch::tensor(running_scores, torch::kFloat64).unsqueeze(1))
                           .reshape({-1});
      const auto [vals, idx] = acc.topk(std::min(K, acc.size(0)));
      struct Cand {
        int64_t beam, token;
        Hyp hyp;
        bool ends;
      };
      std::vector<Cand> cands;
      for (int64_t j = 0; j < vals.size(0); ++j) {
        const int64_t flat = idx[j].item<int64_t>();
        Cand c{flat / V, flat % V, {}, false};
        c.hyp.tokens = s.running[static_cast<size_t>(c.beam)].tokens;
        c.hyp.tokens.push_back(c.token);
        if (o.logprobs) {
          c.hyp.logprobs = s.running[static_cast<size_t>(c.beam)].logprobs;
          c.hyp.logprobs.push_back(chosen_logp_RV[static_cast<int64_t>(a) * N + c.beam][c.token].item<double>());
        }
        c.hyp.score = vals[j].item<double>();
        if (c.token == o.eos_id) {
          c.ends = true;
          c.hyp.finish = FinishReason::kEos;
        } else if (auto m = match_stop(c.hyp.tokens, o); m.hit) {
          c.ends = true;
          c.hyp.finish = FinishReason::kStop;
          c.hyp.stop = std::move(m);
        } else {
          c.ends = step + 1 == o.max_new_tokens;
        }
        cands.push_back(std::move(c));
      }
      // Finished hypotheses: only the top N candidates, only while the sample can still improve, and (early
      // stopping "always") only while fewer than N are finished.
      const bool full = static_cast<int64_t>(s.finished.size()) == N;
      if (s.improvable && !(o.early_stopping == EarlyStopping::kAlways && full)) {
        const double norm = std::pow(static_cast<double>(step + 1), o.length_penalty);
        for (int64_t j = 0; j < std::min<int64_t>(N, static_cast<int64_t>(cands.size())); ++j) {
          if (!cands[static_cast<size_t>(j)].ends) continue;
          Hyp h = cands[static_cast<size_t>(j)].hyp;
          h.score /= norm;
          s.finished.push_back(std::move(h));
        }
        std::stable_sort(s.finished.begin(), s.finished.end(), [](const Hyp& x, const Hyp& y) { return x.score > y.score; });
        if (static_cast<int64_t>(s.finished.size()) > N) s.finished.resize(static_cast<size_t>(N));
      }
      // Running beams: the best N candidates that do not end (ended ones sink by HF's -1e9).
      std::vector<size_t> order(cands.size());
      std::iota(order.begin(), order.end(), 0);
      auto running_score = [&](size_t j) { return cands[j].hyp.score + (cands[j].ends ? kFinishedPenalty : 0.0); };
      std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return running_score(x) > running_score(y); });
      std::vector<Hyp> running;
      std::vector<int64_t> src;
      for (int64_t n = 0; n < N; ++n) {
        const auto j = order[static_cast<size_t>(n)];
        Hyp h = cands[j].hyp;
        h.score = running_score(j);
        running.push_back(std::move(h));
        src.push_back(cands[j].beam);
      }
      s.running = std::move(running);
      // Can a running beam still beat the worst finished hypothesis? (HF's _check_early_stop_heuristic)
      const bool all_finished = static_cast<int64_t>(s.finished.size()) == N;
      const int64_t best_len =
          o.early_stopping == EarlyStopping::kNever && o.length_penalty > 0 ? o.max_new_tokens : step + 1;
      const double best_possible = s.running[0].score / std::pow(static_cast<double>(best_len), o.length_penalty);
      s.improvable = s.improvable && (!all_finished || best_possible > s.finished.back().score);
      const bool done = !s.improvable || (o.early_stopping == EarlyStopping::kAlways && all_finished) ||
                        step + 1 == o.max_new_tokens;
      if (done) continue;
      next_active.push_back(active[a]);
      for (int64_t n = 0; n < N; ++n) {
        next_rows.push_back(static_cast<int64_t>(a) * N + src[static_cast<size_t>(n)]);
        next_tokens.push_back(s.running[static_cast<size_t>(n)].tokens.back());
      }
    }
    active = std::move(next_active);
    if (active.empty()) break;
    st.select_rows(next_rows);
    if (seen_RV.defined()) seen_RV = seen_RV.index_select(0, torch::tensor(next_rows).to(seen_RV.device()));
    mark_seen(seen_RV, next_tokens);
    logits_RV = st.step(next_tokens);
  }

  std::vector<Generation> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& s = samples[static_cast<size_t>(b)];
    auto& g = out[static_cast<size_t>(b)];
    if (o.max_new_tokens == 0) continue;
    const Hyp& best = s.finished.empty() ? s.running[0] : s.finished[0];
    g.tokens = best.tokens;
    g.logprobs = best.logprobs;
    g.score = best.score;
    g.finish = best.finish;
    if (g.finish == FinishReason::kEos) {
      g.tokens.pop_back();
      if (o.logprobs) {
        g.eos_logprob = g.logprobs.back();
        g.logprobs.pop_back();
      }
    }
    if (g.finish == FinishReason::kStop) {
      g.tokens.resize(g.tokens.size() - best.stop.drop_tokens);
      if (o.logprobs) g.logprobs.resize(g.tokens.size());
      g.text = best.stop.drop_tokens > 0 && o.detokenize ? o.detokenize(g.tokens) : best.stop.text;
    }
    finish_text(g, o);
    if (o.on_token) {
      for (auto t : g.tokens) o.on_token(b, t);
    }
  }
  return out;
}

}  // namespace

DecodeState::DecodeState(MPLUGOwl2ForCausalLM model, int64_t capacity_hint)
    : model_(std::move(model)), cache_(model_->cfg.decoder.num_hidden_layers, capacity_hint) {}

torch::Tensor DecodeState::prefill(const std::vector<std::vector<int64_t>>& prompts, const torch::Tensor& images_NCHW,
                                   int64_t pad_id) {
  TORCH_CHECK(cache_.length() == 0, "DecodeState::prefill: the cache is already filled");
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t T = 0;
  for (size_t b = 0; b < prompts.size(); ++b) {
    if (prompts[b].empty()) throw std::invalid_argument(fmt::format("generate: prompt {} is empty", b));
    T = std::max(T, static_cast<int64_t>(prompts[b].size()));
  }
  auto ids = torch::full({B, T}, pad_id, torch::kInt64);
  auto mask = torch::zeros({B, T}, torch::kInt64);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    const int64_t off = T - static_cast<int64_t>(p.size());  // left padding
    for (size_t t = 0; t < p.size(); ++t) {
      ids_a[b][off + static_cast<int64_t>(t)] = p[t];
      mask_a[b][off + static_cast<int64_t>(t)] = 1;
    }
  }
  const auto& w = model_->lm_head->weight;
  ModelInputs in;
  in.input_ids = ids.to(w.device());
  in.attention_mask = mask.to(w.device());
  if (images_NCHW.defined()) in.images = images_NCHW.to(w.device(), w.scalar_type());
  in.pad_left = true;  // every sample ends at the last position, whatever its image count
  const auto batch = model_->splice_inputs(in);
  const auto hidden_BSD = model_->decode_cached(batch.inputs_embeds_BSD, batch.attention_mask_BS,
                                                batch.position_ids_BS, batch.routing, cache_);
  // Real tokens are contiguous at the right edge, so a sample's next position is its count of real tokens.
  next_position_R_ = batch.attention_mask_BS.to(torch::kInt64).sum(1);
  return model_->lm_head(hidden_BSD.select(1, hidden_BSD.size(1) - 1));
}

torch::Tensor DecodeState::step(const std::vector<int64_t>& tokens_R) {
  const int64_t R = static_cast<int64_t>(tokens_R.size());
  TORCH_CHECK(R == rows(), "DecodeState::step: ", R, " tokens for ", rows(), " rows");
  const auto device = model_->lm_head->weight.device();
  const auto ids_R1 = torch::tensor(tokens_R, torch::kInt64).to(device).unsqueeze(1);
  // New tokens are text: they take the text copies (spec §1.4), so no routing indices are needed.
  ModalityRouting routing;
  routing.num_text = R;
  routing.text_idx_M = torch::arange(R, torch::TensorOptions().dtype(torch::kInt64).device(device));
  routing.image_idx_M = torch::empty({0}, routing.text_idx_M.options());
  const auto hidden_R1D = model_->decode_cached(model_->model->embed_tokens(ids_R1),
                                                torch::ones({R, 1}, torch::TensorOptions().dtype(torch::kBool).device(device)),
                                                next_position_R_.unsqueeze(1), routing, cache_);
  next_position_R_ = next_position_R_ + 1;
  return model_->lm_head(hidden_R1D.select(1, 0));
}

void DecodeState::select_rows(const std::vector<int64_t>& rows_R) {
  const auto rows = torch::tensor(rows_R, torch::kInt64).to(next_position_R_.device());
  cache_.select_rows(rows);
  next_position_R_ = next_position_R_.index_select(0, rows);
}

namespace {

// The cache length that prompts and options need: the longest prompt with its images' visual tokens, plus the
// new tokens.
int64_t cache_capacity(const MPLUGOwl2ForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                       const GenerateOptions& options) {
  const int64_t visual = model->cfg.visual_tokens_per_image();
  int64_t longest = 0;
  for (const auto& p : prompts) {
    const auto images = std::count(p.begin(), p.end(), kImageTokenIndex);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()) + (visual - 1) * images);
  }
  return longest + options.max_new_tokens;
}

// A TokenSource whose every step first tells the other ranks that this one still makes passes.
class LockstepSource : public TokenSource {
 public:
  LockstepSource(TokenSource& inner, const Lockstep& lockstep) : inner_(inner), lockstep_(lockstep) {}
  int64_t rows() const override { return inner_.rows(); }
  torch::Tensor step(const std::vector<int64_t>& tokens_R) override {
    lockstep_.any(true);
    return inner_.step(tokens_R);
  }
  void select_rows(const std::vector<int64_t>& rows_R) override { inner_.select_rows(rows_R); }

 private:
  TokenSource& inner_;
  const Lockstep& lockstep_;
};

// A decoder pass over one token, without a cache, whose logits are dropped: the per-layer collectives of a real
// pass (the layers run in the same order, each once).
void idle_pass(MPLUGOwl2ForCausalLM& model) {
  const auto device = model->lm_head->weight.device();
  model->forward(ModelInputs{torch::ones({1, 1}, torch::TensorOptions().dtype(torch::kInt64).device(device)), {}, {}, {}});
}

}  // namespace

std::vector<Generation> generate(MPLUGOwl2ForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                 const torch::Tensor& images_NCHW, const GenerateOptions& options) {
  validate(options, prompts.size());
  if (prompts.empty()) return {};
  torch::NoGradGuard no_grad;
  DecodeState st(model, cache_capacity(model, prompts, options));
  return generate_from(st, st.prefill(prompts, images_NCHW, options.pad_id), prompts, options);
}

std::vector<Generation> generate_in_lockstep(MPLUGOwl2ForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                             const torch::Tensor& images_NCHW, const GenerateOptions& options,
                                             const Lockstep& lockstep) {
  if (!lockstep.any) throw std::invalid_argument("generate_in_lockstep: Lockstep::any is not set");
  validate(options, prompts.size());
  torch::NoGradGuard no_grad;
  // Images first, as prefill runs them before the decoder: a rank without any joins the others' vision passes.
  const bool images = images_NCHW.defined() && images_NCHW.size(0) > 0;
  if (lockstep.vision && lockstep.any(images) && !images) {
    const auto& w = model->lm_head->weight;
    const int64_t size = model->cfg.vision.image_size;
    model->encode_images(torch::zeros({1, 3, size, size}, w.options()));
  }
  std::vector<Generation> out;
  if (prompts.empty()) {
    idle_pass(model);  // the others' prefill
  } else {
    DecodeState st(model, cache_capacity(model, prompts, options));
    const auto first = st.prefill(prompts, images ? images_NCHW : torch::Tensor(), options.pad_id);
    LockstepSource source(st, lockstep);
    out = generate_from(source, first, prompts, options);
  }
  while (lockstep.any(false)) idle_pass(model);  // the passes of ranks still generating
  return out;
}

std::vector<Generation> generate_from(TokenSource& source, const torch::Tensor& first_logits_BV,
                                      const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options) {
  validate(options, prompts.size());
  TORCH_CHECK(first_logits_BV.size(0) == source.rows() && source.rows() == static_cast<int64_t>(prompts.size()),
              "generate_from: ", prompts.size(), " prompts, ", source.rows(), " rows, logits ", first_logits_BV.sizes());
  torch::NoGradGuard no_grad;
  torch::Tensor seen_BV;
  if (options.repetition_penalty != 1.0) {
    seen_BV = prompt_tokens_seen(prompts, first_logits_BV.size(1), first_logits_BV.device());
  }
  if (options.num_beams > 1) return beam_search(source, first_logits_BV, seen_BV, options);
  return greedy_or_sample(source, first_logits_BV, seen_BV, options);
}

std::vector<std::vector<int64_t>> greedy_generate(MPLUGOwl2ForCausalLM& model,
                                                  const std::vector<std::vector<int64_t>>& prompts,
                                                  const torch::Tensor& images_NCHW, const GenerateOptions& options) {
  std::vector<std::vector<int64_t>> out;
  for (auto& g : generate(model, prompts, images_NCHW, options)) out.push_back(std::move(g.tokens));
  return out;
}

}  // namespace owl2
