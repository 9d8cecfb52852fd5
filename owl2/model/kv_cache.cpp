// KVCache and LayerKV; see kv_cache.h.
#include "owl2/model/kv_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace owl2 {

std::pair<torch::Tensor, torch::Tensor> LayerKV::append(const torch::Tensor& k_BGSK, const torch::Tensor& v_BGSK) {
  const int64_t S = k_BGSK.size(2), need = length + S;
  if (!k_BGCK.defined() || k_BGCK.size(2) < need) {
    auto shape = k_BGSK.sizes().vec();
    shape[2] = std::max({need, capacity_hint, k_BGCK.defined() ? 2 * k_BGCK.size(2) : int64_t{0}});
    auto k_new = torch::zeros(shape, k_BGSK.options()), v_new = torch::zeros(shape, v_BGSK.options());
    if (length > 0) {
      k_new.narrow(2, 0, length).copy_(k_BGCK.narrow(2, 0, length));
      v_new.narrow(2, 0, length).copy_(v_BGCK.narrow(2, 0, length));
    }
    k_BGCK = k_new;
    v_BGCK = v_new;
  }
  TORCH_CHECK(k_BGCK.size(0) == k_BGSK.size(0), "KV cache holds ", k_BGCK.size(0), " rows, new keys have ",
              k_BGSK.size(0));
  k_BGCK.narrow(2, length, S).copy_(k_BGSK);
  v_BGCK.narrow(2, length, S).copy_(v_BGSK);
  return {k_BGCK.narrow(2, 0, need), v_BGCK.narrow(2, 0, need)};
}

KVCache::KVCache(int64_t num_layers, int64_t capacity_hint) : layers_(static_cast<size_t>(num_layers)) {
  for (auto& l : layers_) l.capacity_hint = capacity_hint;
}

torch::Tensor KVCache::attention_mask(const torch::Tensor& valid_BS) const {
  const int64_t B = valid_BS.size(0), S = valid_BS.size(1);
  const auto valid = valid_BS.to(torch::kBool);
  const auto causal_SS = torch::ones({S, S}, valid.options()).tril();
  auto new_BSS = causal_SS.unsqueeze(0) & valid.unsqueeze(1);
  // A query with no valid key so far (past or new) attends to itself only, so no softmax row is empty.
  auto seen_BS = valid.to(torch::kInt64).cumsum(1) > 0;
  if (length_ > 0) seen_BS = seen_BS | valid_BL_.any(1, /*keepdim=*/true);
  new_BSS = new_BSS | (torch::eye(S, valid.options()).unsqueeze(0) & (~seen_BS).unsqueeze(2));
  if (length_ == 0) return new_BSS.unsqueeze(1);
  TORCH_CHECK(valid_BL_.size(0) == B, "KV cache holds ", valid_BL_.size(0), " rows, the new tokens ", B);
  const auto past_BSL = valid_BL_.unsqueeze(1).expand({B, S, length_});
  return torch::cat({past_BSL, new_BSS}, 2).unsqueeze(1);
}

void KVCache::advance(const torch::Tensor& valid_BS) {
  const auto valid = valid_BS.to(torch::kBool);
  valid_BL_ = length_ == 0 ? valid.clone() : torch::cat({valid_BL_, valid}, 1);
  length_ += valid_BS.size(1);
  for (const auto& l : layers_) {
    TORCH_CHECK(l.k_BGCK.defined() && l.length + valid_BS.size(1) == length_,
                "KV cache: every layer must append the new tokens before advance()");
  }
  for (auto& l : layers_) l.length = length_;
}

void KVCache::select_rows(const torch::Tensor& rows_R) {
  if (length_ == 0) return;
  const auto rows = rows_R.to(valid_BL_.device(), torch::kInt64);
  valid_BL_ = valid_BL_.index_select(0, rows);
  for (auto& l : layers_) {
    // Only the filled part is copied; the buffers keep their capacity.
    auto shape = l.k_BGCK.sizes().vec();
    shape[0] = rows.size(0);
    auto k = torch::empty(shape, l.k_BGCK.options()), v = torch::empty(shape, l.v_BGCK.options());
    k.narrow(2, 0, length_).copy_(l.k_BGCK.narrow(2, 0, length_).index_select(0, rows));
    v.narrow(2, 0, length_).copy_(l.v_BGCK.narrow(2, 0, length_).index_select(0, rows));
    l.k_BGCK = k;
    l.v_BGCK = v;
  }
}

}  // namespace owl2
