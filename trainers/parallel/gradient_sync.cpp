// The gradient-sync strategies and the one place that picks among them; see gradient_sync.h.
#include "trainers/parallel/gradient_sync.h"

#include <fmt/format.h>

#include <limits>
#include <optional>
#include <stdexcept>

#include "trainers/checkpoint.h"

namespace owl2 {
namespace {

// optim.grad_clip, where 0 means no clipping.
double max_norm_of(const OptimConfig& optim) {
  return optim.grad_clip > 0 ? optim.grad_clip : std::numeric_limits<double>::infinity();
}

NamedTensors named_params(const std::vector<ParamGroup>& groups) {
  NamedTensors out;
  for (const auto& g : groups) {
    for (size_t i = 0; i < g.params.size(); ++i) out.emplace_back(g.names[i], g.params[i]);
  }
  return out;
}

// torch::optim::Optimizer::zero_grad(/*set_to_none=*/true) over `params`.
void drop_grads(const NamedTensors& params) {
  for (const auto& [name, p] : params) {
    auto& grad = p.mutable_grad();
    if (!grad.defined()) continue;
    grad.detach_();
    grad.reset();
  }
}

std::vector<std::vector<at::Tensor>> sharded_blocks(const std::vector<ShardedStack>& stacks) {
  if (stacks.empty()) throw std::invalid_argument("ZeRO 3: the model has no block stack to shard");
  return stack_block_params(stacks);
}

int64_t bucket_bytes_of(const RunConfig& cfg) { return static_cast<int64_t>(cfg.distributed.bucket_mb * (1 << 20)); }

// The ZeroOptimizer's masters when MixedPrecision leaves them to it (bf16 under ZeRO).
std::optional<ShardedMasters> sharded_masters(const MixedPrecision& precision, ReduceDtype reduce) {
  if (!precision.masters_sharded()) return std::nullopt;
  return ShardedMasters{at::kBFloat16, reduce == ReduceDtype::kBf16 ? at::kBFloat16 : at::kFloat};
}

}  // namespace

ReplicatedSync::ReplicatedSync(const std::vector<ParamGroup>& groups, const OptimConfig& optim,
                               MixedPrecision& precision, std::unique_ptr<DataParallel> buckets)
    : dp_(std::move(buckets)),
      groups_(groups), trainable_(named_params(groups)), precision_(precision), max_norm_(max_norm_of(optim)) {
  std::vector<torch::optim::OptimizerParamGroup> adamw_groups;
  for (const auto& g : groups_) {
    auto opts = std::make_unique<torch::optim::AdamWOptions>(optim.lr * g.lr_scale);
    opts->betas({optim.betas[0], optim.betas[1]}).eps(optim.eps).weight_decay(g.weight_decay);
    adamw_groups.emplace_back(g.params, std::move(opts));
  }
  optim_ = std::make_unique<torch::optim::AdamW>(adamw_groups);
}

void ReplicatedSync::zero_grad() {
  // The optimizer's (bf16: the masters') gradients to none, as zero_grad(set_to_none) but without its detach_(),
  // which views of the buckets refuse; then the model's point at the zeroed buckets again.
  for (const auto& [name, p] : trainable_) p.mutable_grad().reset();
  if (dp_) dp_->zero_grad();
}

void ReplicatedSync::arm() {
  if (dp_) dp_->arm();
}

at::Tensor ReplicatedSync::finish() {
  if (dp_) dp_->finish();         // the summed gradients, before bf16 hands them to the masters
  precision_.grads_to_masters();  // bf16: clipping and the optimizer see the fp32 masters' gradients
  // clip_grad_norm_'s norm, in its dtype and operation order (the clipped values must not change by a bit).
  with_grad_.clear();
  for (const auto& [name, p] : trainable_) {
    if (p.grad().defined()) with_grad_.push_back(p);
  }
  if (with_grad_.empty()) {
    norm_ = at::Tensor();
    const auto device = trainable_.empty() ? at::Device(at::kCPU) : trainable_.front().second.device();
    return at::zeros({1}, at::TensorOptions(at::kDouble).device(device));  // beside the loss, on its device
  }
  std::vector<at::Tensor> norms;
  for (const auto& p : with_grad_) norms.push_back(p.grad().detach().norm(2.0));
  norm_ = norms.size() == 1 ? norms[0] : at::stack(norms).norm(2.0);
  return norm_.to(at::kDouble).reshape({1});
}

void ReplicatedSync::step(double lr, double /*grad_norm: norm_ holds it in the gradients' dtype*/) {
  if (norm_.defined()) {  // clip_grad_norm_: coefficient max_norm / (norm + 1e-6), clamped to at most 1
    const auto coef = at::clamp(max_norm_ / (norm_ + 1e-6), std::nullopt, 1.0);
    for (auto& p : with_grad_) p.grad().detach().mul_(coef);
  }
  for (size_t i = 0; i < groups_.size(); ++i) {
    static_cast<torch::optim::AdamWOptions&>(optim_->param_groups()[i].options()).lr(lr * groups_[i].lr_scale);
  }
  optim_->step();
}

NamedTensors ReplicatedSync::state() { return adamw_state_tensors(*optim_, trainable_); }

void ReplicatedSync::load_state(const NamedTensors& state) {
  optim_->state().clear();
  load_adamw_state(*optim_, trainable_, state);
}

void ReplicatedSync::load(const TrainingCheckpoint& ck) {
  load_state(adamw_runs_to_tensors(adamw_state_runs(ck, trainable_), trainable_));
}

void ReplicatedSync::add_held(HeldTensors& out) const {
  for (const auto& [key, state] : optim_->state()) {
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*state);
    for (const auto& t : {s.exp_avg(), s.exp_avg_sq(), s.max_exp_avg_sq()}) {
      if (t.defined()) out.optimizer.push_back(t);
    }
  }
  if (dp_) {
    for (const auto& b : dp_->buffers()) out.grads.push_back(b);
  }
}

