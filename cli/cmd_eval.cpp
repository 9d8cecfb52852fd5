// `owl2 eval`: a saved model directory (trainers/io/model_dir.h) on a held-out question file, or on one of the
// paper's benchmarks read from its public files (`--bench`, trainers/infer/bench_eval.h).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/device_arg.h"
#include "cli/model_args.h"
#include "data/image.h"
#include "eval/bench_suite.h"
#include "trainers/infer/bench_eval.h"
#include "trainers/parallel/distributed.h"
#include "trainers/infer/evaluate.h"

namespace owl2::cli {
namespace {

int run_heldout(const ModelDirArgs& model, const torch::Device& device, const std::string& heldout,
                const std::string& out, int64_t batch_size, int64_t limit, int64_t max_new_tokens) {
  auto l = model.load(device);
  EvalOptions eo;
  eo.batch_size = batch_size;
  eo.limit = limit;
  eo.max_new_tokens = max_new_tokens;
  eo.chat_template = l.cfg.data.chat_template;
  eo.image.size = l.cfg.model.vision.image_size;
  eo.image.mode = l.cfg.data.image_mode;
  const auto r = evaluate_heldout(l.model, *l.tokenizer, read_heldout(heldout), eo);
  std::cerr << r.table();
  if (!out.empty()) {
    std::ofstream f(out);
    if (!f) throw std::runtime_error("cannot write " + out);
    for (const auto& [q, p] : r.predictions) {
      f << nlohmann::json{{"question_id", q.id}, {"type", q.type}, {"answer", q.answer}, {"prediction", p}}.dump()
        << "\n";
    }
  }
  nlohmann::json j;
  j["short_answer_accuracy"] = r.short_answer_accuracy;
  j["accuracy"] = r.accuracy;
  j["count"] = r.count;
  j["caption_cider"] = r.caption_cider;
  std::cout << j.dump() << "\n";
  return 0;
}

int run_bench(const ModelDirArgs& model, const torch::Device& device, BenchRunOptions bo,
              const std::string& image_mode) {
  eval::find_bench(bo.bench);  // an unknown name fails before the model loads
  auto l = model.load(device);
  bo.image.size = l.cfg.model.vision.image_size;
  bo.image.mode = parse_image_mode(image_mode);
  bo.video_layout = l.cfg.data.video_layout;
  // Under torchrun the questions are sharded over the ranks (NCCL between GPUs, else Gloo); rank 0 merges and
  // scores.
  const DistEnv env = DistEnv::from_environment();
  std::unique_ptr<Comm> comm;
  if (env.world_size > 1) comm = std::make_unique<Comm>(env, std::chrono::minutes(30), device.is_cuda());
  const auto r = run_benchmark(l.model, *l.tokenizer, bo, comm.get());
  if (env.rank != 0) return 0;
  std::cerr << r.table;
  std::cout << r.metrics.dump() << "\n";
  return 0;
}

void add_eval_commands(CLI::App& app, Action& run) {
  struct Args {
    ModelDirArgs model;
    std::string heldout, out, bench, data, bench_out = "eval_results", image_mode = "resize", device;
    int64_t max_new_tokens = 64, batch_size = 32, limit = 0;
  };
  auto args = std::make_shared<Args>();

  std::string names;
  for (const auto& d : eval::bench_defs()) names += (names.empty() ? "" : ", ") + d.name;
  auto* ev = app.add_subcommand("eval", "Evaluate a saved model on a held-out question file (JSONL) or a benchmark");
  args->model.add_to(ev);
  auto* heldout =
      ev->add_option("--heldout", args->heldout, "Questions: question_id, image, prompt, answer, type per line");
  auto* bench = ev->add_option("--bench", args->bench, "Benchmark: " + names + " (docs/eval.md)");
  heldout->excludes(bench);
  ev->add_option("--data", args->data, "--bench: the benchmark's folder of public files (layouts: docs/eval.md)");
  ev->add_option("--out", args->bench_out, "--bench: output folder; files go to OUT/<bench>/")->capture_default_str();
  ev->add_option("--image-mode", args->image_mode, "--bench: resize|pad|crop (the eval scripts stretch: resize)")
      ->capture_default_str();
  ev->add_option("--batch-size", args->batch_size, "Questions per batch (answers do not depend on it)")
      ->check(CLI::PositiveNumber);
  ev->add_option("--limit", args->limit, "First N questions only (--bench: MME images, MMBench questions)")
      ->check(CLI::NonNegativeNumber);
  ev->add_option("--max-new-tokens", args->max_new_tokens,
                 "--heldout: tokens to generate at most (--bench: the spec's)")
      ->check(CLI::PositiveNumber);
  ev->add_option("--predictions", args->out, "--heldout: write the predictions here (JSONL)");
  add_device_option(ev, args->device);
  ev->callback([&run, args] {
    run = [args] {
      if (!args->bench.empty()) {
        if (args->data.empty())
          throw std::invalid_argument("owl2 eval --bench needs --data DIR (the benchmark's files)");
        BenchRunOptions bo;
        bo.bench = args->bench;
        bo.data_dir = args->data;
        bo.out_dir = args->bench_out;
        bo.batch_size = args->batch_size;
        bo.limit = args->limit;
        return run_bench(args->model, use_device_arg(args->device), bo, args->image_mode);
      }
      if (args->heldout.empty())
        throw std::invalid_argument("owl2 eval needs --heldout FILE or --bench NAME --data DIR");
      return run_heldout(args->model, use_device_arg(args->device), args->heldout, args->out, args->batch_size,
                         args->limit, args->max_new_tokens);
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_eval_commands);

}  // namespace owl2::cli
