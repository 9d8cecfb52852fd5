// Trainer::step and the training state; see trainer.h.
#include "trainers/trainer.h"

#include "trainers/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/nn/utils/clip_grad.h>

#include <cmath>
#include <limits>
#include <stdexcept>

namespace owl2 {

Trainer::Trainer(torch::nn::Module& model, LossSumFn loss_sum, const RunConfig& cfg, std::shared_ptr<Comm> comm,
                 const std::vector<ShardedStack>& stacks)
    : model_(model), loss_sum_(std::move(loss_sum)), cfg_(cfg), comm_(std::move(comm)) {
  freeze_table_ = apply_freeze_rules(model_, cfg_.freeze);
  groups_ = resolve_param_groups(model_, cfg_.param_groups, cfg_.optim.weight_decay, cfg_.optim.vision_layer_decay,
                                 cfg_.model.vision.num_hidden_layers);
  precision_ = std::make_unique<MixedPrecision>(cfg_.train.precision, model_, groups_);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& g : groups_) {
    auto opts = std::make_unique<torch::optim::AdamWOptions>(cfg_.optim.lr * g.lr_scale);
    opts->betas({cfg_.optim.betas[0], cfg_.optim.betas[1]}).eps(cfg_.optim.eps).weight_decay(g.weight_decay);
    groups.emplace_back(g.params, std::move(opts));
    for (size_t i = 0; i < g.params.size(); ++i) trainable_.emplace_back(g.names[i], g.params[i]);
  }
  optim_ = std::make_unique<torch::optim::AdamW>(groups);
  const auto bucket_bytes = static_cast<int64_t>(cfg_.distributed.bucket_mb * (1 << 20));
  const int stage = static_cast<int>(cfg_.distributed.zero_stage);
  if (stage == 3 && stacks.empty()) throw std::invalid_argument("ZeRO 3: the model has no block stack to shard");
  if (stage >= 1) {
    zero_ = std::make_unique<ZeroOptimizer>(comm_, model_, groups_, cfg_.optim, stage, bucket_bytes,
                                            stage == 3 ? stack_block_params(stacks) : std::vector<std::vector<at::Tensor>>{});
    if (stage == 3) install_zero3_runners(*zero_, stacks);
  } else if (comm_ && comm_->world_size() > 1) {
    dp_ = std::make_unique<DataParallel>(comm_, model_, bucket_bytes);
  }
}

