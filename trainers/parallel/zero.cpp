// ZeRO stage 1/2 layout, gradient reduction, sharded AdamW and resharding of its state; see zero.h.
#include "trainers/parallel/zero.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <stdexcept>

#include "trainers/checkpoint.h"

namespace owl2 {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::string zero_shard_group(int64_t rank) { return fmt::format("optimizer.rank-{:05d}", rank); }

ZeroLayout::ZeroLayout(const std::vector<int64_t>& numels, int64_t element_size, int64_t world_, int64_t rank_,
                       int64_t bucket_bytes, const std::vector<int64_t>& block_of)
    : world(world_), rank(rank_) {
  const int64_t n = static_cast<int64_t>(numels.size());
  auto block = [&](int64_t k) { return block_of.empty() ? int64_t{-1} : block_of[k]; };
  bucket_of.assign(numels.size(), 0);
  std::vector<int64_t> used;  // real elements per bucket
  auto add = [&](size_t b, int64_t k) {
    buckets[b].params.push_back(k);
    buckets[b].offsets.push_back(used[b]);
    used[b] += numels[k];
    bucket_of[k] = static_cast<int64_t>(b);
  };
  int64_t bytes = 0;
  for (int64_t k = n - 1; k >= 0; --k) {
    if (block(k) >= 0) continue;
    const int64_t nbytes = numels[k] * element_size;
    if (buckets.empty() || bytes + nbytes > bucket_bytes) {
      buckets.emplace_back();
      used.push_back(0);
      bytes = 0;
    }
    add(buckets.size() - 1, k);
    bytes += nbytes;
  }
  plain_buckets = static_cast<int64_t>(buckets.size());
  for (int64_t k = 0; k < n; ++k) {  // one bucket per block, parameters in registration order
    if (block(k) < 0) continue;
    const auto b = static_cast<size_t>(plain_buckets + block(k));
    while (buckets.size() <= b) {
      buckets.emplace_back();
      used.push_back(0);
    }
    add(b, k);
  }
  for (size_t i = 0; i < buckets.size(); ++i) {
    auto& b = buckets[i];
    b.padded_numel = (used[i] + world - 1) / world * world;
    const int64_t s = slice(b), lo = rank * s, hi = lo + s;
    b.shard_offset = shard_numel;
    for (size_t j = 0; j < b.params.size(); ++j) {
      const int64_t k = b.params[j], begin = std::max(b.offsets[j], lo), end = std::min(b.offsets[j] + numels[k], hi);
      if (begin < end) segments.push_back({k, begin - b.offsets[j], end - begin, shard_numel + begin - lo});
    }
    shard_numel += s;
  }
}

ZeroOptimizer::ZeroOptimizer(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                             const OptimConfig& optim, int stage, int64_t bucket_bytes,
                             const std::vector<std::vector<at::Tensor>>& blocks,
                             std::optional<ShardedMasters> masters, ShardPlacement placement)
    : frozen_layout_({}, 1, 1, 0, 1),
      masters_(masters),
      comm_(std::move(comm)),
      stage_(stage),
      optim_(optim),
      layout_({}, 1, 1, 0, 1) {
  if (stage_ < 1 || stage_ > 3) throw std::invalid_argument(fmt::format("ZeRO stage must be 1, 2 or 3, got {}", stage_));
  if (stage_ != 3 && !blocks.empty()) throw std::invalid_argument("ZeRO: parameter blocks are sharded at stage 3 only");
  if (comm_ && comm_->world_size() == 1) comm_.reset();
  at::NoGradGuard no_grad;
  const auto& device = placement.device;
  if (stage_ != 3 && (device || !placement.pending.empty()))
    throw std::invalid_argument(fmt::format("ZeRO {}: only stage 3 places its shards on another device or takes "
                                            "parameters in after its construction", stage_));
  std::set<const c10::TensorImpl*> wanted;
  for (const auto& t : placement.pending) wanted.insert(t.unsafeGetTensorImpl());
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (wanted.count(item.value().unsafeGetTensorImpl())) pending_[item.value().unsafeGetTensorImpl()] = item.key();
  }
  if (pending_.size() != wanted.size())
    throw std::invalid_argument("ZeRO 3: a pending tensor is not a parameter of the model");
  if (device) broadcast_device_ = *device;
  if (comm_) {
    for (auto& item : model.named_parameters(/*recurse=*/true)) {
      at::Tensor p = item.value();
      if (!pending(p)) broadcast_param(p, item.key());
    }
  }
  std::vector<int64_t> numels;
  for (const auto& g : groups) {
    for (size_t i = 0; i < g.params.size(); ++i) {
      const auto& p = g.params[i];
      if (!params_.empty() && p.scalar_type() != params_[0].second.scalar_type()) {
        throw std::invalid_argument(fmt::format("ZeRO needs one dtype for all trainable parameters: '{}' is {}, '{}' is {}",
                                                g.names[i], c10::toString(p.scalar_type()), params_[0].first,
                                                c10::toString(params_[0].second.scalar_type())));
      }
      if (!p.is_contiguous()) throw std::invalid_argument(fmt::format("ZeRO: parameter '{}' is not contiguous", g.names[i]));
      params_.emplace_back(g.names[i], p);
      lr_scale_.push_back(g.lr_scale);
      weight_decay_.push_back(g.weight_decay);
      numels.push_back(p.numel());
      sizes_.push_back(p.sizes().vec());
    }
  }
  if (params_.empty()) throw std::invalid_argument("ZeRO: no trainable parameter");
  if (masters_ && params_[0].second.scalar_type() != at::kFloat) {
    throw std::invalid_argument(fmt::format("ZeRO with fp32 masters: the trainable parameters must arrive in float32, "
                                            "'{}' is {}", params_[0].first,
                                            c10::toString(params_[0].second.scalar_type())));
  }
  // Stage 3 blocks: their trainable parameters, by tensor identity, and their frozen ones (sharded apart, below).
  std::map<const c10::TensorImpl*, std::string> name_of;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) name_of[item.value().unsafeGetTensorImpl()] = item.key();
  std::vector<int64_t> frozen_numels, frozen_block;
  block_of_.assign(params_.size(), -1);
  for (const auto& block : blocks) {
    const auto b = static_cast<int64_t>(block_params_.size());
    std::vector<int64_t> ks, fs;
    for (const auto& t : block) {
      bool trainable = false;
      for (size_t k = 0; k < params_.size(); ++k) {
        if (params_[k].second.unsafeGetTensorImpl() != t.unsafeGetTensorImpl()) continue;
        if (block_of_[k] >= 0) {
          throw std::invalid_argument(fmt::format("ZeRO 3: parameter '{}' is in two blocks", params_[k].first));
        }
        block_of_[k] = b;
        ks.push_back(static_cast<int64_t>(k));
        trainable = true;
      }
      if (trainable) continue;
      const auto it = name_of.find(t.unsafeGetTensorImpl());
      const std::string name = it == name_of.end() ? fmt::format("block {} parameter {}", b, frozen_.size()) : it->second;
      if (!t.is_contiguous()) throw std::invalid_argument(fmt::format("ZeRO 3: frozen parameter '{}' is not contiguous", name));
      fs.push_back(static_cast<int64_t>(frozen_.size()));
      frozen_.emplace_back(name, t);
      frozen_sizes_.push_back(t.sizes().vec());
      frozen_numels.push_back(t.numel());
      frozen_block.push_back(b);
    }
    std::sort(ks.begin(), ks.end());
    block_params_.push_back(ks);  // may be empty (a frozen block)
    block_frozen_.push_back(fs);
  }
  if (stage_ == 3) {
    // The frozen parameters outside blocks (a frozen decoder's embeddings and head, LoRA's base outside the blocks):
    // sharded too, in a bucket after the blocks' (the root's frozen part), gathered and released with the root.
    std::set<const c10::TensorImpl*> placed;
    for (const auto& block : blocks)
      for (const auto& t : block) placed.insert(t.unsafeGetTensorImpl());
    for (const auto& p : params_) placed.insert(p.second.unsafeGetTensorImpl());
    const auto root = static_cast<int64_t>(blocks.size());
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      const auto& t = item.value();
      if (!placed.insert(t.unsafeGetTensorImpl()).second) continue;
      if (!t.is_contiguous())
        throw std::invalid_argument(fmt::format("ZeRO 3: frozen parameter '{}' is not contiguous", item.key()));
      root_frozen_.push_back(static_cast<int64_t>(frozen_.size()));
      frozen_.emplace_back(item.key(), t);
      frozen_sizes_.push_back(t.sizes().vec());
      frozen_numels.push_back(t.numel());
      frozen_block.push_back(root);
    }
  }
  block_used_.assign(params_.size(), 0);
  const auto& p0 = params_[0].second;
  shard_opts_ = p0.options().device(device.value_or(p0.device()));  // float32 with masters (checked above)
  compute_dtype_ = masters_ ? masters_->compute : p0.scalar_type();
  reduce_dtype_ = masters_ ? masters_->reduce : p0.scalar_type();
  // Buckets are sized by the gradients they carry.
  layout_ = ZeroLayout(numels, static_cast<int64_t>(c10::elementSize(reduce_dtype_)), comm_ ? comm_->world_size() : 1,
                       comm_ ? comm_->rank() : 0, bucket_bytes, block_of_);
  flat_.resize(layout_.buckets.size());
  recv_.resize(layout_.buckets.size());
  ready_.assign(layout_.buckets.size(), 0);
  work_.resize(layout_.buckets.size());
  seen_.assign(params_.size(), 0);
  used_.assign(params_.size(), 0);
  grad_shard_ = at::zeros({layout_.shard_numel}, shard_opts_);
  exp_avg_ = at::zeros({layout_.shard_numel}, shard_opts_);
  exp_avg_sq_ = at::zeros({layout_.shard_numel}, shard_opts_);
  steps_.assign(layout_.segments.size(), 0);
  if (masters_ || !block_params_.empty()) {
    // The parameter shard: this rank's slice of every block (stage 3) and, with masters, of every parameter,
    // taken from the (broadcast) parameters before any of them is cast or freed.
    param_shard_ = at::zeros({layout_.shard_numel}, shard_opts_);
    for (const auto& s : layout_.segments) {
      if (!in_shard(s.param) || pending(params_[s.param].second)) continue;
      param_shard_.narrow(0, s.shard_offset, s.length)
          .copy_(params_[s.param].second.detach().reshape({-1}).narrow(0, s.param_offset, s.length));
    }
    if (masters_) {  // the model's copies in the compute dtype (the same tensor objects: hooks come after)
      for (size_t k = 0; k < params_.size(); ++k) {
        auto& p = params_[k].second;
        if (block_of_[k] < 0 && !pending(p)) p.set_data(p.detach().to(compute_dtype_));
      }
    }
  }
  // Frozen block parameters: this rank's slice of each block's frozen bucket, in the compute dtype (bf16 cast them
  // already; pending ones are cast as absorb() takes them in), never reduced or stepped.
  if (!frozen_.empty()) {
    const auto dtype = compute_dtype_;  // pending ones are converted as they arrive
    for (const auto& [name, t] : frozen_) {
      if (t.scalar_type() != compute_dtype_ && !pending(t)) {
        throw std::invalid_argument(fmt::format("ZeRO 3: frozen parameter '{}' is {}, the blocks compute in {}", name,
                                                c10::toString(t.scalar_type()), c10::toString(compute_dtype_)));
      }
    }
    frozen_layout_ = ZeroLayout(frozen_numels, static_cast<int64_t>(c10::elementSize(dtype)), layout_.world,
                                layout_.rank, /*bucket_bytes=*/1, frozen_block);
    frozen_shard_ = at::zeros({frozen_layout_.shard_numel}, shard_opts_.dtype(dtype));
    for (const auto& s : frozen_layout_.segments) {
      if (pending(frozen_[s.param].second)) continue;
      frozen_shard_.narrow(0, s.shard_offset, s.length)
          .copy_(frozen_[s.param].second.detach().reshape({-1}).narrow(0, s.param_offset, s.length));
    }
  }
  for (int64_t i = 0; i < block_count(); ++i) release_block(i);
  root_gathered_ = true;  // the model holds the parameters outside blocks in full until...
  release_root();         // ...stage 3 keeps only their slices between steps
  if (stage_ == 3) {  // every parameter is now an empty tensor on the shards' device (the host copies are freed)
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      if (pending(item.value())) continue;
      if (item.value().numel() != 0 || item.value().device() != shard_opts_.device())
        throw std::logic_error(fmt::format("ZeRO 3: parameter '{}' was left outside the shards", item.key()));
    }
  }
  if (comm_) {
    for (size_t k = 0; k < params_.size(); ++k) {
      if (block_of_[k] >= 0) continue;  // reduced by reduce_block(), not by the bucket hooks
      params_[k].second.register_hook([this, k](const at::Tensor& grad) {
        on_grad(k, grad);
        return at::Tensor();
      });
    }
  }
}

