// The parts a training run is composed of (trainers/setup.h, full_parameters.h, test_seam.h): the seeded model
// build, the order of the policies applied from outside, the full-parameter scope under ZeRO 3, the test seam.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <numeric>
#include <stdexcept>

#include <torch/torch.h>

#include "owl2/io/state_dict.h"
#include "tests/helpers.h"
#include "trainers/config.h"
#include "trainers/full_parameters.h"
#include "trainers/setup.h"
#include "trainers/test_seam.h"
#include "trainers/trainer.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_setup {

using Catch::Matchers::Contains;
using namespace owl2;

namespace {

RunConfig tiny_run() {
  const std::string dir = test::temp_dir("owl2_setup");
  std::ofstream(dir + "/run.yaml") << "include: " << test::source_path("configs/model/tiny.yaml") << "\n";
  return load_config(dir + "/run.yaml", {});
}

bool same_parameters(MPLUGOwl2ForCausalLM& a, MPLUGOwl2ForCausalLM& b) {
  auto pa = a->named_parameters(), pb = b->named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (const auto& item : pa) {
    if (!torch::equal(item.value(), pb[item.key()])) return false;
  }
  return true;
}

// The exit signal of a child process that runs `fn` and then exits 0.
template <class Fn>
int child_signal(Fn fn) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    fn();
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

}  // namespace

TEST_CASE("build_model: seeded initialisation in training mode, init.from unless load_init is false", "[setup]") {
  const RunConfig cfg = tiny_run();
  auto a = build_model(cfg);
  auto b = build_model(cfg);
  CHECK(a->is_training());
  CHECK(same_parameters(a, b));  // the seed fixes the initial weights
  RunConfig other_seed = cfg;
  other_seed.train.seed = cfg.train.seed + 1;
  auto c = build_model(other_seed);
  CHECK_FALSE(same_parameters(a, c));

  RunConfig from_missing = cfg;
  from_missing.init.from = "/nonexistent/owl2-weights";
  CHECK_THROWS(build_model(from_missing));
  auto d = build_model(from_missing, {.load_init = false});  // benchmarks keep the initial weights
  CHECK(same_parameters(a, d));
}

TEST_CASE("apply_training_policies: checkpointing runners, then the ViT, abstractor and decoder as the ZeRO 3 stacks",
          "[setup]") {
  RunConfig cfg = tiny_run();
  cfg.train.activation_checkpointing = {false, false, false};  // the defaults checkpoint the ViT and decoder
  auto model = build_model(cfg);
  auto none = apply_training_policies(model, cfg);
  CHECK(none.sharded_stacks.empty());
  CHECK_FALSE(static_cast<bool>(model->decoder_block_runner));
  CHECK_FALSE(static_cast<bool>(model->model->vision_model->block_runner));

  cfg.train.activation_checkpointing.vision = true;
  cfg.train.activation_checkpointing.decoder = true;
  auto ac = apply_training_policies(model, cfg);
  CHECK(ac.sharded_stacks.empty());
  CHECK(static_cast<bool>(model->model->vision_model->block_runner));
  CHECK_FALSE(static_cast<bool>(model->model->visual_abstractor->block_runner));
  CHECK(static_cast<bool>(model->decoder_block_runner));

  cfg.distributed.zero_stage = 3;
  auto z3 = apply_training_policies(model, cfg);
  REQUIRE(z3.sharded_stacks.size() == 3);  // in the order a forward pass runs them
  const auto& vision = z3.sharded_stacks[0];
  CHECK(vision.name == "vision");
  CHECK(vision.runner == &model->model->vision_model->block_runner);
  REQUIRE(vision.blocks.size() == model->model->vision_model->encoder->layers->size());
  CHECK(vision.blocks[0].get() == model->model->vision_model->encoder->layers->ptr(0).get());
  const auto& abstractor = z3.sharded_stacks[1];
  CHECK(abstractor.name == "abstractor");
  CHECK(abstractor.runner == &model->model->visual_abstractor->block_runner);
  REQUIRE(abstractor.blocks.size() == model->model->visual_abstractor->encoder->layers->size());
  CHECK(abstractor.blocks.back().get() == model->model->visual_abstractor->encoder->layers->ptr(
                                              model->model->visual_abstractor->encoder->layers->size() - 1).get());
  const auto& stack = z3.sharded_stacks[2];
  CHECK(stack.name == "decoder");
  CHECK(stack.runner == &model->decoder_block_runner);
  REQUIRE(stack.blocks.size() == model->model->layers->size());
  CHECK(stack.blocks[1].get() == model->model->layers->ptr(1).get());
}

