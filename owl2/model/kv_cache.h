// The decoder's key/value cache for incremental decoding (spec §1.4, §6): post-RoPE keys and values of every
// layer plus which cached positions are real tokens, so left padding stays masked on every decode step.
// Shapes: B rows (samples or beams), G key/value heads, C capacity, L cached length, S new tokens, K head dim.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace owl2 {

// One layer's cache. Buffers are allocated on the first append and grow by doubling, so a decode step writes
// one column instead of concatenating the whole history.
struct LayerKV {
  torch::Tensor k_BGCK, v_BGCK;
  int64_t length = 0;
  int64_t capacity_hint = 0;  // positions allocated on the first append

  // Writes k / v [B,G,S,K] at positions [length, length + S) and returns the cached k / v [B,G,length+S,K]
  // (views into the buffers). `length` advances only in KVCache::advance, after every layer has appended.
  std::pair<torch::Tensor, torch::Tensor> append(const torch::Tensor& k_BGSK, const torch::Tensor& v_BGSK);
};

class KVCache {
 public:
  // capacity_hint: positions to allocate up front (prompt + new tokens); the cache grows past it if needed.
  KVCache(int64_t num_layers, int64_t capacity_hint);

  int64_t length() const { return length_; }
  int64_t rows() const { return valid_BL_.defined() ? valid_BL_.size(0) : 0; }
  LayerKV& layer(int64_t i) { return layers_.at(static_cast<size_t>(i)); }
  const torch::Tensor& valid_BL() const { return valid_BL_; }

  // The boolean attention mask [B,1,S,L+S] of S new tokens (valid_BS: which are real): every valid cached key,
  // plus causal and valid among the new ones. A new query with no valid key at or before it attends to itself
  // only (leading padding of a prefill), as causal_padding_mask does.
  torch::Tensor attention_mask(const torch::Tensor& valid_BS) const;
  // Records the S new positions after every layer has appended them.
  void advance(const torch::Tensor& valid_BS);
  // Keeps rows rows_R of the cache in that order (beam reordering, beam expansion, dropping finished samples).
  void select_rows(const torch::Tensor& rows_R);

 private:
  std::vector<LayerKV> layers_;
  torch::Tensor valid_BL_;  // bool
  int64_t length_ = 0;
};

}  // namespace owl2
