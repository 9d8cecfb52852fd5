// The training driver; see run.h. run_training composes the parts (setup.h, checkpoint.h) and train_loop runs
// the steps: gather micro-batches, Trainer::step, log, evaluate, checkpoint.
#include "trainers/run.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "owl2/infer/device.h"
#include "owl2/io/fileio.h"
#include "owl2/io/lora_files.h"
#include "owl2/io/state_dict.h"
#include "trainers/checkpoint.h"
#include "trainers/full_parameters.h"
#include "trainers/infer/evaluate.h"
#include "trainers/io/hf_io.h"
#include "trainers/io/model_dir.h"
#include "trainers/metrics.h"
#include "trainers/parallel/distributed.h"
#include "trainers/plan.h"
#include "trainers/prefetch.h"
#include "trainers/setup.h"
#include "trainers/tensorboard.h"
#include "trainers/test_seam.h"
#include "trainers/trainer.h"

namespace owl2 {
namespace fs = std::filesystem;

namespace {

// Micro-batches per optimizer step on each rank.
int64_t accumulation_steps(const TrainConfig& t, int64_t world_size) {
  const int64_t accum = t.global_batch_size / (t.micro_batch_size * world_size);
  if (accum < 1 || t.global_batch_size % (t.micro_batch_size * world_size) != 0) {
    throw ConfigError(fmt::format(
        "train.global_batch_size {} is not a multiple of train.micro_batch_size {} x {} ranks", t.global_batch_size,
        t.micro_batch_size, world_size));
  }
  return accum;
}

// Model FLOPs of one sample-token mix, from the planner's formula, for the MFU column.
double step_flops(const RunConfig& cfg, const NamedSizes& sizes, int64_t world) {
  PlanInputs in;
  in.world_size = world;
  return make_plan(cfg, sizes, in).flops_per_step;
}

// Held-out evaluation during training (eval.*): the questions, read once, and how they are answered.
struct HeldoutEval {
  std::vector<HeldoutQuestion> questions;  // empty: no evaluation
  EvalOptions options;
  int64_t every = 0;
  bool due(int64_t step, bool last) const { return !questions.empty() && ((every > 0 && step % every == 0) || last); }
};

HeldoutEval make_heldout_eval(const RunConfig& cfg) {
  HeldoutEval h;
  if (cfg.eval.heldout.empty()) return h;
  h.questions = read_heldout(cfg.eval.heldout);
  h.every = cfg.eval.every;
  h.options.batch_size = cfg.eval.batch_size;
  h.options.max_new_tokens = cfg.eval.max_new_tokens;
  h.options.limit = cfg.eval.limit;
  h.options.chat_template = cfg.data.chat_template;
  h.options.image.size = cfg.model.vision.image_size;
  h.options.image.mode = cfg.data.image_mode;
  return h;
}

// What the loop works with; run_training owns all of it.
struct TrainingRun {
  const RunConfig& cfg;
  const RunOptions& options;
  const DistEnv& env;
  Comm& comm;
  fs::path dir;
  MPLUGOwl2ForCausalLM model;
  const Tokenizer& tokenizer;
  DevicePrefetcher& data;  // the loader's global batches on the training device
  Trainer& trainer;
  CheckpointManager& ckpts;
  const HeldoutEval& heldout;
  MetricsLogger& log;
  int64_t accum = 1;
  double flops = 0;
  const TrainingPolicies& policies;
  std::string last_checkpoint;  // saved by this invocation at its last step (empty: none yet)
  bool lead() const { return env.rank == 0; }
};

StepMetrics step_metrics(const TrainingRun& run, const StepResult& r, const GlobalBatch& batch,
                         const StepTimes& times) {
  StepMetrics m;
  m.step = r.step;
  m.loss = r.loss;
  m.lr = r.lr;
  m.grad_norm = r.grad_norm;
  m.tokens = r.tokens;
  m.samples = r.samples;
  m.input_tokens = batch.input_tokens * run.env.world_size;
  m.skipped = r.skipped;
  m.step_seconds = times.step_seconds;
  m.data_seconds = times.data_seconds;
  m.flops = run.flops;
  const auto counters = run.data.counters();  // as of this step's batch, not the one loaded ahead
  m.skipped_samples = counters.transform_errors + counters.dropped_too_long;
  m.peak_memory_bytes = peak_rss_bytes();
  m.device_peak_memory_bytes = take_device_peak_memory_bytes(run.data.device());
  if (run.env.world_size > 1) {  // blocked in collectives: the communication not hidden behind compute
    m.extra["comm_wait_s"] = r.comm_wait_s;
    m.extra["grad_wait_s"] = r.grad_wait_s;
  }
  return m;
}

// eval.json (the scores) and predictions.jsonl (one line per question) in `dir`.
void write_eval_results(const EvalResult& er, int64_t step, const fs::path& dir) {
  nlohmann::json j;
  j["step"] = step;
  j["short_answer_accuracy"] = er.short_answer_accuracy;
  j["accuracy"] = er.accuracy;
  j["count"] = er.count;
  j["caption_cider"] = er.caption_cider;
  std::ofstream(dir / "eval.json") << j.dump(2) << "\n";
  std::ofstream preds(dir / "predictions.jsonl");
  for (const auto& [q, p] : er.predictions) {
    preds << nlohmann::json{{"question_id", q.id}, {"type", q.type}, {"answer", q.answer}, {"prediction", p}}.dump()
          << "\n";
  }
}

// The held-out evaluation after `step`, on every rank: the questions' batches are dealt out to the ranks
// (batch k to rank k mod W, so each batch is answered exactly as one process would), the answers gathered, and
// rank 0 scores them. The scores go into the step's metrics (eval_*) and the table into the log; after the last
// step also eval.json and predictions.jsonl. All ranks call it. ZeRO 3 gathers no model for it: the blocks are
// gathered one at a time as the passes run, and the ranks generate in lockstep (each runs the same number of
// batches, an empty one where it has no more questions).
void evaluate_during_training(TrainingRun& run, const TestSeam& seam, int64_t step, bool last, StepMetrics& m) {
  ShardedPasses passes(run.trainer);
  const auto& opt = run.heldout.options;
  std::vector<HeldoutQuestion> qs = run.heldout.questions;
  if (opt.limit > 0 && static_cast<int64_t>(qs.size()) > opt.limit) qs.resize(static_cast<size_t>(opt.limit));
  const auto batch = static_cast<size_t>(opt.batch_size), W = static_cast<size_t>(run.env.world_size);
  std::vector<HeldoutQuestion> mine;
  for (size_t start = batch * static_cast<size_t>(run.env.rank); start < qs.size(); start += batch * W)
    mine.insert(mine.end(), qs.begin() + static_cast<std::ptrdiff_t>(start),
                qs.begin() + static_cast<std::ptrdiff_t>(std::min(qs.size(), start + batch)));
  const size_t batches = (qs.size() + batch - 1) / batch, rounds = (batches + W - 1) / W;
  seam.during_eval(step);
  const auto answers = answer_heldout(run.model, run.tokenizer, mine, opt, passes.lockstep(), static_cast<int64_t>(rounds));
  const auto gathered = run.comm.allgather_strings(nlohmann::json(answers).dump(), fmt::format("held-out answers at step {}", step));
  if (!run.lead()) return;
  std::vector<std::vector<std::string>> per_rank;
  for (const auto& g : gathered) per_rank.push_back(nlohmann::json::parse(g).get<std::vector<std::string>>());
  std::vector<std::pair<HeldoutQuestion, std::string>> predictions;
  std::vector<size_t> used(W, 0);
  for (size_t start = 0, k = 0; start < qs.size(); start += batch, ++k) {
    for (size_t i = start; i < std::min(qs.size(), start + batch); ++i) predictions.emplace_back(qs[i], per_rank.at(k % W).at(used[k % W]++));
  }
  const auto er = score_heldout(std::move(predictions));
  m.extra["eval_short_answer_accuracy"] = er.short_answer_accuracy;
  for (const auto& [type, acc] : er.accuracy) m.extra["eval_" + type] = acc;
  if (er.count.count("caption")) m.extra["eval_caption_cider"] = er.caption_cider;
  run.log.note(fmt::format("eval at step {}:\n{}", step, er.table()));
  run.log.text("eval/heldout", er.markdown(), m.step);
  if (last) write_eval_results(er, step, run.dir);
}

// LoRA: the adapter in PEFT's layout (owl2/io/lora_files.h) in DIR/adapter (DIR: the checkpoint just saved),
// written by rank 0. Under ZeRO it is read back from the checkpoint's files (the float32 values in the ranks'
// shards), so no rank gathers the model or the masters; else from the trainer's state (float32 masters under
// bf16). All ranks call it.
void save_adapter(TrainingRun& run, const fs::path& dir) {
  if (run.trainer.zero()) {
    if (run.lead()) write_checkpoint_adapter(dir.string(), (dir / "adapter").string(), run.policies.lora_saved_modules);
    return;
  }
  FullParameters full(run.trainer);
  if (!run.lead()) return;
  save_lora_adapter((dir / "adapter").string(), run.trainer.precision().model_state(), run.cfg.lora,
                    run.policies.lora_saved_modules, run.cfg.init.from);
}

// RUN/final, a model folder (trainers/io/model_dir.h) written by rank 0: the final weights (float32, reference
// names), a copy of the tokenizer and the run's config naming it relatively, written last so that an interrupted
// export never looks complete. All ranks call it.
// LoRA: final/adapter/ holds the adapter, and the weights are the merged model (lora_files.h; docs/lora.md).
void export_final(TrainingRun& run) {
  if (run.trainer.zero() && !run.last_checkpoint.empty()) {
    // ZeRO: the checkpoint every rank just wrote holds every weight (the trainable ones in the ranks' shards, as
    // float32 masters in bf16). Rank 0 puts them together from disk one tensor at a time, in float32 as the
    // gathered export would (LoRA: the adapter written, then merged in); no rank gathers the model.
    if (!run.lead()) return;
    ConsolidateOptions o;
    o.dtype = torch::kFloat32;
    o.tokenizer = run.cfg.data.tokenizer;
    o.merge_lora = true;
    o.lora_saved_modules = run.policies.lora_saved_modules;
    consolidate_checkpoint(run.last_checkpoint, (run.dir / "final").string(), o);
    std::cerr << "final weights: " << (run.dir / "final").string() << " (from " << run.last_checkpoint << ")\n";
    return;
  }
  FullParameters full(run.trainer);  // ZeRO 3: the complete model
  if (!run.lead()) return;
  const auto out = run.dir / "final";
  run.trainer.precision().end_to_fp32();  // bf16: export the fp32 masters, not their rounding
  RunConfig saved = run.cfg;
  if (run.cfg.lora.rank > 0) {
    save_lora_adapter((out / "adapter").string(), module_state(*run.model), run.cfg.lora, run.policies.lora_saved_modules,
                      run.cfg.init.from);
    merge_lora(*run.model);
    saved.lora.rank = 0;  // the folder's weights are merged: loading it adds no adapter
  }
  save_state_dict(*run.model, out.string());
  saved.data.tokenizer = copy_tokenizer_into(run.cfg.data.tokenizer, out.string());
  write_file_atomic((out / "config.yaml").string(), to_yaml(saved));
  std::cerr << "final weights: " << out.string() << "\n";
}

// The step loop, until train.steps (or options.stop_after steps of this invocation).
void train_loop(TrainingRun& run) {
  const auto& t = run.cfg.train;
  const TestSeam seam = TestSeam::from_environment(run.env.rank);
  const SaveGroup group{run.env.rank, run.env.world_size, [&](const std::string& what) { run.comm.barrier(what); }};
  StepTimer timer(run.data.device());
  int64_t done_here = 0;
  while (run.trainer.step_count() < t.steps) {
    seam.before_step(run.trainer.step_count());
    timer.start();
    const GlobalBatch batch = run.data.next();  // CUDA: the compute stream waits for its copy
    timer.data_ready();
    const StepResult r = run.trainer.step(batch.micro, batch.label_tokens);
    StepMetrics m = step_metrics(run, r, batch, timer.stop());
    const int64_t step = run.trainer.step_count();
    const bool last = step == t.steps;
    ++done_here;
    // The checkpoint first, then the held-out evaluation: an evaluation that fails (on any rank) ends the run
    // with the step's checkpoint already complete, so a restart resumes from it.
    if ((t.save_every > 0 && step % t.save_every == 0) || last) {
      const data::LoaderState position = run.data.state();
      std::vector<data::LoaderState> every_rank;  // streaming: each rank has its own position
      if (position.streaming()) {
        for (const auto& s : run.comm.allgather_strings(data::state_to_json(position),
                                                        fmt::format("data positions at step {}", step)))
          every_rank.push_back(data::state_from_json(s));
      }
      const auto dir = save_training_checkpoint(run.ckpts, run.trainer, position, run.options.config_text, group,
                                                every_rank);
      if (run.cfg.lora.rank > 0) save_adapter(run, dir);
      if (last) run.last_checkpoint = dir;
      if (run.lead()) run.log.note("saved " + dir);
    }
    if (run.heldout.due(step, last)) {
      try {
        evaluate_during_training(run, seam, step, last, m);
      } catch (...) {
        run.log.log(m);  // the step's training metrics, without the evaluation's
        throw;
      }
    }
    run.log.log(m);
    if (run.options.stop_after > 0 && done_here >= run.options.stop_after) break;
  }
}

}  // namespace

int run_training(const RunConfig& cfg, const RunOptions& options) {
  const auto& t = cfg.train;
  const DistEnv env = DistEnv::from_environment();
  // train.device: cuda:LOCAL_RANK with NCCL between the ranks, or the CPU with Gloo (exit 2 when cuda is asked
  // for and there is none).
  const torch::Device device = resolve_device({t.device}, env.local_rank, "train.device");
  use_device(device);
  auto comm = std::make_shared<Comm>(env, std::chrono::seconds(cfg.distributed.timeout_s), device.is_cuda());
  const bool lead = env.rank == 0;
  std::ostream* const lead_log = lead ? &std::cerr : nullptr;
  if (lead) {
    std::cerr << fmt::format("device: {}{}\n", describe_device(device),
                             env.world_size > 1 ? fmt::format(" per rank, {} ranks over {}", env.world_size,
                                                              device.is_cuda() ? "NCCL" : "Gloo")
                                                : "");
  }
  const fs::path run_dir = t.out_dir;
  fs::create_directories(run_dir);
  if (lead) std::ofstream(run_dir / "config.yaml") << options.config_text;
  const int64_t accum = accumulation_steps(t, env.world_size);

  const auto tokenizer = load_tokenizer(cfg);
  ExampleLoader loader = make_loader(cfg, env, tokenizer);
  DevicePrefetcher prefetcher(loader, accum, cfg.model.visual_tokens_per_image(), device);
  // ZeRO 3: no rank ever holds the whole model, on the host or the device (build_training in setup.h).
  const int64_t rss_before_model = rss_bytes();
  TrainingModel built = build_training(cfg, {.device = device, .log = lead_log}, comm);
  MPLUGOwl2ForCausalLM model = built.model;
  const TrainingPolicies& policies = built.policies;
  Trainer& trainer = *built.trainer;
  const double flops = step_flops(cfg, built.sizes, env.world_size);
  if (lead) {
    int64_t model_numel = 0;
    for (const auto& [name, numel] : built.sizes) model_numel += numel;
    const auto mib = [](int64_t bytes) { return static_cast<double>(bytes) / double(1 << 20); };
    std::cerr << fmt::format("start-up memory: the host's high-water mark rose {:.1f} MiB building the model and its "
                             "training state, which holds {:.1f} MiB on {}; the whole model in float32 is {:.1f} MiB\n",
                             mib(peak_rss_bytes() - rss_before_model), mib(trainer.held_bytes().total()), device.str(),
                             mib(4 * model_numel));
  }
  if (lead && cfg.lora.rank > 0) {
    std::cerr << fmt::format("LoRA: rank {}, alpha {}, {} adapted modules{}; the freeze rules are replaced: only "
                             "the adapters{} train\n",
                             cfg.lora.rank, cfg.lora.alpha, policies.lora_modules.size(),
                             policies.lora_saved_modules.empty() ? "" : fmt::format(", {} modules to save", policies.lora_saved_modules.size()),
                             policies.lora_saved_modules.empty() ? "" : " and the modules to save");
  }
  if (lead) std::cerr << "parameters:\n" << trainer.freeze_table() << "optimizer groups:\n" << trainer.groups_table();

  CheckpointManager ckpts((run_dir / "checkpoints").string(), static_cast<int>(t.keep_last));
  if (options.resume) {
    const auto position = resume_training(ckpts, trainer, env.world_size, lead_log, env.rank);
    if (position) prefetcher.load_state(*position);
  }
  const HeldoutEval heldout = make_heldout_eval(cfg);
  MetricsLogger log((run_dir / fmt::format("metrics{}.jsonl", lead ? std::string() : fmt::format(".{}", env.rank))).string(),
                    t.steps, peak_flops_for_device(device), lead && isatty(STDERR_FILENO), stderr,
                    lead ? t.log_every : t.steps + 1);
  if (lead && t.tensorboard) {
    // A new events file per invocation, starting at the step this one trains first (tensorboard.h: TensorBoard
    // then drops what an interrupted earlier invocation logged from there on, as the later lines of
    // metrics.jsonl supersede the earlier ones of a re-run step).
    auto writer = std::make_unique<TensorBoardWriter>(run_dir.string(), trainer.step_count());
    log.note("tensorboard: " + writer->path());
    log.attach_tensorboard(std::move(writer));
    const std::string& yaml = options.config_text;
    log.text("config", "```yaml\n" + yaml + (yaml.ends_with('\n') ? "" : "\n") + "```\n", trainer.step_count());
  }
  if (trainer.data_parallel() && lead) {
    log.note(fmt::format("gradient all-reduce without overlap (calibration): {:.4f} s",
                         trainer.data_parallel()->unoverlapped_comm_seconds()));
  }

  TrainingRun run{cfg, options, env, *comm, run_dir, model, *tokenizer, prefetcher, trainer, ckpts, heldout, log,
                  accum, flops, policies, {}};
  train_loop(run);
  if (trainer.step_count() >= t.steps) export_final(run);
  comm->barrier("final barrier");
  return 0;
}

}  // namespace owl2