at::Tensor ZeroOptimizer::slot(size_t k) {
  const int64_t b = layout_.bucket_of[k];
  if (!flat_[b].defined()) flat_[b] = at::zeros({layout_.buckets[b].padded_numel}, shard_opts_.dtype(reduce_dtype_));
  const auto& bucket = layout_.buckets[b];
  const auto j = std::find(bucket.params.begin(), bucket.params.end(), static_cast<int64_t>(k)) - bucket.params.begin();
  const auto& sizes = sizes_[k];
  const int64_t numel = std::accumulate(sizes.begin(), sizes.end(), int64_t{1}, std::multiplies<int64_t>());
  return flat_[b].narrow(0, bucket.offsets[j], numel).view(sizes);
}

void ZeroOptimizer::broadcast_param(at::Tensor& p, const std::string& name) {
  if (broadcast_device_ && p.device() != *broadcast_device_) {  // a host parameter, a device collective (NCCL)
    at::Tensor on_device = p.to(*broadcast_device_);
    comm_->broadcast(on_device, 0, "broadcast " + name);
    p.copy_(on_device);
  } else {
    comm_->broadcast(p, 0, "broadcast " + name);
  }
}

void ZeroOptimizer::absorb(const at::Tensor& param) {
  const auto it = pending_.find(param.unsafeGetTensorImpl());
  if (it == pending_.end())
    throw std::logic_error("ZeRO 3: absorb() of a parameter that is not pending (or was absorbed already)");
  at::NoGradGuard no_grad;
  at::Tensor p = param;
  if (comm_) broadcast_param(p, it->second);
  const auto flat = p.detach().reshape({-1});
  // This rank's segments of p, if `list` (laid out by `layout`) holds it, into `shard` (converting the dtype).
  const auto take = [&](const NamedTensors& list, const ZeroLayout& layout, at::Tensor& shard) {
    for (size_t k = 0; k < list.size(); ++k) {
      if (list[k].second.unsafeGetTensorImpl() != p.unsafeGetTensorImpl()) continue;
      for (const auto& s : layout.segments) {
        if (s.param == static_cast<int64_t>(k))
          shard.narrow(0, s.shard_offset, s.length).copy_(flat.narrow(0, s.param_offset, s.length));
      }
      return true;
    }
    return false;
  };
  if (!take(params_, layout_, param_shard_) && !take(frozen_, frozen_layout_, frozen_shard_))
    throw std::logic_error("ZeRO 3: pending parameter '" + it->second + "' is neither trained nor frozen");
  p.set_data(at::empty({0}, shard_opts_.dtype(compute_dtype_)));  // frees the host tensor
  pending_.erase(it);
}

