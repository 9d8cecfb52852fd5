// Trainer::step and the training state; see trainer.h.
#include "trainers/trainer.h"
#include "trainers/sharding.h"

#include <optional>
#include <regex>
#include <set>

#include "owl2/io/state_dict.h"
#include "trainers/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <stdexcept>

namespace owl2 {

Trainer::Trainer(torch::nn::Module& model, LossSumFn loss_sum, const RunConfig& cfg, std::shared_ptr<Comm> comm,
                 const std::vector<ShardedStack>& stacks, ShardPlacement placement)
    : model_(model), loss_sum_(std::move(loss_sum)), cfg_(cfg) {
  freeze_table_ = apply_freeze_rules(model_, effective_freeze_rules(cfg_));
  groups_ = resolve_param_groups(model_, cfg_.param_groups, cfg_.optim.weight_decay, cfg_.optim.vision_layer_decay,
                                 cfg_.model.vision.num_hidden_layers,
                                 /*drop_unmatched=*/cfg_.lora.rank > 0 && default_param_groups(cfg_.param_groups));
  // bf16 under ZeRO: the optimizer shards the float32 masters (parallel/zero.h), MixedPrecision keeps none.
  precision_ = std::make_unique<MixedPrecision>(cfg_.train.precision, model_, groups_,
                                                /*sharded_masters=*/cfg_.distributed.zero_stage >= 1, placement.pending);
  for (const auto& g : groups_) {
    for (size_t i = 0; i < g.params.size(); ++i) trainable_.emplace_back(g.names[i], g.params[i]);
  }
  sync_ = make_gradient_sync(cfg_, comm, model_, groups_, *precision_, stacks, std::move(placement));
  if (comm && comm->world_size() > 1) comm_ = std::move(comm);
  for (const auto& stack : stacks) {
    if (!zero3_stack_is_visual(stack.name)) continue;
    for (const auto& block : stack.blocks) {
      visual_blocks_sharded_ = visual_blocks_sharded_ || !block->parameters().empty();  // trainable or frozen
    }
  }
}

RankBytes Trainer::held_bytes() const {
  HeldTensors h;
  for (const auto& p : model_.parameters(/*recurse=*/true)) {
    h.weights.push_back(p);
    h.grads.push_back(p.grad());
  }
  for (const auto& pair : precision_->pairs()) {
    h.optimizer.push_back(pair.master);
    h.grads.push_back(pair.master.grad());
  }
  sync_->add_held(h);
  std::set<const c10::StorageImpl*> seen;
  auto count = [&](const std::vector<at::Tensor>& ts) {
    int64_t bytes = 0;
    for (const auto& t : ts) {
      if (!t.defined() || !t.has_storage()) continue;
      const auto* s = t.storage().unsafeGetStorageImpl();
      if (seen.insert(s).second) bytes += static_cast<int64_t>(s->nbytes());
    }
    return bytes;
  };
  RankBytes r;
  r.weights = count(h.weights);
  r.grads = count(h.grads);
  r.optimizer = count(h.optimizer);
  return r;
}

std::vector<uint8_t> Trainer::vision_placeholders(const std::vector<Batch>& micro_batches) {
  std::vector<uint8_t> out(micro_batches.size(), 0);
  if (!visual_blocks_sharded_ || !comm_) return out;
  std::vector<int64_t> mine(micro_batches.size(), 0);
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const auto& images = micro_batches[i].images;
    mine[i] = images.defined() && images.size(0) > 0 ? 1 : 0;
  }
  if (mine.empty()) return out;
  auto any = torch::tensor(mine, torch::kLong).to(comm_->device());
  comm_->allreduce_sum(any, "allreduce micro-batches with images");  // NCCL reduces device tensors only
  any = any.cpu();
  for (size_t i = 0; i < mine.size(); ++i) out[i] = !mine[i] && any[static_cast<int64_t>(i)].item<int64_t>() > 0;
  return out;
}

