// The training dtype policy; see precision.h.
#include "trainers/precision.h"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>

#include <set>
#include <stdexcept>

#include "owl2/io/state_dict.h"
#include "owl2/io/tensor_source.h"

namespace owl2 {

AutocastRegion::AutocastRegion(c10::DeviceType device, c10::ScalarType dtype)
    : device_(device),
      was_enabled_(at::autocast::is_autocast_enabled(device)),
      was_dtype_(at::autocast::get_autocast_dtype(device)) {
  // Autocast caches the bf16 copy of each fp32 weight until the outermost region ends. Activation
  // checkpointing replays blocks under autocast in backward, outside any region, and those copies would
  // survive the optimizer step: clear on entry too, so a forward never sees last step's weights.
  if (at::autocast::increment_nesting() == 1) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device, true);
  at::autocast::set_autocast_dtype(device, dtype);
}

AutocastRegion::~AutocastRegion() {
  at::autocast::set_autocast_enabled(device_, was_enabled_);
  at::autocast::set_autocast_dtype(device_, was_dtype_);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

MixedPrecision::MixedPrecision(Precision mode, torch::nn::Module& model, std::vector<ParamGroup>& groups,
                               bool sharded_masters, const std::vector<at::Tensor>& deferred)
    : mode_(mode), model_(model), sharded_(sharded_masters && mode == Precision::kBf16) {
  if (!deferred.empty() && !sharded_masters)
    throw std::invalid_argument("MixedPrecision: deferred parameters need sharded masters (ZeRO)");
  if (mode_ != Precision::kBf16) return;
  torch::NoGradGuard no_grad;
  std::set<const c10::TensorImpl*> trainable;  // and the deferred ones: not cast here
  for (const auto& t : deferred) trainable.insert(t.unsafeGetTensorImpl());
  for (auto& g : groups) {
    for (size_t i = 0; i < g.params.size(); ++i) {
      auto& p = g.params[i];
      if (p.scalar_type() != torch::kFloat32) {
        throw std::invalid_argument(fmt::format("train.precision bf16: parameter '{}' is {}, expected float32 before the "
                                                "cast (the masters are exact copies of float32 weights)",
                                                g.names[i], c10::toString(p.scalar_type())));
      }
      trainable.insert(p.unsafeGetTensorImpl());
      if (sharded_) continue;
      auto master = p.detach().clone().requires_grad_(true);
      pairs_.push_back({g.names[i], p, master});
      p = master;  // the optimizer group now holds the master
    }
  }
  if (!sharded_) {
    // Module::to keeps each parameter's tensor object (set_data), so pairs_ and any hooks follow the cast.
    model_.to(torch::kBFloat16);
    return;
  }
  // What Module::to does (every parameter and buffer, in place), less the trainable parameters: their float32
  // values are the optimizer's to shard before it casts them.
  for (auto& item : model_.named_parameters(/*recurse=*/true)) {
    if (!trainable.count(item.value().unsafeGetTensorImpl())) item.value().set_data(item.value().to(torch::kBFloat16));
  }
  for (auto& item : model_.named_buffers(/*recurse=*/true)) item.value().set_data(item.value().to(torch::kBFloat16));
}

void MixedPrecision::hold_masters(NamedTensors masters) {
  held_.clear();
  for (auto& [name, t] : masters) held_[name] = std::move(t);
}

std::optional<AutocastRegion> MixedPrecision::forward_region() const {
  if (mode_ != Precision::kBf16Autocast) return std::nullopt;
  // The parameters' device now, not at construction: ZeRO 3 builds the model on the host and moves it to the
  // training device while sharding it (trainers/setup.h, build_training).
  c10::DeviceType device = c10::kCPU;
  for (const auto& p : model_.parameters()) {
    device = p.device().type();
    break;
  }
  return std::optional<AutocastRegion>(std::in_place, device, torch::kBFloat16);
}

void MixedPrecision::grads_to_masters() {
  for (auto& p : pairs_) {
    auto& g = p.model.mutable_grad();
    if (g.defined()) {
      p.master.mutable_grad() = g.to(torch::kFloat32);  // exact: every bf16 value is a float32 value
      g = at::Tensor();
    } else {
      p.master.mutable_grad() = at::Tensor();
    }
  }
}

void MixedPrecision::masters_to_model() {
  torch::NoGradGuard no_grad;
  for (auto& p : pairs_) p.model.copy_(p.master);  // float32 -> bfloat16, round to nearest even
}

void MixedPrecision::end_to_fp32() {
  if (mode_ != Precision::kBf16) return;
  torch::NoGradGuard no_grad;
  if (sharded_ && held_.empty()) {
    throw std::logic_error("train.precision bf16 with ZeRO: the fp32 masters are sharded; gather them first "
                           "(FullParameters) to export them");
  }
  model_.to(torch::kFloat32);
  for (auto& p : pairs_) p.model.copy_(p.master);  // exact: same dtype
  if (!sharded_) return;
  for (auto& item : model_.named_parameters(/*recurse=*/true)) {
    const auto it = held_.find(item.key());
    if (it != held_.end()) item.value().copy_(it->second);
  }
}

NamedTensors MixedPrecision::model_state() const {
  NamedTensors state = module_state(model_);
  if (sharded_) {
    if (held_.empty()) {
      throw std::logic_error("train.precision bf16 with ZeRO: the fp32 masters are sharded; gather them first "
                             "(FullParameters) to save them");
    }
    for (auto& [name, t] : state) {
      auto it = held_.find(name);
      if (it != held_.end()) t = it->second;
    }
    return state;
  }
  if (pairs_.empty()) return state;
  std::map<std::string, at::Tensor> masters;
  for (const auto& p : pairs_) masters[p.name] = p.master.detach();
  for (auto& [name, t] : state) {
    auto it = masters.find(name);
    if (it != masters.end()) t = it->second;
  }
  return state;
}

void MixedPrecision::load_model_state(const std::map<std::string, at::Tensor>& state, const std::string& origin) {
  LoadOptions lo;
  lo.convert_dtype = mode_ == Precision::kBf16;  // float32 masters into the bf16 model; the masters get them exactly
  load_state_dict(model_, MapSource(state, origin), lo);
  load_masters(state);
}

void MixedPrecision::load_masters(const std::map<std::string, at::Tensor>& state, const std::string& prefix) {
  if (mode_ != Precision::kBf16) return;
  torch::NoGradGuard no_grad;
  for (auto& p : pairs_) {
    auto it = state.find(prefix + p.name);
    if (it == state.end()) throw std::invalid_argument("training state: missing master weight '" + prefix + p.name + "'");
    if (it->second.sizes() != p.master.sizes()) {
      throw std::invalid_argument(fmt::format("training state: '{}{}' has {} elements, the master expects {}", prefix,
                                              p.name, it->second.numel(), p.master.numel()));
    }
    p.master.copy_(it->second);
    p.model.copy_(p.master);
  }
}

}  // namespace owl2