void ZeroOptimizer::finish_absorbing() const {
  if (pending_.empty()) return;
  std::vector<std::string> names;
  for (const auto& [impl, name] : pending_) names.push_back(name);
  std::sort(names.begin(), names.end());
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw std::runtime_error(fmt::format("ZeRO 3: {} parameter(s) never received their values: {}", names.size(), list));
}

bool ZeroOptimizer::in_shard(int64_t k) const { return masters_ || stage_ == 3 || block_of_[k] >= 0; }

at::Tensor ZeroOptimizer::master(const ZeroLayout::Segment& s) {
  if (in_shard(s.param)) return param_shard_.narrow(0, s.shard_offset, s.length);
  return params_[s.param].second.detach().view({-1}).narrow(0, s.param_offset, s.length);
}

void ZeroOptimizer::copy_own_slices_to_shard(int64_t i) {
  at::NoGradGuard no_grad;
  const int64_t frozen_bucket_index = i >= 0 ? i : block_count();  // the root's frozen part: after the blocks'
  for (const auto& s : frozen_layout_.segments) {
    if (frozen_layout_.bucket_of[s.param] != frozen_bucket_index) continue;
    frozen_shard_.narrow(0, s.shard_offset, s.length)
        .copy_(frozen_[s.param].second.detach().reshape({-1}).narrow(0, s.param_offset, s.length));
  }
  for (const auto& s : layout_.segments) {
    // Block i's bucket; i < 0: the parameters outside blocks (the root, stage 3).
    if (i >= 0 ? layout_.bucket_of[s.param] != layout_.plain_buckets + i : block_of_[s.param] >= 0) continue;
    auto shard = param_shard_.narrow(0, s.shard_offset, s.length);
    const auto model = params_[s.param].second.detach().reshape({-1}).narrow(0, s.param_offset, s.length);
    if (masters_) {  // keep the masters the model still holds the rounding of; take the values written since
      shard.copy_(at::where(shard.to(compute_dtype_) == model, shard, model.to(shard.scalar_type())));
    } else {
      shard.copy_(model);
    }
  }
}

const ZeroLayout::Bucket* ZeroOptimizer::frozen_bucket(int64_t i) const {
  if (frozen_.empty() || i >= static_cast<int64_t>(frozen_layout_.buckets.size())) return nullptr;
  const auto& b = frozen_layout_.buckets[static_cast<size_t>(i)];
  return b.padded_numel > 0 ? &b : nullptr;
}

bool ZeroOptimizer::block_sharded(int64_t i) const { return !block_params_.at(i).empty() || frozen_bucket(i); }

int64_t ZeroOptimizer::block_gathered_numel(int64_t i) const {
  const auto* f = frozen_bucket(i);
  return layout_.buckets[static_cast<size_t>(layout_.plain_buckets + i)].padded_numel + (f ? f->padded_numel : 0);
}

namespace {

// Points each parameter of `bucket` at its place in the gathered flat buffer.
void point(const ZeroLayout::Bucket& bucket, const at::Tensor& flat, NamedTensors& params,
           const std::vector<std::vector<int64_t>>& sizes) {
  for (size_t j = 0; j < bucket.params.size(); ++j) {
    const auto k = static_cast<size_t>(bucket.params[j]);
    const int64_t numel = std::accumulate(sizes[k].begin(), sizes[k].end(), int64_t{1}, std::multiplies<int64_t>());
    params[k].second.set_data(flat.narrow(0, bucket.offsets[j], numel).view(sizes[k]));
  }
}

}  // namespace

ZeroOptimizer::Gathering ZeroOptimizer::start_gather(int64_t i) {
  at::NoGradGuard no_grad;
  Gathering g;
  g.block = i;
  auto gather = [&](const ZeroLayout& layout, const ZeroLayout::Bucket& bucket, const at::Tensor& shard, at::Tensor& flat,
                    c10::intrusive_ptr<c10d::Work>& work) {
    auto own = shard.narrow(0, bucket.shard_offset, layout.slice(bucket));
    // A copy in the compute dtype (masters: float32 -> bfloat16, round to nearest even).
    auto send = own.to(compute_dtype_, /*non_blocking=*/false, /*copy=*/true);
    if (!comm_) {
      flat = send;
      return;
    }
    flat = at::empty({bucket.padded_numel}, send.options());
    work = comm_->allgather_async(flat, send);
  };
  if (!block_params_.at(i).empty()) {
    gather(layout_, layout_.buckets[static_cast<size_t>(layout_.plain_buckets + i)], param_shard_, g.flat, g.work);
  }
  if (const auto* f = frozen_bucket(i)) gather(frozen_layout_, *f, frozen_shard_, g.frozen, g.frozen_work);
  gathered_ += block_gathered_numel(i);
  peak_gathered_ = std::max(peak_gathered_, gathered_);
  return g;
}

void ZeroOptimizer::prefetch_block(int64_t i) {
  if (all_gathered_ || i < 0 || i >= block_count() || !block_sharded(i)) return;
  if (block_gathered_.size() != block_params_.size()) block_gathered_.assign(block_params_.size(), 0);
  if (block_gathered_[static_cast<size_t>(i)] || prefetch_.block == i) return;
  drop_prefetch();
  prefetch_ = start_gather(i);
}

