// Logits processors for generation, with the definitions of HF transformers' processors and warpers, and the
// per-sample random streams that make sampling independent of the batch. Shapes: R rows, V vocabulary.
#pragma once
#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>

namespace owl2 {

// HF RepetitionPenaltyLogitsProcessor: where seen_RV is true (the token occurs in the row's prompt or in its
// generated tokens) a negative logit is multiplied by `penalty` and a positive one divided by it.
torch::Tensor apply_repetition_penalty(const torch::Tensor& logits_RV, const torch::Tensor& seen_RV, double penalty);

// HF TopKLogitsWarper: -inf for every logit below the k-th largest of its row (ties with it are kept).
// top_k <= 0 or >= V keeps everything.
torch::Tensor top_k_filter(const torch::Tensor& logits_RV, int64_t top_k);

// HF TopPLogitsWarper: sort a row ascending, and drop the tokens whose cumulative probability is <= 1 - top_p
// (the most probable token always stays). top_p >= 1 keeps everything.
torch::Tensor top_p_filter(const torch::Tensor& logits_RV, double top_p);

// The seed of sample `index`'s own generator for a run seeded with `seed` (splitmix64 of both), so what a
// sample draws depends on (seed, index) only and not on the other samples of the batch.
uint64_t sample_seed(uint64_t seed, int64_t index);
at::Generator make_generator(uint64_t seed);

// One token drawn from softmax(logits_V) with `gen` (inverse CDF of one uniform double, computed in float64,
// so the draw does not depend on the kernel that a batch size would select). The row is copied to the host and
// `gen` is a CPU generator: the same tokens on every device, at one small device-to-host copy per row.
int64_t sample_token(const torch::Tensor& logits_V, at::Generator& gen);

}  // namespace owl2