TEST_CASE("FullParameters: the ZeRO 3 blocks are full inside the scope, shards after, kept on an exception",
          "[setup]") {
  RunConfig cfg = tiny_run();
  cfg.distributed.zero_stage = 3;
  auto model = build_model(cfg);
  const auto policies = apply_training_policies(model, cfg);
  const int64_t full_numel = model->model->layers->ptr(0)->parameters().at(0).numel();
  Trainer trainer(*model, model_loss_sum(model), cfg, nullptr, policies.sharded_stacks);
  auto block_numel = [&] { return model->model->layers->ptr(0)->parameters().at(0).numel(); };
  REQUIRE(block_numel() == 0);  // sharded by the Trainer
  {
    FullParameters full(trainer);
    CHECK(block_numel() == full_numel);
  }
  CHECK(block_numel() == 0);
  try {
    FullParameters full(trainer);
    throw std::runtime_error("failing run");
  } catch (const std::runtime_error&) {
  }
  CHECK(block_numel() == full_numel);  // not released while unwinding
  trainer.release_parameters();
  CHECK(block_numel() == 0);
}

TEST_CASE("TestSeam: kills only the named rank before the named step, on the first attempt", "[setup]") {
  ::unsetenv("TORCHELASTIC_RESTART_COUNT");
  ::unsetenv("OWL2_TEST_KILL_AT_STEP");
  ::unsetenv("OWL2_TEST_KILL_RANK");
  CHECK(child_signal([] { TestSeam::from_environment(0).before_step(0); }) == 0);  // nothing armed

  ::setenv("OWL2_TEST_KILL_AT_STEP", "3", 1);
  ::setenv("OWL2_TEST_KILL_RANK", "1", 1);
  CHECK(child_signal([] { TestSeam::from_environment(1).before_step(2); }) == 0);
  CHECK(child_signal([] { TestSeam::from_environment(0).before_step(3); }) == 0);  // another rank
  CHECK(child_signal([] { TestSeam::from_environment(1).before_step(3); }) == SIGKILL);
  ::setenv("TORCHELASTIC_RESTART_COUNT", "0", 1);
  CHECK(child_signal([] { TestSeam::from_environment(1).before_step(3); }) == SIGKILL);
  ::setenv("TORCHELASTIC_RESTART_COUNT", "1", 1);  // the restarted job runs through
  CHECK(child_signal([] { TestSeam::from_environment(1).before_step(3); }) == 0);
  ::unsetenv("TORCHELASTIC_RESTART_COUNT");
  ::unsetenv("OWL2_TEST_KILL_AT_STEP");
  ::unsetenv("OWL2_TEST_KILL_RANK");
}

TEST_CASE("TestSeam: a held-out evaluation fault throws on the named rank after the named step only", "[setup]") {
  ::setenv("OWL2_TEST_FAIL_EVAL_AT_STEP", "4", 1);
  ::setenv("OWL2_TEST_FAIL_EVAL_RANK", "1", 1);
  CHECK_NOTHROW(TestSeam::from_environment(1).during_eval(3));
  CHECK_NOTHROW(TestSeam::from_environment(0).during_eval(4));
  CHECK_THROWS_WITH(TestSeam::from_environment(1).during_eval(4), Contains("held-out evaluation fails at step 4"));
  ::unsetenv("OWL2_TEST_FAIL_EVAL_AT_STEP");
  ::unsetenv("OWL2_TEST_FAIL_EVAL_RANK");
  CHECK_NOTHROW(TestSeam::from_environment(1).during_eval(4));
}