void ZeroOptimizer::drop_prefetch() {
  if (prefetch_.block < 0) return;
  const auto what = fmt::format("allgather parameters of block {} (prefetch)", prefetch_.block);
  if (prefetch_.work) comm_->wait(prefetch_.work, what);
  if (prefetch_.frozen_work) comm_->wait(prefetch_.frozen_work, what);
  gathered_ -= block_gathered_numel(prefetch_.block);
  prefetch_ = {};
}

void ZeroOptimizer::gather_block(int64_t i) {
  if (all_gathered_ || !block_sharded(i)) return;
  if (block_gathered_.size() != block_params_.size()) block_gathered_.assign(block_params_.size(), 0);
  if (block_gathered_[static_cast<size_t>(i)]) return;
  at::NoGradGuard no_grad;
  Gathering g;
  if (prefetch_.block == i) {
    g = std::move(prefetch_);
    prefetch_ = {};
  } else {
    drop_prefetch();
    g = start_gather(i);
  }
  if (g.work || g.frozen_work) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto what = fmt::format("allgather parameters of block {}", i);
    if (g.work) comm_->wait(g.work, what);
    if (g.frozen_work) comm_->wait(g.frozen_work, what);
    gather_s_ += seconds_since(t0);
  }
  if (g.flat.defined()) point(layout_.buckets[static_cast<size_t>(layout_.plain_buckets + i)], g.flat, params_, sizes_);
  if (g.frozen.defined()) point(*frozen_bucket(i), g.frozen, frozen_, frozen_sizes_);
  block_gathered_[static_cast<size_t>(i)] = 1;
}

void ZeroOptimizer::release_block(int64_t i) {
  if (all_gathered_) return;
  const auto empty = at::empty({0}, shard_opts_.dtype(compute_dtype_));
  for (int64_t k : block_params_.at(i))
    if (!pending(params_[k].second)) params_[k].second.set_data(empty);
  for (int64_t k : block_frozen_.at(i))
    if (!pending(frozen_[k].second)) frozen_[k].second.set_data(empty);
  if (static_cast<size_t>(i) < block_gathered_.size() && block_gathered_[static_cast<size_t>(i)]) {
    block_gathered_[static_cast<size_t>(i)] = 0;
    gathered_ -= block_gathered_numel(i);
  }
}

void ZeroOptimizer::reduce_block(int64_t i) {
  if (all_gathered_) throw std::logic_error("ZeRO 3: backward through a block while all blocks are gathered");
  if (block_params_.at(i).empty()) return;
  at::NoGradGuard no_grad;
  const auto b = static_cast<size_t>(layout_.plain_buckets + i);
  const auto& bucket = layout_.buckets[b];
  auto flat = at::zeros({bucket.padded_numel}, shard_opts_.dtype(reduce_dtype_));
  for (size_t j = 0; j < bucket.params.size(); ++j) {
    auto& p = params_[bucket.params[j]].second;
    if (!p.grad().defined()) continue;
    flat.narrow(0, bucket.offsets[j], p.numel()).copy_(p.grad().reshape({-1}));
    block_used_[bucket.params[j]] = 1;
    p.mutable_grad().reset();
  }
  const int64_t s = layout_.slice(bucket);
  auto own = grad_shard_.narrow(0, bucket.shard_offset, s);
  if (comm_) {
    auto out = at::empty({s}, flat.options());
    const auto t0 = std::chrono::steady_clock::now();
    auto work = comm_->reduce_scatter_sum_async(out, flat);
    comm_->wait(work, fmt::format("reduce-scatter gradients of block {}", i));
    reduce_wait_s_ += seconds_since(t0);
    own.add_(out);  // accumulates over micro-batches in the shard's dtype (float32 with masters)
  } else {
    own.add_(flat);
  }
}

void ZeroOptimizer::gather_all() {
  drop_prefetch();
  gather_root();
  for (int64_t i = 0; i < block_count(); ++i) gather_block(i);
  all_gathered_ = true;
}

void ZeroOptimizer::gather_root() {
  if (stage_ != 3 || root_gathered_) return;
  at::NoGradGuard no_grad;
  for (size_t k = 0; k < params_.size(); ++k) {
    if (block_of_[k] < 0) params_[k].second.set_data(at::empty(sizes_[k], shard_opts_.dtype(compute_dtype_)));
  }
  root_gathered_ = true;
  refresh_plain_parameters();
  if (const auto* f = frozen_bucket(block_count())) {  // the frozen parameters outside blocks
    auto own = frozen_shard_.narrow(0, f->shard_offset, frozen_layout_.slice(*f)).clone();
    at::Tensor flat = own;
    if (comm_) {
      flat = at::empty({f->padded_numel}, own.options());
      const auto t0 = std::chrono::steady_clock::now();
      comm_->wait(comm_->allgather_async(flat, own), "allgather the frozen parameters outside blocks");
      gather_s_ += seconds_since(t0);
    }
    point(*f, flat, frozen_, frozen_sizes_);
  }
}

void ZeroOptimizer::release_root() {
  if (stage_ != 3 || !root_gathered_ || all_gathered_) return;
  const auto empty = at::empty({0}, shard_opts_.dtype(compute_dtype_));
  for (size_t k = 0; k < params_.size(); ++k) {
    if (block_of_[k] < 0 && !pending(params_[k].second)) params_[k].second.set_data(empty);
  }
  for (int64_t k : root_frozen_)
    if (!pending(frozen_[k].second)) frozen_[k].second.set_data(empty);
  root_gathered_ = false;
}

void ZeroOptimizer::release_all() {
  drop_prefetch();
  if (!all_gathered_) return;
  all_gathered_ = false;
  if (stage_ == 3) {  // the root: values loaded meanwhile into its slices, then released until the next step
    copy_own_slices_to_shard(-1);
    release_root();
  }
  for (int64_t i = 0; i < block_count(); ++i) {
    if (!block_sharded(i)) continue;
    copy_own_slices_to_shard(i);
    release_block(i);
  }
}

void ZeroOptimizer::zero_grad() {
  drop_prefetch();
  gather_root();  // stage 3: the parameters outside blocks, in full for this step's forward and backward
  grad_shard_.zero_();
  std::fill(block_used_.begin(), block_used_.end(), 0);
  reduce_wait_s_ = 0;
  gather_s_ = 0;
}

void ZeroOptimizer::arm() {
  armed_ = true;
  next_launch_ = 0;
  std::fill(seen_.begin(), seen_.end(), 0);
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& w : work_) w.reset();
}

void ZeroOptimizer::on_grad(size_t k, const at::Tensor& grad) {
  if (!armed_) return;
  at::NoGradGuard no_grad;
  auto s = slot(k);
  if (seen_[k]) {
    s.add_(grad);  // a parameter used twice in the graph gets two hook calls
    return;
  }
  const at::Tensor& acc = params_[k].second.grad();
  if (acc.defined() && masters_) {  // the bf16 gradients summed in the bucket's dtype
    s.copy_(acc);
    s.add_(grad);
  } else if (acc.defined()) {
    at::add_out(s, acc, grad);
  } else {
    s.copy_(grad);
  }
  seen_[k] = 1;
  const int64_t b = layout_.bucket_of[k];
  if (++ready_[b] == static_cast<int64_t>(layout_.buckets[b].params.size())) launch_ready_in_order();
}

