// The training driver; see run.h. The loop: gather micro-batches, Trainer::step, log, checkpoint, evaluate.
#include "trainers/run.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "data/dataset.h"
#include "data/example.h"
#include "data/loader.h"
#include "owl2/model/model.h"
#include "owl2/io/state_dict.h"
#include "owl2/io/weights.h"
#include "trainers/activation_checkpoint.h"
#include "trainers/checkpoint.h"
#include "trainers/parallel/distributed.h"
#include "trainers/infer/evaluate.h"
#include "trainers/metrics.h"
#include "trainers/plan.h"
#include "trainers/trainer.h"
#include "trainers/parallel/zero.h"

namespace owl2 {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
using ExampleLoader = data::Loader<Example, Batch>;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::shared_ptr<const data::Dataset> open_sources(const DataConfig& d, uint64_t seed) {
  if (d.sources.empty()) throw ConfigError("data.sources: a training run needs at least one data source");
  data::ReadOptions ro;
  ro.max_bad_fraction = d.max_bad_fraction;
  std::vector<data::MixtureSource> mix;
  size_t total = 0;
  for (const auto& s : d.sources) {
    mix.push_back({data::open_dataset(s.path, ro), s.weight});
    total += mix.back().dataset->size();
  }
  if (mix.size() == 1) return mix[0].dataset;
  return data::make_mixture(mix, total, seed);
}

// Model FLOPs of one sample-token mix, from the planner's formula, for the MFU column.
// Test hook for the restart test (docs/distributed.md): OWL2_TEST_KILL_AT_STEP=k and OWL2_TEST_KILL_RANK=r
// make rank r SIGKILL itself before step k, on the first attempt only (TORCHELASTIC_RESTART_COUNT unset
// or 0), so that the restarted job runs through. -1 when not set.
int64_t test_kill_step(int64_t rank) {
  const char* step = std::getenv("OWL2_TEST_KILL_AT_STEP");
  const char* who = std::getenv("OWL2_TEST_KILL_RANK");
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  if (!step || !who || (restarts && std::string(restarts) != "0")) return -1;
  return std::atoll(who) == rank ? std::atoll(step) : -1;
}

double step_flops(const RunConfig& cfg, MPLUGOwl2ForCausalLM& model, int64_t world) {
  NamedSizes sizes;
  for (const auto& item : model->named_parameters()) sizes.emplace_back(item.key(), item.value().numel());
  PlanInputs in;
  in.world_size = world;
  return make_plan(cfg, sizes, in).flops_per_step;
}

}  // namespace