void Trainer::count_global_batch(const std::vector<Batch>& micro_batches, const std::vector<int64_t>& label_tokens,
                                 StepResult& r) {
  if (label_tokens.size() != micro_batches.size()) {
    throw std::invalid_argument(fmt::format("Trainer::step: {} supervised-token counts for {} micro-batches",
                                            label_tokens.size(), micro_batches.size()));
  }
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    r.tokens += label_tokens[i];
    r.samples += micro_batches[i].samples;
  }
  if (!comm_) return;
  comm_->set_step(step_);
  r.tokens = comm_->sum(r.tokens, "allreduce supervised-token count");
  r.samples = comm_->sum(r.samples, "allreduce sample count");
}

StepResult Trainer::step(const std::vector<Batch>& micro_batches) {
  std::vector<int64_t> label_tokens;
  for (const auto& mb : micro_batches) label_tokens.push_back(mb.label_tokens());  // a host sync each on a GPU
  return step(micro_batches, label_tokens);
}

StepResult Trainer::step(const std::vector<Batch>& micro_batches, const std::vector<int64_t>& label_tokens) {
  StepResult r;
  r.step = step_;
  const double blocked0 = comm_seconds();
  count_global_batch(micro_batches, label_tokens, r);
  const auto& o = cfg_.optim;
  r.lr = cosine_lr(step_, cfg_.train.steps, o.warmup_steps, o.lr, o.min_lr);
  sync_->zero_grad();
  if (r.tokens == 0) {  // nothing supervised: an empty update would still decay weights
    r.skipped = true;
    ++step_;
    return r;
  }
  const double inv_tokens = 1.0 / double(r.tokens);
  const std::vector<uint8_t> placeholder = vision_placeholders(micro_batches);
  // Summed on the device in float64, in micro-batch order: the same additions as summing each value on the host.
  torch::Tensor loss_sum = torch::zeros({}, torch::kDouble);  // 0-dim: it adds to a loss on any device
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    if (i + 1 == micro_batches.size()) sync_->arm();  // communicate on the last micro-batch only
    torch::Tensor loss;
    {
      const auto autocast = precision_->forward_region();  // bf16-autocast: forward only, backward outside
      if (placeholder[i]) {
        Batch with_placeholder = micro_batches[i];
        with_placeholder.vision_placeholder = true;
        loss = loss_sum_(with_placeholder) * inv_tokens;
      } else {
        loss = loss_sum_(micro_batches[i]) * inv_tokens;
      }
    }
    loss.backward();
    loss_sum = loss_sum + loss.detach().to(torch::kDouble);
  }
  if (micro_batches.empty()) sync_->arm();  // no data on this rank, but it joins the reductions
  const auto grad_norm = sync_->finish();
  r.grad_wait_s = sync_->grad_wait_seconds();
  // After the gradient reductions: every rank must issue its collectives in the same order, and a bucket
  // that waited for an unused parameter is only launched in finish().
  auto loss = loss_sum.reshape({1});
  if (comm_) comm_->allreduce_sum(loss, "allreduce loss");
  const auto host = torch::cat({loss, grad_norm}).cpu();  // the step's one host synchronisation
  r.loss = host[0].item<double>();
  r.grad_norm = host[1].item<double>();
  r.comm_wait_s = comm_seconds() - blocked0;
  ++step_;
  if (!std::isfinite(r.grad_norm) || !std::isfinite(r.loss)) {
    sync_->zero_grad();
    r.skipped = true;
    if (++nonfinite_in_a_row_ > cfg_.train.max_nonfinite_steps) {
      throw std::runtime_error(fmt::format(
          "step {}: {} non-finite steps in a row (loss {}, grad norm {}), more than train.max_nonfinite_steps = {}",
          r.step, nonfinite_in_a_row_, r.loss, r.grad_norm, cfg_.train.max_nonfinite_steps));
    }
    return r;
  }
  nonfinite_in_a_row_ = 0;
  sync_->step(r.lr, r.grad_norm);  // clips, and ZeRO all-gathers the updated parameters
  r.comm_wait_s = comm_seconds() - blocked0;
  precision_->masters_to_model();
  return r;
}