void ZeroOptimizer::launch(size_t b) {
  const auto& bucket = layout_.buckets[b];
  if (stage_ == 1) {
    work_[b] = comm_->allreduce_sum_async(flat_[b]);
  } else {
    auto out = grad_shard_.narrow(0, bucket.shard_offset, layout_.slice(bucket));
    if (reduce_dtype_ != grad_shard_.scalar_type()) {  // summed into the shard in finish()
      recv_[b] = at::empty({layout_.slice(bucket)}, flat_[b].options());
      out = recv_[b];
    }
    work_[b] = comm_->reduce_scatter_sum_async(out, flat_[b]);
  }
}

void ZeroOptimizer::launch_ready_in_order() {
  while (next_launch_ < static_cast<size_t>(layout_.plain_buckets) &&
         ready_[next_launch_] == static_cast<int64_t>(layout_.buckets[next_launch_].params.size())) {
    launch(next_launch_++);
  }
}

at::Tensor ZeroOptimizer::finish() {
  if (!armed_) throw std::logic_error("ZeroOptimizer::finish() without arm()");
  armed_ = false;
  drop_prefetch();
  at::NoGradGuard no_grad;
  // Gradients the hooks did not see (all of them on one rank; unused parameters; those accumulated on
  // earlier micro-batches only) go in now; unused ones contribute zeros, as in DataParallel::finish.
  for (size_t k = 0; k < params_.size(); ++k) {
    if (block_of_[k] >= 0) {  // already in the shard gradient (reduce_block)
      used_[k] = block_used_[k];
      continue;
    }
    const at::Tensor& g = params_[k].second.grad();
    used_[k] = seen_[k] || g.defined();
    if (seen_[k]) continue;
    auto s = slot(k);
    if (g.defined()) {
      s.copy_(g);
    } else {
      s.zero_();
    }
    seen_[k] = 1;
    ++ready_[layout_.bucket_of[k]];
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (comm_) {
    launch_ready_in_order();
    auto used = at::tensor(std::vector<int32_t>(used_.begin(), used_.end()), at::kInt).to(comm_->device());
    comm_->allreduce_sum(used, "allreduce used-parameter flags");  // NCCL reduces device tensors only
    for (size_t b = 0; b < static_cast<size_t>(layout_.plain_buckets); ++b) {
      comm_->wait(work_[b], fmt::format("{} gradient bucket {}", stage_ == 1 ? "allreduce" : "reduce-scatter", b));
    }
    used = used.cpu();  // which gradients exist is decided on the host: one read per step
    auto acc = used.accessor<int32_t, 1>();
    for (size_t k = 0; k < used_.size(); ++k) used_[k] = acc[static_cast<int64_t>(k)] > 0;
  }
  for (size_t b = 0; b < static_cast<size_t>(layout_.plain_buckets); ++b) {
    const auto& bucket = layout_.buckets[b];
    const int64_t s = layout_.slice(bucket);
    if (!comm_ || stage_ == 1) {  // keep the own slice of the (summed) full bucket
      grad_shard_.narrow(0, bucket.shard_offset, s).copy_(flat_[b].narrow(0, layout_.rank * s, s));
    } else if (recv_[b].defined()) {  // a bf16 reduce-scatter: accumulated in float32
      grad_shard_.narrow(0, bucket.shard_offset, s).add_(recv_[b]);
      recv_[b].reset();
    }
  }
  reduce_wait_s_ += seconds_since(t0);
  if (stage_ >= 2) {  // nothing full-size outlives the reduction
    for (auto& f : flat_) f.reset();
  }
  // The model's gradients are in the buckets and the shard now: no second full-size copy outlives the step.
  for (auto& [name, p] : params_) p.mutable_grad().reset();
  // Global norm: squares summed over the own shard (padding and unused parameters are zeros), then over ranks;
  // left on the device (the caller reads it together with the loss).
  auto sq = grad_shard_.to(at::kDouble).square().sum().reshape({1});
  if (comm_) comm_->allreduce_sum(sq, "allreduce gradient norm");
  return sq.sqrt_();
}

void ZeroOptimizer::step(double lr, double max_norm, double grad_norm) {
  at::NoGradGuard no_grad;
  // torch::nn::utils::clip_grad_norm_: coefficient max_norm / (norm + 1e-6), clamped to at most 1.
  grad_shard_.mul_(std::min(max_norm / (grad_norm + 1e-6), 1.0));
  const double beta1 = optim_.betas[0], beta2 = optim_.betas[1];
  for (size_t i = 0; i < layout_.segments.size(); ++i) {
    const auto& s = layout_.segments[i];
    if (!used_[s.param]) continue;  // torch::optim::AdamW skips parameters without a gradient
    auto p = master(s);
    auto g = grad_shard_.narrow(0, s.shard_offset, s.length);
    auto m = exp_avg_.narrow(0, s.shard_offset, s.length);
    auto v = exp_avg_sq_.narrow(0, s.shard_offset, s.length);
    const double lr_k = lr * lr_scale_[s.param], wd = weight_decay_[s.param];
    // torch::optim::AdamW::step, element for element.
    if (wd != 0) p.mul_(1 - lr_k * wd);
    const int64_t step = ++steps_[i];
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2 = 1 - std::pow(beta2, step);
    m.mul_(beta1).add_(g, 1 - beta1);
    v.mul_(beta2).addcmul_(g, g, 1 - beta2);
    auto denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(optim_.eps);
    p.addcdiv_(m, denom, -lr_k / bias_correction1);
  }
  grad_shard_.zero_();
  if (stage_ == 3) {
    release_root();  // the next step gathers the updated slices
  } else {
    refresh_plain_parameters();
  }
}

void ZeroOptimizer::refresh_plain_parameters() {
  if (!comm_ && !masters_ && stage_ != 3) return;  // one rank, no masters: AdamW updated the parameters themselves
  // Every rank updated its slices: all-gather each bucket in the compute dtype (masters: rounded to nearest
  // even) and copy it back into the parameters (stage 3 blocks: not now, the next forward gathers them).
  const auto t0 = std::chrono::steady_clock::now();
  const auto opts = shard_opts_.dtype(compute_dtype_);
  const auto plain = static_cast<size_t>(layout_.plain_buckets);
  std::vector<at::Tensor> send(plain), gathered(plain);
  for (size_t b = 0; b < plain; ++b) {
    send[b] = at::zeros({layout_.slice(layout_.buckets[b])}, opts);
    if (!comm_) {
      gathered[b] = send[b];  // one rank: its slice is the whole bucket
    } else if (masters_) {
      gathered[b] = at::empty({layout_.buckets[b].padded_numel}, opts);
    } else {  // reuses the gradient buffer (stage 1 keeps it: its padding is the gathered zero padding)
      if (!flat_[b].defined()) flat_[b] = at::empty({layout_.buckets[b].padded_numel}, opts);
      gathered[b] = flat_[b];
    }
  }
  for (const auto& s : layout_.segments) {
    if (block_of_[s.param] >= 0) continue;
    const auto& bucket = layout_.buckets[layout_.bucket_of[s.param]];
    send[layout_.bucket_of[s.param]].narrow(0, s.shard_offset - bucket.shard_offset, s.length).copy_(master(s));
  }
  if (comm_) {
    for (size_t b = 0; b < plain; ++b) work_[b] = comm_->allgather_async(gathered[b], send[b]);
  }
  for (size_t b = 0; b < plain; ++b) {
    if (comm_) comm_->wait(work_[b], fmt::format("allgather parameter bucket {}", b));
    const auto& bucket = layout_.buckets[b];
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      auto& p = params_[bucket.params[j]].second;
      p.detach().view({-1}).copy_(gathered[b].narrow(0, bucket.offsets[j], p.numel()));
    }
    if (comm_ && !masters_ && stage_ >= 2) flat_[b].reset();
  }
  gather_s_ += seconds_since(t0);
}

