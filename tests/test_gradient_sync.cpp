// The gradient-sync strategies: on one rank each one updates the parameters exactly as the replicated one
// (torch AdamW with clip_grad_norm_), and the factory picks the strategy from the ZeRO stage and the world size.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <vector>

#include "tests/toy_lm.h"
#include "trainers/parallel/gradient_sync.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_gradient_sync {

using Catch::Matchers::Contains;
using namespace owl2;
using namespace owl2::test;
using Kind = GradientSync::Kind;

namespace {

// A clip small enough to act on every step; 600-byte buckets (several per model).
RunConfig sync_config() {
  RunConfig cfg = toy_config();
  cfg.optim.grad_clip = 0.05;
  cfg.distributed.bucket_mb = 600.0 / (1 << 20);
  return cfg;
}

// A fresh StackLM with its parameter groups and fp32 precision policy, as the Trainer builds them.
struct Setup {
  Setup() : model(std::make_shared<StackLM>()) {
    groups = resolve_param_groups(*model, cfg.param_groups, cfg.optim.weight_decay, cfg.optim.vision_layer_decay,
                                  cfg.model.vision.num_hidden_layers);
    precision = std::make_unique<MixedPrecision>(Precision::kFp32, *model, groups);
  }
  RunConfig cfg = sync_config();
  std::shared_ptr<StackLM> model;
  std::vector<ParamGroup> groups;
  std::unique_ptr<MixedPrecision> precision;
};

std::unique_ptr<GradientSync> make(Kind kind, Setup& s) {
  const auto& o = s.cfg.optim;
  const int64_t bucket = 600;
  switch (kind) {
    case Kind::kReplicated:
      return std::make_unique<ReplicatedSync>(s.groups, o, *s.precision);
    case Kind::kDataParallel:  // a one-rank process group: the same code without collectives
      return std::make_unique<DataParallelSync>(std::make_shared<Comm>(DistEnv{}, std::chrono::seconds(10), false),
                                                *s.model, s.groups, o, *s.precision, bucket);
    case Kind::kZero:
      return std::make_unique<ZeroSync>(nullptr, *s.model, s.groups, o, *s.precision, 2, bucket);
    case Kind::kZero3:
      return std::make_unique<Zero3Sync>(nullptr, *s.model, s.groups, o, *s.precision, bucket,
                                         std::vector<ShardedStack>{s.model->stack()});
  }
  return nullptr;
}

// Three optimizer steps of two micro-batches each, driven as Trainer::step drives a sync; returns the
// parameters (gathered) and appends each step's gradient norm.
std::vector<torch::Tensor> train(GradientSync& sync, StackLM& m, std::vector<double>& norms) {
  for (int64_t step = 0; step < 3; ++step) {
    sync.zero_grad();
    const auto a = make_batch(2, 6, 10 + step), b = make_batch(1, 6, 20 + step, /*masked=*/2);
    const double inv_tokens = 1.0 / double(a.label_tokens() + b.label_tokens());
    (m.loss_sum(a) * inv_tokens).backward();
    sync.arm();
    (m.loss_sum(b) * inv_tokens).backward();
    norms.push_back(sync.finish().item<double>());
    sync.step(1e-2 * (step + 1), norms.back());
  }
  sync.gather_parameters();
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  sync.release_parameters();
  return out;
}

}  // namespace

TEST_CASE("every gradient sync on one rank updates the parameters as the replicated one", "[train][sync]") {
  Setup ref_setup;
  std::vector<double> ref_norms;
  const auto reference = train(*make(Kind::kReplicated, ref_setup), *ref_setup.model, ref_norms);
  REQUIRE(ref_norms[0] > 0.05);  // clipping is active
  for (const auto stage : {1, 2}) {
    INFO("ZeRO stage " << stage);
    Setup s;
    ZeroSync sync(nullptr, *s.model, s.groups, s.cfg.optim, *s.precision, stage, 600);
    std::vector<double> norms;
    const auto params = train(sync, *s.model, norms);
    for (size_t i = 0; i < norms.size(); ++i) CHECK(norms[i] == Approx(ref_norms[i]).epsilon(1e-12));
    REQUIRE(params.size() == reference.size());
    for (size_t i = 0; i < params.size(); ++i) CHECK((params[i] - reference[i]).abs().max().item<double>() < 1e-12);
  }
  for (const auto kind : {Kind::kDataParallel, Kind::kZero3}) {
    INFO(gradient_sync_name(kind));
    Setup s;
    const auto sync = make(kind, s);
    REQUIRE(sync->kind() == kind);
    std::vector<double> norms;
    const auto params = train(*sync, *s.model, norms);
    for (size_t i = 0; i < norms.size(); ++i) CHECK(norms[i] == Approx(ref_norms[i]).epsilon(1e-12));
    REQUIRE(params.size() == reference.size());
    for (size_t i = 0; i < params.size(); ++i) CHECK((params[i] - reference[i]).abs().max().item<double>() < 1e-12);
  }
}

TEST_CASE("the gradient sync is picked from the ZeRO stage and the world size", "[train][sync]") {
  CHECK(pick_gradient_sync(0, 1) == Kind::kReplicated);
  CHECK(pick_gradient_sync(0, 2) == Kind::kDataParallel);
  CHECK(pick_gradient_sync(0, 8) == Kind::kDataParallel);
  for (const int64_t world : {1, 2, 3}) {
    CHECK(pick_gradient_sync(1, world) == Kind::kZero);
    CHECK(pick_gradient_sync(2, world) == Kind::kZero);
    CHECK(pick_gradient_sync(3, world) == Kind::kZero3);
  }
  REQUIRE_THROWS_WITH(pick_gradient_sync(4, 1), Contains("distributed.zero_stage must be 0, 1, 2 or 3, got 4"));
  // What make_gradient_sync builds on one rank (no comm, or a one-rank comm: replicated, not data parallel).
  const auto one_rank = std::make_shared<Comm>(DistEnv{}, std::chrono::seconds(10), false);
  for (const auto& [stage, comm, kind] : std::vector<std::tuple<int64_t, std::shared_ptr<Comm>, Kind>>{
           {0, nullptr, Kind::kReplicated},
           {0, one_rank, Kind::kReplicated},
           {1, nullptr, Kind::kZero},
           {2, one_rank, Kind::kZero},
           {3, nullptr, Kind::kZero3}}) {
    INFO("stage " << stage);
    Setup s;
    s.cfg.distributed.zero_stage = stage;
    const auto sync = make_gradient_sync(s.cfg, comm, *s.model, s.groups, *s.precision, {s.model->stack()});
    CHECK(sync->kind() == kind);
    CHECK((sync->zero() != nullptr) == (stage >= 1));
    CHECK(sync->data_parallel() == nullptr);
    CHECK(sync->manifest().is_null() == (stage == 0));
    if (stage == 3) CHECK(dynamic_cast<Zero3Sync*>(sync.get()) != nullptr);
    if (stage == 0) CHECK(dynamic_cast<ReplicatedSync*>(sync.get()) != nullptr);
  }
  Setup s;
  s.cfg.distributed.zero_stage = 3;
  REQUIRE_THROWS_WITH(make_gradient_sync(s.cfg, nullptr, *s.model, s.groups, *s.precision),
                      Contains("ZeRO 3: the model has no block stack to shard"));
}

}  // namespace owl2_test_gradient_sync