void Trainer::set_counters(int64_t step, int64_t nonfinite_in_a_row) {
  step_ = step;
  nonfinite_in_a_row_ = nonfinite_in_a_row;
}

void Trainer::gather(int64_t masters_root) {
  sync_->gather_parameters();
  if (precision_->masters_sharded()) precision_->hold_masters(sync_->gather_masters(masters_root));
}

void Trainer::release_parameters() {
  precision_->drop_masters();
  sync_->release_parameters();
}

void Trainer::begin_sharded_passes() {
  if (sync_->kind() != GradientSync::Kind::kZero3 || lockstep_) return;
  sync_->gather_root();
  Lockstep l;
  l.vision = visual_blocks_sharded_;
  l.any = [comm = comm_](bool mine) {
    if (!comm) return mine;
    return comm->sum(int64_t{mine ? 1 : 0}, "allreduce: a rank still generating") > 0;
  };
  lockstep_ = std::move(l);
}

void Trainer::end_sharded_passes() {
  if (!lockstep_) return;
  lockstep_.reset();
  sync_->release_root();
}

void Trainer::load_model_state(const std::map<std::string, torch::Tensor>& state, const std::string& origin) {
  sync_->gather_parameters();  // ZeRO 3: full blocks to load into; the release reshards them
  precision_->load_model_state(state, origin);  // bf16: MixedPrecision's masters too
  sync_->release_parameters();
  sync_->load_masters(state, "");  // bf16 under ZeRO: the shards' masters, exactly
}

void Trainer::load_checkpoint_weights(const std::map<std::string, torch::Tensor>& model_group,
                                      const std::vector<const ZeroShardValues*>& parts, const std::string& origin) {
  const ZeroOptimizer* zero = sync_->zero();
  if (!zero) {  // replicated: every rank holds the whole model anyway
    std::map<std::string, torch::Tensor> m = model_group;
    for (const auto* part : parts) {
      for (size_t k = 0; k < part->size(); ++k) m[part->name(k)] = part->get(k);
    }
    load_model_state(m, origin);
    return;
  }
  std::map<std::string, std::pair<const ZeroShardValues*, size_t>> in_parts;
  for (const auto* part : parts) {
    for (size_t k = 0; k < part->size(); ++k) in_parts[part->name(k)] = {part, k};
  }
  std::vector<std::regex> ignore;
  for (const auto& pattern : default_ignorable_keys()) ignore.emplace_back(pattern);
  auto ignored = [&](const std::string& name) {
    for (const auto& re : ignore)
      if (std::regex_search(name, re)) return true;
    return false;
  };
  auto source_shape = [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
    if (const auto it = in_parts.find(name); it != in_parts.end()) return it->second.first->shape(it->second.second);
    if (const auto it = model_group.find(name); it != model_group.end()) return it->second.sizes().vec();
    return std::nullopt;
  };
  // Check everything first: what the model expects (the sharded parameters by their recorded shapes).
  const auto sharded = zero->sharded_shapes();
  std::vector<std::string> problems;
  std::set<std::string> expected;
  NamedTensors held;  // the entries the model holds in full
  for (const auto& [name, t] : module_state(model_)) {
    expected.insert(name);
    if (ignored(name)) continue;
    const auto it = sharded.find(name);
    const std::vector<int64_t> want = it != sharded.end() ? it->second : t.sizes().vec();
    const auto have = source_shape(name);
    if (!have) {
      problems.push_back(fmt::format("missing '{}'", name));
    } else if (*have != want) {
      problems.push_back(fmt::format("'{}': checkpoint [{}] vs model [{}]", name, fmt::join(*have, ", "), fmt::join(want, ", ")));
    } else if (it == sharded.end()) {
      held.emplace_back(name, t);
    }
  }
  for (const auto& [name, _] : model_group)
    if (!expected.count(name) && !ignored(name)) problems.push_back(fmt::format("unexpected '{}'", name));
  for (const auto& [name, _] : in_parts)
    if (!expected.count(name)) problems.push_back(fmt::format("unexpected '{}' (in the ZeRO shards)", name));
  if (!problems.empty())
    throw std::runtime_error(fmt::format("{}: {}", origin, fmt::join(problems, "; ")));
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : held) {  // one full tensor at a time (masters: converted to the model's bf16)
    if (const auto it = in_parts.find(name); it != in_parts.end()) {
      t.copy_(it->second.first->get(it->second.second));
    } else {
      t.copy_(model_group.at(name));
    }
  }
  sync_->load_shards([&](const std::string& name, int64_t offset, at::Tensor out) {
    if (const auto it = in_parts.find(name); it != in_parts.end()) {
      it->second.first->read(it->second.second, offset, out);
    } else {
      out.copy_(model_group.at(name).reshape({-1}).narrow(0, offset, out.numel()));
    }
  });
}