NamedTensors ZeroOptimizer::gather_masters(int64_t root) {
  if (!masters_) throw std::logic_error("ZeroOptimizer::gather_masters() without fp32 masters");
  at::NoGradGuard no_grad;
  const bool keep = root < 0 || root == layout_.rank;
  std::vector<at::Tensor> full(params_.size());
  for (size_t b = 0; b < layout_.buckets.size(); ++b) {
    const auto& bucket = layout_.buckets[b];
    auto own = param_shard_.narrow(0, bucket.shard_offset, layout_.slice(bucket));
    at::Tensor flat = own;  // one rank: its slice is the whole bucket
    if (comm_) {
      flat = at::empty({bucket.padded_numel}, param_shard_.options());
      auto send = own.clone();
      auto work = comm_->allgather_async(flat, send);
      comm_->wait(work, fmt::format("allgather fp32 masters of bucket {}", b));
    }
    if (!keep) continue;
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      const auto k = static_cast<size_t>(bucket.params[j]);
      const int64_t numel = std::accumulate(sizes_[k].begin(), sizes_[k].end(), int64_t{1}, std::multiplies<int64_t>());
      full[k] = flat.narrow(0, bucket.offsets[j], numel).view(sizes_[k]).clone();
    }
  }
  NamedTensors out;
  if (!keep) return out;
  for (size_t k = 0; k < params_.size(); ++k) out.emplace_back(params_[k].first, full[k]);
  return out;
}

void ZeroOptimizer::load_masters(const std::map<std::string, at::Tensor>& state, const std::string& prefix) {
  if (!masters_) throw std::logic_error("ZeroOptimizer::load_masters() without fp32 masters");
  at::NoGradGuard no_grad;
  for (const auto& s : layout_.segments) {
    const auto& name = params_[s.param].first;
    const auto it = state.find(prefix + name);
    if (it == state.end()) throw std::invalid_argument("training state: missing master weight '" + prefix + name + "'");
    const auto& sizes = sizes_[s.param];
    const int64_t numel = std::accumulate(sizes.begin(), sizes.end(), int64_t{1}, std::multiplies<int64_t>());
    if (it->second.numel() != numel) {
      throw std::invalid_argument(fmt::format("training state: '{}{}' has {} elements, the master expects {}", prefix,
                                              name, it->second.numel(), numel));
    }
    param_shard_.narrow(0, s.shard_offset, s.length).copy_(it->second.reshape({-1}).narrow(0, s.param_offset, s.length));
  }
}

void ZeroOptimizer::add_held(HeldTensors& out) const {
  if (param_shard_.defined()) (masters_ ? out.optimizer : out.weights).push_back(param_shard_);
  if (frozen_shard_.defined()) out.weights.push_back(frozen_shard_);
  if (prefetch_.flat.defined()) out.weights.push_back(prefetch_.flat);
  if (prefetch_.frozen.defined()) out.weights.push_back(prefetch_.frozen);
  out.grads.push_back(grad_shard_);
  for (const auto& f : flat_) if (f.defined()) out.grads.push_back(f);
  for (const auto& r : recv_) if (r.defined()) out.grads.push_back(r);
  out.optimizer.push_back(exp_avg_);
  out.optimizer.push_back(exp_avg_sq_);
}

std::map<std::string, std::vector<int64_t>> ZeroOptimizer::sharded_shapes() const {
  std::map<std::string, std::vector<int64_t>> out;
  for (size_t k = 0; k < params_.size(); ++k)
    if (block_of_[k] >= 0 || stage_ == 3) out[params_[k].first] = sizes_[k];
  for (size_t k = 0; k < frozen_.size(); ++k) out[frozen_[k].first] = frozen_sizes_[k];
  return out;
}

void ZeroOptimizer::load_shards(const SliceReader& read) {
  at::NoGradGuard no_grad;
  if (param_shard_.defined()) {
    for (const auto& s : layout_.segments) {
      if (!in_shard(s.param)) continue;  // held by the model
      read(params_[s.param].first, s.param_offset, param_shard_.narrow(0, s.shard_offset, s.length));
    }
  }
  for (const auto& s : frozen_layout_.segments)
    read(frozen_[s.param].first, s.param_offset, frozen_shard_.narrow(0, s.shard_offset, s.length));
}

namespace {

// A layout's segments as the checkpoint's int64 table [n, 5]: param, param_offset, length, shard_offset, and the
// segment's AdamW step (0 without `steps`: frozen parameters).
at::Tensor segment_table(const ZeroLayout& layout, const std::vector<int64_t>* steps) {
  auto table = at::zeros({static_cast<int64_t>(layout.segments.size()), 5}, at::kLong);
  auto a = table.accessor<int64_t, 2>();
  for (size_t i = 0; i < layout.segments.size(); ++i) {
    const auto& s = layout.segments[i];
    const auto row = static_cast<int64_t>(i);
    a[row][0] = s.param;
    a[row][1] = s.param_offset;
    a[row][2] = s.length;
    a[row][3] = s.shard_offset;
    a[row][4] = steps ? (*steps)[i] : 0;
  }
  return table;
}

// The number of elements of a tensor of these sizes.
template <typename Size>
int64_t product(const std::vector<Size>& sizes) {
  return std::accumulate(sizes.begin(), sizes.end(), int64_t{1}, std::multiplies<int64_t>());
}

}  // namespace

NamedTensors ZeroOptimizer::shard_state() const {
  // The parameter values of the own segments (float32 masters where the optimizer keeps them), so that a checkpoint
  // holds the trainable weights as shards too and no rank gathers the model to save it.
  auto values = at::zeros({layout_.shard_numel}, param_shard_.defined() ? param_shard_.options()
                                                                         : shard_opts_.dtype(compute_dtype_));
  for (const auto& s : layout_.segments) {
    const at::Tensor v = in_shard(s.param)
                             ? param_shard_.narrow(0, s.shard_offset, s.length)
                             : params_[s.param].second.detach().reshape({-1}).narrow(0, s.param_offset, s.length);
    values.narrow(0, s.shard_offset, s.length).copy_(v);
  }
  NamedTensors out = {{"exp_avg", exp_avg_},
                      {"exp_avg_sq", exp_avg_sq_},
                      {"segments", segment_table(layout_, &steps_)},
                      {"values", values}};
  if (!frozen_.empty()) {  // the frozen block parameters this rank holds, in the same segment format (step 0)
    out.emplace_back("frozen_values", frozen_shard_);
    out.emplace_back("frozen_segments", segment_table(frozen_layout_, nullptr));
  }
  return out;
}