// The full parameters of a ZeRO-3 Trainer's model, gathered, by name (copies).
std::map<std::string, torch::Tensor> gathered(Trainer& trainer, MPLUGOwl2ForCausalLM& model) {
  FullParameters full(trainer);
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model->named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

// Every parameter of `expected` has exactly its values in `values`, and nothing else is there.
void check_same_values(const std::map<std::string, torch::Tensor>& values, MPLUGOwl2ForCausalLM& expected) {
  REQUIRE(values.size() == expected->named_parameters().size());
  for (const auto& item : expected->named_parameters()) {
    INFO(item.key());
    CHECK(torch::equal(values.at(item.key()), item.value()));
  }
}

TEST_CASE("ZeRO 3 start-up: one parameter written at a time gives the whole-model init and the loaded weights "
          "exactly, every parameter ends empty on the training device",
          "[setup]") {
  RunConfig cfg = tiny_run();
  cfg.distributed.zero_stage = 3;
  cfg.model.initializer_range = 0.05;
  auto reference = build_model(cfg);  // the whole model written on the host, as below stage 3
  const torch::Device device(torch::kCPU);  // the training device (cuda:N on a GPU)
  TrainingModel built = build_training(cfg, {.device = device}, nullptr);
  for (const auto& item : built.model->named_parameters()) {
    INFO(item.key());
    CHECK(item.value().numel() == 0);  // only the shards hold values
    CHECK(item.value().device() == device);
  }
  int64_t numel = 0;
  for (const auto& [name, n] : built.sizes) numel += n;
  const auto params = reference->parameters();
  CHECK(numel == std::accumulate(params.begin(), params.end(), int64_t{0},
                                 [](int64_t a, const torch::Tensor& t) { return a + t.numel(); }));
  check_same_values(gathered(*built.trainer, built.model), reference);

  // LoRA: the adapters, added after the model was built, keep their own init, and the init draws nothing for them.
  RunConfig lora = cfg;
  lora.lora.rank = 4;
  auto with_adapters = build_model(lora);
  apply_training_policies(with_adapters, lora);
  TrainingModel adapted = build_training(lora, {.device = device}, nullptr);
  check_same_values(gathered(*adapted.trainer, adapted.model), with_adapters);

  // init.from: each loaded tensor is taken in as it is copied.
  RunConfig other = cfg;
  other.train.seed = cfg.train.seed + 11;
  auto source = build_model(other);
  const std::string dir = test::temp_dir("owl2_setup_z3load");
  save_state_dict(*source, dir);
  cfg.init.from = dir;
  TrainingModel loaded = build_training(cfg, {.device = device}, nullptr);
  check_same_values(gathered(*loaded.trainer, loaded.model), source);
  // With init.allow_missing the whole model is written first, then sharded: the same values.
  cfg.init.allow_missing = true;
  TrainingModel patched = build_training(cfg, {.device = device}, nullptr);
  check_same_values(gathered(*patched.trainer, patched.model), source);
}

TEST_CASE("ZeRO 3 start-up: a pending parameter never written is an error naming it", "[setup]") {
  RunConfig cfg = tiny_run();
  cfg.distributed.zero_stage = 3;
  auto model = build_model(cfg, {.defer_values = true});
  const auto policies = apply_training_policies(model, cfg);
  ShardPlacement placement;
  placement.pending = {model->lm_head->weight, model->model->norm->weight};
  Trainer trainer(*model, model_loss_sum(model), cfg, nullptr, policies.sharded_stacks, placement);
  CHECK(model->lm_head->weight.numel() > 0);  // kept as it is until written
  trainer.absorb(model->lm_head->weight);
  CHECK(model->lm_head->weight.numel() == 0);
  CHECK_THROWS_WITH(trainer.absorb(model->lm_head->weight), Contains("not pending"));
  CHECK_THROWS_WITH(trainer.finish_absorbing(), Contains("1 parameter(s) never received their values: model.norm.weight"));

  // Below stage 3 nothing is taken in later, and the shards stay on the parameters' device.
  cfg.distributed.zero_stage = 2;
  auto m2 = build_model(cfg);
  auto groups = resolve_param_groups(*m2, cfg.param_groups, cfg.optim.weight_decay, cfg.optim.vision_layer_decay,
                                     cfg.model.vision.num_hidden_layers);
  MixedPrecision precision(cfg.train.precision, *m2, groups, /*sharded_masters=*/true);
  ShardPlacement elsewhere;
  elsewhere.device = torch::Device(torch::kCPU);
  CHECK_THROWS_WITH(make_gradient_sync(cfg, nullptr, *m2, groups, precision, {}, elsewhere),
                    Contains("only ZeRO stage 3 places its shards on another device"));
}

TEST_CASE("load_tokenizer: a run without data.tokenizer names the key", "[setup]") {
  CHECK_THROWS_WITH(load_tokenizer(tiny_run()), Contains("data.tokenizer"));
}

}  // namespace owl2_test_setup