NamedTensors Trainer::untrained_state() const {
  std::set<std::string> trained;  // and the frozen parameters ZeRO 3 shards: the shards hold them
  for (const auto& [name, _] : trainable_) trained.insert(name);
  if (const auto* z = sync_->zero()) {
    for (const auto& name : z->frozen_names()) trained.insert(name);
  }
  NamedTensors out;
  for (auto& [name, t] : module_state(model_))
    if (!trained.count(name)) out.emplace_back(name, t);
  return out;
}

std::map<std::string, torch::Tensor> Trainer::state() {
  std::map<std::string, torch::Tensor> out;
  gather(/*masters_root=*/-1);
  for (const auto& [k, v] : precision_->model_state()) out["param." + k] = v.detach();  // bf16: fp32 masters
  release_parameters();  // the gathered tensors stay alive in `out`
  for (const auto& [k, v] : optimizer_state()) out["adamw." + k] = v;
  for (const auto& [k, v] : capture_rng_states()) out["rng." + k] = v;
  out["trainer.step"] = torch::tensor(step_, torch::kInt64);
  out["trainer.nonfinite"] = torch::tensor(nonfinite_in_a_row_, torch::kInt64);
  return out;
}

namespace {
const torch::Tensor& need(const std::map<std::string, torch::Tensor>& state, const std::string& key) {
  auto it = state.find(key);
  if (it == state.end()) throw std::invalid_argument("training state: missing entry '" + key + "'");
  return it->second;
}

NamedTensors with_prefix(const std::map<std::string, torch::Tensor>& state, const std::string& prefix) {
  NamedTensors out;
  for (const auto& [k, v] : state) {
    if (k.rfind(prefix, 0) == 0) out.emplace_back(k.substr(prefix.size()), v);
  }
  return out;
}
}  // namespace

void Trainer::load_state(const std::map<std::string, torch::Tensor>& state) {
  torch::NoGradGuard no_grad;
  sync_->gather_parameters();
  for (auto& item : model_.named_parameters(/*recurse=*/true)) {
    const auto& src = need(state, "param." + item.key());
    if (src.sizes() != item.value().sizes()) {
      throw std::invalid_argument(fmt::format("training state: 'param.{}' has shape {}, the model expects {}", item.key(),
                                              fmt::join(src.sizes(), "x"), fmt::join(item.value().sizes(), "x")));
    }
    item.value().copy_(src);
  }
  sync_->release_parameters();
  precision_->load_masters(state, "param.");
  sync_->load_masters(state, "param.");
  load_optimizer_state(with_prefix(state, "adamw."));
  set_counters(need(state, "trainer.step").item<int64_t>(), need(state, "trainer.nonfinite").item<int64_t>());
  restore_rng_states(with_prefix(state, "rng."));
}

}  // namespace owl2