nlohmann::json ZeroOptimizer::manifest() const {
  nlohmann::json params = nlohmann::json::array();
  for (size_t k = 0; k < params_.size(); ++k) {
    params.push_back({params_[k].first, product(sizes_[k]), sizes_[k]});
  }
  nlohmann::json out = {{"stage", stage_}, {"world_size", layout_.world}, {"params", params}};
  if (!frozen_.empty()) {
    nlohmann::json frozen = nlohmann::json::array();
    for (size_t k = 0; k < frozen_.size(); ++k) {
      frozen.push_back({frozen_[k].first, product(frozen_sizes_[k]), frozen_sizes_[k]});
    }
    out["frozen"] = frozen;
  }
  return out;
}

void ZeroOptimizer::load_runs(const std::vector<AdamWStateRun>& runs) {
  at::NoGradGuard no_grad;
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  std::fill(steps_.begin(), steps_.end(), 0);
  std::vector<std::vector<size_t>> segs_of(params_.size());
  for (size_t i = 0; i < layout_.segments.size(); ++i) segs_of[layout_.segments[i].param].push_back(i);
  std::vector<int64_t> covered(layout_.segments.size(), 0);
  for (const auto& r : runs) {
    if (r.param < 0 || r.param >= static_cast<int64_t>(params_.size()))
      throw std::invalid_argument(fmt::format("optimizer state run names parameter index {} of {}", r.param, params_.size()));
    const int64_t len = r.exp_avg.numel();
    for (size_t i : segs_of[r.param]) {
      const auto& s = layout_.segments[i];
      const int64_t lo = std::max(r.offset, s.param_offset), hi = std::min(r.offset + len, s.param_offset + s.length);
      if (lo >= hi) continue;
      const int64_t at_shard = s.shard_offset + lo - s.param_offset;
      exp_avg_.narrow(0, at_shard, hi - lo).copy_(r.exp_avg.narrow(0, lo - r.offset, hi - lo));
      exp_avg_sq_.narrow(0, at_shard, hi - lo).copy_(r.exp_avg_sq.narrow(0, lo - r.offset, hi - lo));
      steps_[i] = r.step;
      covered[i] += hi - lo;
    }
  }
  for (size_t i = 0; i < covered.size(); ++i) {
    const auto& s = layout_.segments[i];
    if (covered[i] != 0 && covered[i] != s.length) {
      throw std::invalid_argument(fmt::format("optimizer state of '{}' covers {} of the {} elements [{}, {}) this rank owns",
                                              params_[s.param].first, covered[i], s.length, s.param_offset,
                                              s.param_offset + s.length));
    }
  }
}

void ZeroOptimizer::load_shard_state(const NamedTensors& state) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  for (const char* key : {"exp_avg", "exp_avg_sq", "segments"}) {
    if (!by_name.count(key)) throw std::invalid_argument(fmt::format("ZeRO shard state: missing entry '{}'", key));
  }
  const auto segs = by_name.at("segments").contiguous();
  if (segs.dim() != 2 || segs.size(0) != static_cast<int64_t>(layout_.segments.size()) ||
      by_name.at("exp_avg").numel() != layout_.shard_numel) {
    throw std::invalid_argument(fmt::format("ZeRO shard state: {} segments and {} elements, this rank's layout has {} and {}",
                                            segs.size(0), by_name.at("exp_avg").numel(), layout_.segments.size(),
                                            layout_.shard_numel));
  }
  at::NoGradGuard no_grad;
  exp_avg_.copy_(by_name.at("exp_avg"));
  exp_avg_sq_.copy_(by_name.at("exp_avg_sq"));
  auto a = segs.accessor<int64_t, 2>();
  for (size_t i = 0; i < steps_.size(); ++i) steps_[i] = a[static_cast<int64_t>(i)][4];
}

ZeroShardValues::ZeroShardValues(const nlohmann::json& manifest, std::vector<std::map<std::string, at::Tensor>> groups,
                                 std::string origin, Part part)
    : groups_(std::move(groups)), origin_(std::move(origin)), part_(part) {
  const char* values = values_key(part);
  const char* segments = segments_key(part);
  const auto& params = manifest.at(part == Part::kTrainable ? "params" : "frozen");
  for (size_t k = 0; k < params.size(); ++k) {
    if (params[k].size() < 3)
      throw std::invalid_argument(fmt::format("{}: the ZeRO manifest lists no shape for '{}' (an older checkpoint, "
                                              "which keeps the whole model in its model group)",
                                              origin_, params[k].at(0).get<std::string>()));
    names_.push_back(params[k].at(0).get<std::string>());
    shapes_.push_back(params[k].at(2).get<std::vector<int64_t>>());
  }
  pieces_.resize(names_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    const auto& t = groups_[g];
    for (const char* key : {values, segments}) {
      if (!t.count(key))
        throw std::invalid_argument(fmt::format("{}: ZeRO shard '{}' has no '{}'", origin_, zero_shard_group(static_cast<int64_t>(g)), key));
    }
    if (g == 0) dtype_ = t.at(values).scalar_type();
    const auto segs = t.at(segments).contiguous();
    const int64_t shard = t.at(values).numel();
    auto a = segs.accessor<int64_t, 2>();
    for (int64_t i = 0; i < segs.size(0); ++i) {
      const int64_t param = a[i][0];
      if (param < 0 || param >= static_cast<int64_t>(names_.size()) || a[i][3] < 0 || a[i][3] + a[i][2] > shard)
        throw std::invalid_argument(fmt::format("{}: ZeRO shard '{}' segment {} lies outside its parameters or values",
                                                origin_, zero_shard_group(static_cast<int64_t>(g)), i));
      pieces_[static_cast<size_t>(param)].push_back({g, a[i][1], a[i][2], a[i][3]});
    }
  }
  for (size_t k = 0; k < names_.size(); ++k) {
    const int64_t numel = std::accumulate(shapes_[k].begin(), shapes_[k].end(), int64_t{1}, std::multiplies<int64_t>());
    int64_t covered = 0;
    for (const auto& p : pieces_[k]) covered += p.length;
    if (covered != numel)
      throw std::invalid_argument(fmt::format("{}: the ZeRO shards cover {} of the {} elements of '{}'", origin_, covered,
                                              numel, names_[k]));
  }
}

bool ZeroShardValues::present(const TrainingCheckpoint& ck, Part part) {
  const auto it = ck.tensors.find(zero_shard_group(0));
  if (!ck.extra.contains("zero") || it == ck.tensors.end()) return false;
  for (const auto& [name, _] : it->second)
    if (name == values_key(part)) return true;
  return false;
}