DataParallelSync::DataParallelSync(std::shared_ptr<Comm> comm, torch::nn::Module& model,
                                   const std::vector<ParamGroup>& groups, const OptimConfig& optim,
                                   MixedPrecision& precision, int64_t bucket_bytes)
    : ReplicatedSync(groups, optim, precision, std::make_unique<DataParallel>(std::move(comm), model, bucket_bytes)) {}

ZeroSync::ZeroSync(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                   const OptimConfig& optim, MixedPrecision& precision, int stage, int64_t bucket_bytes,
                   const std::vector<std::vector<at::Tensor>>& blocks, ReduceDtype reduce_dtype,
                   ShardPlacement placement)
    : trainable_(named_params(groups)),
      precision_(precision),
      max_norm_(max_norm_of(optim)),
      zero_(std::make_unique<ZeroOptimizer>(std::move(comm), model, groups, optim, stage, bucket_bytes, blocks,
                                            sharded_masters(precision, reduce_dtype), std::move(placement))) {}

void ZeroSync::zero_grad() {
  drop_grads(trainable_);
  zero_->zero_grad();
}

at::Tensor ZeroSync::finish() {
  precision_.grads_to_masters();  // a no-op: with ZeRO the optimizer reads the bf16 gradients itself
  return zero_->finish();         // clipping happens inside the sharded step
}

void ZeroSync::load(const TrainingCheckpoint& ck) {
  // The checks in adamw_state_runs read the parameters' sizes: stage 3's released block parameters stand in as
  // meta tensors of their recorded shapes (nothing is gathered or allocated).
  const auto sharded = zero_->sharded_shapes();
  NamedTensors sized;
  for (const auto& [name, p] : trainable_) {
    const auto it = sharded.find(name);
    sized.emplace_back(name, it == sharded.end() ? p : at::empty(it->second, at::TensorOptions().device(at::kMeta)));
  }
  zero_->load_runs(adamw_state_runs(ck, sized));
}

