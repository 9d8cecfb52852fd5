// greedy_generate; see generate.h.
#include "owl2/generate.h"

#include <torch/nn/functional.h>

#include <algorithm>

namespace owl2 {

std::vector<std::vector<int64_t>> greedy_generate(MPLUGOwl2ForCausalLM& model,
                                                  const std::vector<std::vector<int64_t>>& prompts,
                                                  const torch::Tensor& images_NCHW, const GenerateOptions& options) {
  torch::NoGradGuard no_grad;
  const int64_t B = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int64_t>> out(prompts.size());
  if (B == 0) return out;
  std::vector<std::vector<int64_t>> seqs = prompts;
  std::vector<bool> done(prompts.size(), false);
  const auto device = model->lm_head->weight.device();
  torch::Tensor images = images_NCHW.defined() ? images_NCHW.to(device, model->lm_head->weight.scalar_type())
                                               : images_NCHW;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    size_t T = 0;
    for (const auto& s : seqs) T = std::max(T, s.size());
    auto ids = torch::full({B, static_cast<int64_t>(T)}, options.pad_id, torch::kLong);
    auto mask = torch::zeros({B, static_cast<int64_t>(T)}, torch::kLong);
    auto ids_a = ids.accessor<int64_t, 2>();
    auto mask_a = mask.accessor<int64_t, 2>();
    for (int64_t b = 0; b < B; ++b) {
      const auto& s = seqs[static_cast<size_t>(b)];
      const int64_t off = static_cast<int64_t>(T - s.size());  // left padding
      for (size_t t = 0; t < s.size(); ++t) {
        ids_a[b][off + static_cast<int64_t>(t)] = s[t];
        mask_a[b][off + static_cast<int64_t>(t)] = 1;
      }
    }
    ModelInputs in;
    in.input_ids = ids.to(device);
    in.attention_mask = mask.to(device);
    in.images = images;
    auto logits = model->forward(in).logits;                          // [B,S,V]
    auto next = logits.select(1, logits.size(1) - 1).argmax(-1).cpu();  // last position is real for every row
    auto next_a = next.accessor<int64_t, 1>();
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t tok = next_a[b];
      if (!done[static_cast<size_t>(b)]) {
        if (tok == options.eos_id) {
          done[static_cast<size_t>(b)] = true;
        } else {
          out[static_cast<size_t>(b)].push_back(tok);
        }
      }
      seqs[static_cast<size_t>(b)].push_back(tok);
      all_done = all_done && done[static_cast<size_t>(b)];
    }
    if (all_done) break;
  }
  return out;
}

}  // namespace owl2
