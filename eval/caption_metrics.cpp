// BLEU, CIDEr-D and ROUGE-L as the coco-caption scorers compute them (eval_metrics.md §3.3-3.5).
#include "eval/caption_metrics.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

namespace owl2::eval {
namespace {

constexpr int kMaxN = 4;
using Counts = std::unordered_map<std::string, int>;  // n-gram (words joined by ' ') -> count

// Whitespace split, as Python's str.split() with no argument (ASCII whitespace).
std::vector<std::string> split_ws(const std::string& s) {
  std::vector<std::string> words;
  size_t i = 0;
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  while (i < s.size()) {
    while (i < s.size() && space(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !space(s[j])) ++j;
    if (j > i) words.push_back(s.substr(i, j - i));
    i = j;
  }
  return words;
}

// Split on single spaces, as str.split(" "): "" gives one empty token.
std::vector<std::string> split_space(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == ' ') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

// Counts of all 1..4-grams; orders never collide because an n-gram key holds n-1 spaces.
Counts ngram_counts(const std::vector<std::string>& words) {
  Counts counts;
  for (int k = 1; k <= kMaxN; ++k) {
    for (size_t i = 0; i + k <= words.size(); ++i) {
      std::string g = words[i];
      for (int m = 1; m < k; ++m) g += ' ' + words[i + m];
      ++counts[g];
    }
  }
  return counts;
}

int order_of(const std::string& gram) { return 1 + static_cast<int>(std::count(gram.begin(), gram.end(), ' ')); }

void check(const CaptionSet& set) {
  if (set.hyps.size() != set.refs.size())
    throw std::invalid_argument(fmt::format("caption set: {} hypotheses but {} reference lists", set.hyps.size(),
                                            set.refs.size()));
  for (size_t i = 0; i < set.refs.size(); ++i)
    if (set.refs[i].empty()) throw std::invalid_argument(fmt::format("caption set: image #{} has no reference", i));
}

// The BLEU product for given totals, with the brevity penalty (the reference's 1e-15 / 1e-9 guards).
std::array<double, 4> bleu_from(const std::array<double, 4>& correct, const std::array<double, 4>& guess,
                                double testlen, double reflen) {
  constexpr double tiny = 1e-15, small = 1e-9;
  std::array<double, 4> out{};
  double product = 1.0;
  for (int k = 0; k < kMaxN; ++k) {
    product *= (correct[k] + tiny) / (guess[k] + small);
    out[k] = std::pow(product, 1.0 / (k + 1));
  }
  const double ratio = (testlen + tiny) / (reflen + small);
  if (ratio < 1)
    for (auto& b : out) b *= std::exp(1 - 1 / ratio);
  return out;
}

}  // namespace

BleuScore bleu(const CaptionSet& set) {
  check(set);
  BleuScore result;
  std::array<double, 4> total_correct{}, total_guess{};
  for (size_t i = 0; i < set.hyps.size(); ++i) {
    // Clipping counts: the maximum count of each n-gram over the references.
    Counts max_ref;
    std::vector<long> ref_lens;
    for (const auto& r : set.refs[i]) {
      const auto words = split_ws(r);
      ref_lens.push_back(static_cast<long>(words.size()));
      for (const auto& [g, c] : ngram_counts(words)) max_ref[g] = std::max(max_ref[g], c);
    }
    const auto words = split_ws(set.hyps[i]);
    const long testlen = static_cast<long>(words.size());
    // Closest reference length; ties go to the shorter one.
    long reflen = ref_lens[0];
    for (long l : ref_lens)
      if (std::labs(l - testlen) < std::labs(reflen - testlen) ||
          (std::labs(l - testlen) == std::labs(reflen - testlen) && l < reflen))
        reflen = l;
    std::array<double, 4> correct{}, guess{};
    for (int k = 0; k < kMaxN; ++k) guess[k] = static_cast<double>(std::max(0L, testlen - k));
    for (const auto& [g, c] : ngram_counts(words)) {
      const auto it = max_ref.find(g);
      if (it != max_ref.end()) correct[order_of(g) - 1] += std::min(c, it->second);
    }
    result.per_image.push_back(bleu_from(correct, guess, static_cast<double>(testlen), static_cast<double>(reflen)));
    for (int k = 0; k < kMaxN; ++k) {
      total_correct[k] += correct[k];
      total_guess[k] += guess[k];
    }
    result.testlen += testlen;
    result.reflen += reflen;
  }
  result.corpus =
      bleu_from(total_correct, total_guess, static_cast<double>(result.testlen), static_cast<double>(result.reflen));
  return result;
}

ScoreWithImages cider_d(const CaptionSet& set) {
  check(set);
  constexpr double sigma = 6.0;
  const size_t n_images = set.hyps.size();
  std::vector<std::vector<Counts>> ref_counts(n_images);
  std::unordered_map<std::string, double> doc_freq;  // images whose references contain the n-gram
  for (size_t i = 0; i < n_images; ++i) {
    std::unordered_set<std::string> seen;
    for (const auto& r : set.refs[i]) {
      ref_counts[i].push_back(ngram_counts(split_ws(r)));
      for (const auto& kv : ref_counts[i].back()) seen.insert(kv.first);
    }
    for (const auto& g : seen) doc_freq[g] += 1;
  }
  const double ref_len = std::log(static_cast<double>(n_images));

  // tf-idf vectors per order, their norms, and the "length" (the bigram count, as in the reference).
  struct Vec {
    std::array<std::unordered_map<std::string, double>, 4> w;
    std::array<double, 4> norm{};
    double length = 0;
  };
  auto to_vec = [&](const Counts& counts) {
    Vec v;
    for (const auto& [g, tf] : counts) {
      const auto it = doc_freq.find(g);
      const double df = std::log(std::max(1.0, it == doc_freq.end() ? 0.0 : it->second));
      const int n = order_of(g) - 1;
      const double x = tf * (ref_len - df);
      v.w[n][g] = x;
      v.norm[n] += x * x;
      if (n == 1) v.length += tf;
    }
    for (auto& x : v.norm) x = std::sqrt(x);
    return v;
  };
  auto sim = [&](const Vec& h, const Vec& r) {
    const double delta = h.length - r.length;
    std::array<double, 4> val{};
    for (int n = 0; n < kMaxN; ++n) {
      for (const auto& [g, x] : h.w[n]) {
        const auto it = r.w[n].find(g);
        const double y = it == r.w[n].end() ? 0.0 : it->second;
        val[n] += std::min(x, y) * y;  // clipped
      }
      if (h.norm[n] != 0 && r.norm[n] != 0) val[n] /= h.norm[n] * r.norm[n];
      val[n] *= std::exp(-(delta * delta) / (2 * sigma * sigma));
    }
    return val;
  };

  ScoreWithImages out;
  for (size_t i = 0; i < n_images; ++i) {
    const Vec h = to_vec(ngram_counts(split_ws(set.hyps[i])));
    std::array<double, 4> score{};
    for (const auto& rc : ref_counts[i]) {
      const auto s = sim(h, to_vec(rc));
      for (int n = 0; n < kMaxN; ++n) score[n] += s[n];
    }
    double mean = (score[0] + score[1] + score[2] + score[3]) / kMaxN;
    mean /= static_cast<double>(set.refs[i].size());
    out.per_image.push_back(mean * 10.0);
  }
  double sum = 0;
  for (double s : out.per_image) sum += s;
  out.corpus = n_images ? sum / static_cast<double>(n_images) : 0.0;
  return out;
}

ScoreWithImages rouge_l(const CaptionSet& set) {
  check(set);
  constexpr double beta = 1.2;
  auto lcs = [](const std::vector<std::string>& a, const std::vector<std::string>& b) {
    std::vector<int> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
    for (size_t i = 1; i <= a.size(); ++i) {
      for (size_t j = 1; j <= b.size(); ++j)
        cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
      std::swap(prev, cur);
    }
    return prev[b.size()];
  };
  ScoreWithImages out;
  for (size_t i = 0; i < set.hyps.size(); ++i) {
    const auto cand = split_space(set.hyps[i]);
    double p_max = 0, r_max = 0;
    for (const auto& ref : set.refs[i]) {
      const auto toks = split_space(ref);
      const double l = lcs(toks, cand);
      p_max = std::max(p_max, l / static_cast<double>(cand.size()));
      r_max = std::max(r_max, l / static_cast<double>(toks.size()));
    }
    const double score =
        (p_max != 0 && r_max != 0) ? ((1 + beta * beta) * p_max * r_max) / (r_max + beta * beta * p_max) : 0.0;
    out.per_image.push_back(score);
  }
  double sum = 0;
  for (double s : out.per_image) sum += s;
  out.corpus = out.per_image.empty() ? 0.0 : sum / static_cast<double>(out.per_image.size());
  return out;
}

}  // namespace owl2::eval