NamedTensors ZeroSync::gather_masters(int64_t root) {
  return zero_->has_masters() ? zero_->gather_masters(root) : NamedTensors{};
}

void ZeroSync::load_masters(const std::map<std::string, at::Tensor>& state, const std::string& prefix) {
  if (zero_->has_masters()) zero_->load_masters(state, prefix);
}

Zero3Sync::Zero3Sync(std::shared_ptr<Comm> comm, torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                     const OptimConfig& optim, MixedPrecision& precision, int64_t bucket_bytes,
                     const std::vector<ShardedStack>& stacks, ReduceDtype reduce_dtype, bool prefetch,
                     ShardPlacement placement)
    : ZeroSync(std::move(comm), model, groups, optim, precision, 3, bucket_bytes, sharded_blocks(stacks),
               reduce_dtype, std::move(placement)) {
  install_zero3_runners(*zero_, stacks, prefetch);
}

GradientSync::Kind pick_gradient_sync(int64_t zero_stage, int64_t world_size) {
  if (zero_stage < 0 || zero_stage > 3) {
    throw std::invalid_argument(fmt::format("distributed.zero_stage must be 0, 1, 2 or 3, got {}", zero_stage));
  }
  if (zero_stage == 3) return GradientSync::Kind::kZero3;
  if (zero_stage >= 1) return GradientSync::Kind::kZero;
  return world_size > 1 ? GradientSync::Kind::kDataParallel : GradientSync::Kind::kReplicated;
}

const char* gradient_sync_name(GradientSync::Kind kind) {
  switch (kind) {
    case GradientSync::Kind::kReplicated:
      return "replicated";
    case GradientSync::Kind::kDataParallel:
      return "data-parallel all-reduce";
    case GradientSync::Kind::kZero:
      return "ZeRO 1/2";
    case GradientSync::Kind::kZero3:
      return "ZeRO 3";
  }
  return "?";
}

std::unique_ptr<GradientSync> make_gradient_sync(const RunConfig& cfg, std::shared_ptr<Comm> comm,
                                                 torch::nn::Module& model, const std::vector<ParamGroup>& groups,
                                                 MixedPrecision& precision, const std::vector<ShardedStack>& stacks,
                                                 ShardPlacement placement) {
  const int64_t world = comm ? comm->world_size() : 1;
  const auto stage = cfg.distributed.zero_stage;
  if ((placement.device || !placement.pending.empty()) && stage != 3)
    throw std::invalid_argument("make_gradient_sync: only ZeRO stage 3 places its shards on another device or takes "
                                "parameters in later");
  const auto& optim = cfg.optim;
  switch (pick_gradient_sync(stage, world)) {
    case GradientSync::Kind::kReplicated:  // bf16: the masters hold the gradients the optimizer reads
      return std::make_unique<ReplicatedSync>(
          groups, optim, precision,
          precision.mode() == Precision::kBf16 ? nullptr : std::make_unique<DataParallel>(nullptr, model, bucket_bytes_of(cfg)));
    case GradientSync::Kind::kDataParallel:
      return std::make_unique<DataParallelSync>(comm, model, groups, optim, precision, bucket_bytes_of(cfg));
    case GradientSync::Kind::kZero:
      return std::make_unique<ZeroSync>(comm, model, groups, optim, precision, static_cast<int>(stage),
                                        bucket_bytes_of(cfg), std::vector<std::vector<at::Tensor>>{},
                                        cfg.distributed.reduce_dtype);
    case GradientSync::Kind::kZero3:
      return std::make_unique<Zero3Sync>(comm, model, groups, optim, precision, bucket_bytes_of(cfg), stacks,
                                         cfg.distributed.reduce_dtype, cfg.distributed.prefetch, std::move(placement));
  }
  throw std::logic_error("make_gradient_sync: unknown strategy");
}

}  // namespace owl2