ZeroShardValues ZeroShardValues::of(const TrainingCheckpoint& ck, const std::string& origin, Part part) {
  const auto& z = ck.extra.at("zero");
  const int64_t world = z.at("world_size").get<int64_t>();
  std::vector<std::map<std::string, at::Tensor>> groups;
  for (int64_t r = 0; r < world; ++r) {
    const auto it = ck.tensors.find(zero_shard_group(r));
    if (it == ck.tensors.end())
      throw std::invalid_argument(fmt::format("{}: no ZeRO shard '{}' (saved at world size {})", origin, zero_shard_group(r), world));
    groups.emplace_back(it->second.begin(), it->second.end());
  }
  return ZeroShardValues(z, std::move(groups), origin, part);
}

at::Tensor ZeroShardValues::get(size_t k) const {
  const int64_t numel = std::accumulate(shapes_[k].begin(), shapes_[k].end(), int64_t{1}, std::multiplies<int64_t>());
  auto out = at::empty({numel}, at::TensorOptions().dtype(dtype_));
  for (const auto& p : pieces_[k])
    out.narrow(0, p.param_offset, p.length).copy_(groups_[p.group].at(values_key(part_)).narrow(0, p.shard_offset, p.length));
  return out.view(shapes_[k]);
}

void ZeroShardValues::read(size_t k, int64_t offset, at::Tensor out) const {
  const int64_t len = out.numel();
  int64_t covered = 0;
  for (const auto& p : pieces_[k]) {
    const int64_t lo = std::max(offset, p.param_offset), hi = std::min(offset + len, p.param_offset + p.length);
    if (lo >= hi) continue;
    out.narrow(0, lo - offset, hi - lo)
        .copy_(groups_[p.group].at(values_key(part_)).narrow(0, p.shard_offset + lo - p.param_offset, hi - lo));
    covered += hi - lo;
  }
  if (covered != len)
    throw std::invalid_argument(fmt::format("{}: the ZeRO shards cover {} of elements [{}, {}) of '{}'", origin_, covered,
                                            offset, offset + len, names_[k]));
}

std::vector<AdamWStateRun> adamw_state_runs(const TrainingCheckpoint& ck, const NamedTensors& params) {
  std::vector<AdamWStateRun> runs;
  std::map<std::string, int64_t> index;
  for (size_t k = 0; k < params.size(); ++k) index[params[k].first] = static_cast<int64_t>(k);
  if (ck.extra.contains("zero")) {
    const auto& z = ck.extra.at("zero");
    const auto& names = z.at("params");
    if (names.size() != params.size()) {
      throw std::invalid_argument(fmt::format("the checkpoint's optimizer shards cover {} trainable parameters, this run has {}",
                                              names.size(), params.size()));
    }
    for (size_t k = 0; k < params.size(); ++k) {
      const auto name = names[k].at(0).get<std::string>();
      const auto numel = names[k].at(1).get<int64_t>();
      if (name != params[k].first || numel != params[k].second.numel()) {
        throw std::invalid_argument(fmt::format(
            "the checkpoint's optimizer shards list parameter {} as '{}' ({} elements), this run trains '{}' ({} elements)",
            k, name, numel, params[k].first, params[k].second.numel()));
      }
    }
    const int64_t world = z.at("world_size").get<int64_t>();
    for (int64_t r = 0; r < world; ++r) {
      const auto it = ck.tensors.find(zero_shard_group(r));
      if (it == ck.tensors.end()) {
        throw std::invalid_argument(fmt::format("the checkpoint has no optimizer shard '{}' (saved at world size {})",
                                                zero_shard_group(r), world));
      }
      std::map<std::string, at::Tensor> t(it->second.begin(), it->second.end());
      for (const char* key : {"exp_avg", "exp_avg_sq", "segments"}) {
        if (!t.count(key)) throw std::invalid_argument(fmt::format("optimizer shard '{}' has no '{}'", it->first, key));
      }
      const auto segs = t.at("segments").contiguous();
      auto a = segs.accessor<int64_t, 2>();
      for (int64_t i = 0; i < segs.size(0); ++i) {
        if (a[i][4] == 0) continue;  // no state yet
        runs.push_back({a[i][0], a[i][1], a[i][4], t.at("exp_avg").narrow(0, a[i][3], a[i][2]),
                        t.at("exp_avg_sq").narrow(0, a[i][3], a[i][2])});
      }
    }
    return runs;
  }
  const auto it = ck.tensors.find("optimizer");
  if (it == ck.tensors.end()) return runs;
  std::map<std::string, at::Tensor> t(it->second.begin(), it->second.end());
  for (const auto& [key, v] : t) {
    const auto dot = key.find_last_of('.');
    if (dot == std::string::npos || !index.count(key.substr(0, dot)))
      throw std::invalid_argument(fmt::format("optimizer state '{}' names no trainable parameter", key));
  }
  for (size_t k = 0; k < params.size(); ++k) {
    const auto& name = params[k].first;
    if (!t.count(name + ".step")) continue;
    for (const char* f : {".exp_avg", ".exp_avg_sq"}) {
      if (!t.count(name + f)) throw std::invalid_argument(fmt::format("optimizer state '{}{}' is missing", name, f));
      if (t.at(name + f).numel() != params[k].second.numel()) {
        throw std::invalid_argument(fmt::format("optimizer state '{}{}' has {} elements, the parameter {}", name, f,
                                                t.at(name + f).numel(), params[k].second.numel()));
      }
    }
    runs.push_back({static_cast<int64_t>(k), 0, t.at(name + ".step").item<int64_t>(),
                    t.at(name + ".exp_avg").reshape({-1}), t.at(name + ".exp_avg_sq").reshape({-1})});
  }
  return runs;
}

NamedTensors adamw_runs_to_tensors(const std::vector<AdamWStateRun>& runs, const NamedTensors& params) {
  std::vector<std::vector<const AdamWStateRun*>> of(params.size());
  for (const auto& r : runs) of.at(static_cast<size_t>(r.param)).push_back(&r);
  NamedTensors out;
  for (size_t k = 0; k < params.size(); ++k) {
    if (of[k].empty()) continue;
    const auto& [name, p] = params[k];
    auto m = at::zeros({p.numel()}, p.options()), v = at::zeros({p.numel()}, p.options());
    int64_t covered = 0;
    for (const auto* r : of[k]) {
      m.narrow(0, r->offset, r->exp_avg.numel()).copy_(r->exp_avg);
      v.narrow(0, r->offset, r->exp_avg.numel()).copy_(r->exp_avg_sq);
      covered += r->exp_avg.numel();
    }
    if (covered != p.numel()) {
      throw std::invalid_argument(
          fmt::format("optimizer state of '{}' covers {} of its {} elements", name, covered, p.numel()));
    }
    out.emplace_back(name + ".step", at::tensor(of[k][0]->step, at::kLong));
    out.emplace_back(name + ".exp_avg", m.view(p.sizes()));
    out.emplace_back(name + ".exp_avg_sq", v.view(p.sizes()));
  }
  return out;
}

}  // namespace owl2
