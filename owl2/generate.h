// Batched greedy decoding with left padding: each sample gets the positions and mask it would get alone,
// so answers do not depend on the batch (the reference's eval needs batch size 1 for that).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "owl2/model.h"

namespace owl2 {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  int64_t eos_id = 2;
  int64_t pad_id = 0;
};

// prompts: token ids with -200 per image; images_NCHW: every prompt's images in order (undefined if none).
// Returns the new tokens of each prompt, without the EOS. Recomputes the whole sequence at each step.
std::vector<std::vector<int64_t>> greedy_generate(MPLUGOwl2ForCausalLM& model,
                                                  const std::vector<std::vector<int64_t>>& prompts,
                                                  const torch::Tensor& images_NCHW, const GenerateOptions& options);

}  // namespace owl2
