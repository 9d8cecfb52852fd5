// Logits processors and per-sample random streams; see sampling.h.
#include "owl2/infer/sampling.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/searchsorted.h>

#include <algorithm>
#include <limits>

namespace owl2 {

torch::Tensor apply_repetition_penalty(const torch::Tensor& logits_RV, const torch::Tensor& seen_RV, double penalty) {
  if (penalty == 1.0) return logits_RV;
  const auto penalized = torch::where(logits_RV < 0, logits_RV * penalty, logits_RV / penalty);
  return torch::where(seen_RV, penalized, logits_RV);
}

torch::Tensor top_k_filter(const torch::Tensor& logits_RV, int64_t top_k) {
  if (top_k <= 0 || top_k >= logits_RV.size(-1)) return logits_RV;
  const auto kth_R1 = std::get<0>(logits_RV.topk(top_k, -1)).narrow(-1, top_k - 1, 1);
  return logits_RV.masked_fill(logits_RV < kth_R1, -std::numeric_limits<double>::infinity());
}

torch::Tensor top_p_filter(const torch::Tensor& logits_RV, double top_p) {
  if (top_p >= 1.0) return logits_RV;
  const auto [sorted_RV, order_RV] = logits_RV.sort(-1, /*descending=*/false);
  const auto cum_RV = sorted_RV.softmax(-1).cumsum(-1);
  auto drop_sorted_RV = cum_RV <= (1.0 - top_p);
  drop_sorted_RV.narrow(-1, logits_RV.size(-1) - 1, 1).fill_(false);  // keep at least the most probable token
  const auto drop_RV = drop_sorted_RV.scatter(-1, order_RV, drop_sorted_RV);
  return logits_RV.masked_fill(drop_RV, -std::numeric_limits<double>::infinity());
}

uint64_t sample_seed(uint64_t seed, int64_t index) {
  // splitmix64 over the seed, then over the index mixed in: neighbouring seeds and indices give unrelated streams.
  auto mix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  return mix(mix(seed) ^ static_cast<uint64_t>(index));
}

at::Generator make_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

int64_t sample_token(const torch::Tensor& logits_V, at::Generator& gen) {
  const auto probs_V = logits_V.to(torch::kCPU, torch::kFloat64).softmax(-1);
  const auto cdf_V = probs_V.cumsum(-1);
  const auto u = torch::rand({1}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  // The first token whose cumulative probability exceeds u * total (zero-probability tokens are never chosen).
  const auto idx = at::searchsorted(cdf_V, u * cdf_V[-1], /*out_int32=*/false, /*right=*/true);
  return std::min<int64_t>(idx.item<int64_t>(), logits_V.size(-1) - 1);
}

}  // namespace owl2