int run_training(const RunConfig& cfg, const RunOptions& options) {
  const auto& t = cfg.train;
  const DistEnv env = DistEnv::from_environment();
  auto comm = std::make_shared<Comm>(env, std::chrono::seconds(cfg.distributed.timeout_s), /*cuda=*/false);
  const bool lead = env.rank == 0;
  const fs::path run_dir = t.out_dir;
  fs::create_directories(run_dir);
  if (lead) std::ofstream(run_dir / "config.yaml") << options.config_text;
  const int64_t accum = t.global_batch_size / (t.micro_batch_size * env.world_size);
  if (accum < 1 || t.global_batch_size % (t.micro_batch_size * env.world_size) != 0) {
    throw ConfigError(fmt::format("train.global_batch_size {} is not a multiple of train.micro_batch_size {} x {} ranks",
                                  t.global_batch_size, t.micro_batch_size, env.world_size));
  }

  // Model: documented init, then the configured starting weights.
  torch::manual_seed(static_cast<uint64_t>(t.seed));
  MPLUGOwl2ForCausalLM model(cfg.model);
  model->reset_parameters();
  if (!cfg.init.from.empty()) {
    LoadOptions lo;
    lo.allow_missing = cfg.init.allow_missing;
    const auto summary = load_model_weights(model, cfg.init.from, lo);
    if (lead) std::cerr << "init: " << cfg.init.from << ": " << summary << "\n";
  }
  model->train();
  const auto& ac = t.activation_checkpointing;  // applied from outside the model
  if (ac.vision) model->model->vision_model->block_runner = checkpointing_runner();
  if (ac.abstractor) model->model->visual_abstractor->block_runner = checkpointing_runner();
  if (ac.decoder) model->decoder_block_runner = checkpointing_runner();

  // Data.
  if (cfg.data.tokenizer.empty()) throw ConfigError("data.tokenizer: a training run needs a SentencePiece model");
  auto tokenizer = std::make_shared<const Tokenizer>(cfg.data.tokenizer);
  if (tokenizer->vocab_size() > cfg.model.decoder.vocab_size) {
    throw ConfigError(fmt::format("data.tokenizer {} has {} tokens, more than model.decoder.vocab_size {}",
                                  cfg.data.tokenizer, tokenizer->vocab_size(), cfg.model.decoder.vocab_size));
  }
  ExampleOptions eo;
  eo.image.size = cfg.model.vision.image_size;
  eo.image.mode = cfg.data.image_mode;
  eo.augment = cfg.data.augment;
  eo.seed = static_cast<uint64_t>(t.seed);
  eo.chat_template = cfg.data.chat_template;
  auto builder = std::make_shared<ExampleBuilder>(tokenizer, eo);
  auto dataset = open_sources(cfg.data, static_cast<uint64_t>(t.seed));
  data::LoaderOptions lo;
  lo.batch_size = static_cast<size_t>(t.micro_batch_size);
  lo.seed = static_cast<uint64_t>(t.seed);
  lo.rank = static_cast<int>(env.rank);
  lo.world_size = static_cast<int>(env.world_size);
  lo.num_workers = static_cast<int>(cfg.data.num_workers);
  lo.group_by_modality = cfg.data.group_by_modality;
  lo.max_length = t.max_length;
  lo.length_policy = cfg.data.length_policy;
  const int64_t vis = cfg.model.visual_tokens_per_image();
  ExampleLoader::LengthHooks hooks{[vis](const Example& e) { return spliced_length(e, vis); },
                                   [vis](Example& e, int64_t max) { truncate_example(e, max, vis); }};
  ExampleLoader loader(dataset, lo, [builder](data::RawSample&& s) { return (*builder)(std::move(s)); },
                       [](std::vector<Example>&& ex) { return collate(std::move(ex)); }, hooks);

  // ZeRO 3 shards the decoder layers only: the vision tower and the abstractor are skipped on text-only
  // batches, which would leave ranks in different per-block collectives (docs/distributed.md, "ZeRO stage 3").
  std::vector<ShardedStack> stacks;
  if (cfg.distributed.zero_stage == 3) {
    ShardedStack decoder{"decoder", {}, &model->decoder_block_runner};
    for (size_t i = 0; i < model->model->layers->size(); ++i) decoder.blocks.push_back(model->model->layers->ptr(i));
    stacks.push_back(decoder);
  }
  const double flops = step_flops(cfg, model, env.world_size);  // before ZeRO 3 empties the block parameters
  Trainer trainer(*model, [&](const Batch& b) {
    ModelInputs in{b.input_ids, b.attention_mask, b.images, b.labels};
    return model->forward(in).loss_sum;
  }, cfg, comm, stacks);
  if (lead) std::cerr << "parameters:\n" << trainer.freeze_table() << "optimizer groups:\n" << trainer.groups_table();

  // Resume.
  CheckpointManager ckpts((run_dir / "checkpoints").string(), static_cast<int>(t.keep_last));
  if (options.resume) {
    auto res = ckpts.resume();
    if (lead && !res.skipped.empty()) std::cerr << res.summary() << "\n";
    if (res.checkpoint) {
      const auto& c = *res.checkpoint;
      const auto model_it = c.tensors.find("model");
      if (model_it == c.tensors.end()) throw std::runtime_error(res.dir + ": checkpoint has no model tensors");
      std::map<std::string, torch::Tensor> m(model_it->second.begin(), model_it->second.end());
      try {
        trainer.gather_parameters();  // ZeRO 3: load into full blocks; the release reshards them
        trainer.precision().load_model_state(m, res.dir);  // bf16: the fp32 masters too
        trainer.release_parameters();
      } catch (const std::exception& e) {
        throw std::runtime_error(fmt::format("cannot resume from {}: its model does not match this config: {}", res.dir,
                                             e.what()));
      }
      trainer.load_optimizer_from(c);  // any world size and ZeRO stage: the state reshards
      restore_rng_states(c.tensors.at("rng"));
      trainer.set_counters(c.scheduler.at("step").get<int64_t>(), c.scheduler.value("nonfinite_in_a_row", 0));
      loader.load_state(reshard_loader_state(data::state_from_json(c.data_position.dump()),
                                             c.scheduler.value("world_size", int64_t{1}), env.world_size));
      if (lead) std::cerr << "resumed from " << res.dir << " at step " << trainer.step_count() << "\n";
    }
  }

  // Rank 0 writes the replicated model, RNG and records; with ZeRO every rank adds its optimizer shard
  // (docs/distributed.md, "Checkpoints").
  auto save = [&]() {
    TrainingCheckpoint c;
    c.step = trainer.step_count();
    trainer.gather_parameters();  // ZeRO 3: every rank gathers, rank 0 writes the complete model
    if (lead) {
      c.tensors["model"] = trainer.precision().model_state();  // bf16: fp32 masters, for an exact resume
      c.tensors["rng"] = capture_rng_states();
    }
    if (trainer.zero()) {
      c.rank_tensors[zero_shard_group(env.rank)] = trainer.optimizer_state();
      c.extra["zero"] = trainer.optimizer_manifest();
    } else if (lead) {
      c.tensors["optimizer"] = trainer.optimizer_state();
    }
    c.scheduler = {{"step", trainer.step_count()},
                   {"nonfinite_in_a_row", trainer.nonfinite_in_a_row()},
                   {"world_size", env.world_size}};
    c.data_position = nlohmann::json::parse(data::state_to_json(loader.state()));
    c.config_text = options.config_text;
    auto dir = ckpts.save(c, SaveGroup{env.rank, env.world_size, [&](const std::string& what) { comm->barrier(what); }});
    c.tensors.clear();  // they alias the gathered parameters
    trainer.release_parameters();
    return dir;
  };

  std::vector<HeldoutQuestion> heldout;
  EvalOptions evo;
  if (!cfg.eval.heldout.empty()) {
    heldout = read_heldout(cfg.eval.heldout);
    evo.batch_size = cfg.eval.batch_size;
    evo.max_new_tokens = cfg.eval.max_new_tokens;
    evo.limit = cfg.eval.limit;
    evo.chat_template = cfg.data.chat_template;
    evo.image.size = cfg.model.vision.image_size;
    evo.image.mode = cfg.data.image_mode;
  }

  MetricsLogger log((run_dir / fmt::format("metrics{}.jsonl", lead ? "" : "." + std::to_string(env.rank))).string(),
                    t.steps, peak_flops_for_device(), lead && isatty(STDERR_FILENO), stderr,
                    lead ? t.log_every : t.steps + 1);
  if (trainer.data_parallel() && lead) {
    log.note(fmt::format("gradient all-reduce without overlap (calibration): {:.4f} s",
                         trainer.data_parallel()->unoverlapped_comm_seconds()));
  }
  const int64_t kill_at = test_kill_step(env.rank);
  int64_t done_here = 0;
  while (trainer.step_count() < t.steps) {
    if (trainer.step_count() == kill_at) ::raise(SIGKILL);
    const auto t0 = Clock::now();
    std::vector<Batch> micro;
    int64_t input_tokens = 0;
    while (static_cast<int64_t>(micro.size()) < accum) {
      auto b = loader.next();
      if (!b) {
        loader.set_epoch(loader.state().epoch + 1);
        continue;
      }
      input_tokens += b->attention_mask.sum().item<int64_t>() +
                      (b->images.defined() ? b->images.size(0) * (vis - 1) : 0);
      micro.push_back(std::move(*b));
    }
    const double data_s = seconds_since(t0);
    const auto r = trainer.step(micro);
    StepMetrics m;
    m.step = r.step;
    m.loss = r.loss;
    m.lr = r.lr;
    m.grad_norm = r.grad_norm;
    m.tokens = r.tokens;
    m.samples = r.samples;
    m.input_tokens = input_tokens * env.world_size;
    m.skipped = r.skipped;
    m.step_seconds = seconds_since(t0);
    m.data_seconds = data_s;
    m.flops = flops;
    const auto counters = loader.counters();
    m.skipped_samples = counters.transform_errors + counters.dropped_too_long;
    m.peak_memory_bytes = peak_rss_bytes();
    if (env.world_size > 1) {  // blocked in collectives: the communication not hidden behind compute
      m.extra["comm_wait_s"] = r.comm_wait_s;
      m.extra["grad_wait_s"] = r.grad_wait_s;
    }
    const int64_t step = trainer.step_count();
    const bool last = step == t.steps;
    const bool eval_now = !heldout.empty() && ((cfg.eval.every > 0 && step % cfg.eval.every == 0) || last);
    if (eval_now) trainer.gather_parameters();  // ZeRO 3: rank 0 evaluates alone, so no per-block gathers
    if (eval_now && lead) {
      const auto er = evaluate_heldout(model, *tokenizer, heldout, evo);
      m.extra["eval_short_answer_accuracy"] = er.short_answer_accuracy;
      for (const auto& [type, acc] : er.accuracy) m.extra["eval_" + type] = acc;
      if (er.count.count("caption")) m.extra["eval_caption_cider"] = er.caption_cider;
      log.note(fmt::format("eval at step {}:\n{}", step, er.table()));
      if (last) {
        nlohmann::json j;
        j["step"] = step;
        j["short_answer_accuracy"] = er.short_answer_accuracy;
        j["accuracy"] = er.accuracy;
        j["count"] = er.count;
        j["caption_cider"] = er.caption_cider;
        std::ofstream(run_dir / "eval.json") << j.dump(2) << "\n";
        std::ofstream preds(run_dir / "predictions.jsonl");
        for (const auto& [q, p] : er.predictions) {
          preds << nlohmann::json{{"question_id", q.id}, {"type", q.type}, {"answer", q.answer}, {"prediction", p}}.dump()
                << "\n";
        }
      }
    }
    if (eval_now) trainer.release_parameters();
    log.log(m);
    ++done_here;
    if ((t.save_every > 0 && step % t.save_every == 0) || last) {
      const auto dir = save();
      if (lead) log.note("saved " + dir);
    }
    if (options.stop_after > 0 && done_here >= options.stop_after) break;
  }
  if (trainer.step_count() >= t.steps) trainer.gather_parameters();  // ZeRO 3: the complete model
  if (trainer.step_count() >= t.steps && lead) {
    const auto out = run_dir / "final";
    trainer.precision().end_to_fp32();  // bf16: export the fp32 masters, not their rounding
    save_state_dict(*model, out.string());
    std::ofstream(out / "config.yaml") << options.config_text;
    std::cerr << "final weights: " << out.string() << "\n";
  }
  comm->barrier("final barrier");
  return 0;
}

}  // namespace owl2