StepResult Trainer::step(const std::vector<Batch>& micro_batches) {
  StepResult r;
  r.step = step_;
  for (const auto& mb : micro_batches) {
    r.tokens += mb.label_tokens();
    r.samples += mb.samples;
  }
  const bool multi = comm_ && comm_->world_size() > 1;
  const double blocked0 = comm_ ? comm_->blocked_seconds() : 0;
  if (multi) {
    comm_->set_step(step_);
    r.tokens = comm_->sum(r.tokens, "allreduce supervised-token count");
    r.samples = comm_->sum(r.samples, "allreduce sample count");
  }
  const auto& o = cfg_.optim;
  r.lr = cosine_lr(step_, cfg_.train.steps, o.warmup_steps, o.lr, o.min_lr);
  optim_->zero_grad(/*set_to_none=*/true);
  if (zero_) zero_->zero_grad();
  if (r.tokens == 0) {  // nothing supervised: an empty update would still decay weights
    r.skipped = true;
    ++step_;
    return r;
  }
  const double inv_tokens = 1.0 / double(r.tokens);
  double loss_sum = 0;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    if (i + 1 == micro_batches.size()) {  // communicate on the last micro-batch only
      if (dp_) dp_->arm();
      if (zero_) zero_->arm();
    }
    torch::Tensor loss;
    {
      const auto autocast = precision_->forward_region();  // bf16-autocast: forward only, backward outside
      loss = loss_sum_(micro_batches[i]) * inv_tokens;
    }
    loss.backward();
    loss_sum += loss.item<double>();
  }
  if (dp_) {
    if (micro_batches.empty()) dp_->arm();
    dp_->finish();
    r.grad_wait_s = dp_->wait_seconds();
  }
  precision_->grads_to_masters();  // bf16: the optimizer, clipping and the finite check see fp32 gradients
  const double max_norm = o.grad_clip > 0 ? o.grad_clip : std::numeric_limits<double>::infinity();
  if (zero_) {  // the global norm over all shards; clipping happens inside the sharded step
    if (micro_batches.empty()) zero_->arm();
    r.grad_norm = zero_->finish();
    r.grad_wait_s = zero_->reduce_wait_seconds();
  }
  // After the gradient reductions: every rank must issue its collectives in the same order, and a bucket
  // that waited for an unused parameter is only launched in finish().
  if (multi) loss_sum = comm_->sum(loss_sum, "allreduce loss");
  r.loss = loss_sum;
  if (!zero_) {
    std::vector<torch::Tensor> params;
    for (const auto& g : groups_) params.insert(params.end(), g.params.begin(), g.params.end());
    r.grad_norm = torch::nn::utils::clip_grad_norm_(params, max_norm);
  }
  if (comm_) r.comm_wait_s = comm_->blocked_seconds() - blocked0;
  if (!std::isfinite(r.grad_norm) || !std::isfinite(r.loss)) {
    optim_->zero_grad(/*set_to_none=*/true);
    r.skipped = true;
    ++nonfinite_in_a_row_;
    ++step_;
    if (nonfinite_in_a_row_ > cfg_.train.max_nonfinite_steps) {
      throw std::runtime_error(fmt::format(
          "step {}: {} non-finite steps in a row (loss {}, grad norm {}), more than train.max_nonfinite_steps = {}",
          r.step, nonfinite_in_a_row_, r.loss, r.grad_norm, cfg_.train.max_nonfinite_steps));
    }
    return r;
  }
  nonfinite_in_a_row_ = 0;
  if (zero_) {
    zero_->step(r.lr, max_norm, r.grad_norm);
    if (comm_) r.comm_wait_s = comm_->blocked_seconds() - blocked0;
  } else {
    for (size_t i = 0; i < groups_.size(); ++i) {
      static_cast<torch::optim::AdamWOptions&>(optim_->param_groups()[i].options()).lr(r.lr * groups_[i].lr_scale);
    }
    optim_->step();
  }
  precision_->masters_to_model();
  ++step_;
  return r;
}

NamedTensors Trainer::optimizer_state() {
  return zero_ ? zero_->shard_state() : adamw_state_tensors(*optim_, trainable_);
}

void Trainer::load_optimizer_state(const NamedTensors& state) {
  if (zero_) {
    zero_->load_shard_state(state);
    return;
  }
  optim_->state().clear();
  load_adamw_state(*optim_, trainable_, state);
}

nlohmann::json Trainer::optimizer_manifest() const { return zero_ ? zero_->manifest() : nlohmann::json(); }

void Trainer::gather_parameters() {
  if (zero_) zero_->gather_all();
}

void Trainer::release_parameters() {
  if (zero_) zero_->release_all();
}

void Trainer::load_optimizer_from(const TrainingCheckpoint& ck) {
  const bool gather = zero_ && zero_->block_count() > 0 && !zero_->all_gathered();
  if (gather) zero_->gather_all();  // the checks below need the parameters' sizes
  const auto runs = adamw_state_runs(ck, trainable_);
  if (gather) zero_->release_all();
  if (zero_) {
    zero_->load_runs(runs);
    return;
  }
  optim_->state().clear();
  load_adamw_state(*optim_, trainable_, adamw_runs_to_tensors(runs, trainable_));
}

void Trainer::set_counters(int64_t step, int64_t nonfinite_in_a_row) {
  step_ = step;
  nonfinite_in_a_row_ = nonfinite_in_a_row;
}

std::map<std::string, torch::Tensor> Trainer::state() {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [k, v] : precision_->model_state()) out["param." + k] = v.detach();  // bf16: fp32 masters
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
  for (auto& item : model_.named_parameters(/*recurse=*/true)) {
    const auto& src = need(state, "param." + item.key());
    if (src.sizes() != item.value().sizes()) {
      throw std::invalid_argument(fmt::format("training state: 'param.{}' has shape {}, the model expects {}", item.key(),
                                              fmt::join(src.sizes(), "x"), fmt::join(item.value().sizes(), "x")));
    }
    item.value().copy_(src);
  }
  precision_->load_masters(state, "param.");
  load_optimizer_state(with_prefix(state, "adamw."));
  set_counters(need(state, "trainer.step").item<int64_t>(), need(state, "trainer.nonfinite").item<int64_t>());
  restore_rng_states(with_prefix(state, "rng."));
}

}  // namespace owl2
