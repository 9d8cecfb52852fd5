// `owl2 bench train --config FILE`: the Trainer's step on synthetic full-length batches of a run config, on the
// CPU or a CUDA device, with random weights: s/step, samples/s, tokens/s, model TFLOP/s, MFU and peak memory.
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "cli/device_arg.h"
#include "owl2/model/constants.h"
#include "owl2/model/model.h"
#include "trainers/config.h"
#include "trainers/metrics.h"
#include "trainers/plan.h"
#include "trainers/setup.h"
#include "trainers/trainer.h"

#ifdef OWL2_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace owl2::cli {
namespace {

struct BenchArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string device = "cpu";
  int steps = 5, warmup = 2, threads = 0;
  std::vector<std::string> against;  // overrides of a second configuration timed side by side
};

// One micro-batch of train.micro_batch_size samples, each one image and exactly train.max_length decoder tokens
// after splicing (the planner's token count), every text token after the image supervised.
Batch synthetic_batch(const RunConfig& cfg, torch::Device device, int64_t seed) {
  const auto& m = cfg.model;
  const int64_t B = cfg.train.micro_batch_size, V = m.visual_tokens_per_image();
  const int64_t T = cfg.train.max_length - (V - 1);
  if (T < 3) throw std::invalid_argument(fmt::format("bench train: train.max_length {} leaves no text after {} visual tokens",
                                                     cfg.train.max_length, V));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  Batch b;
  b.input_ids = torch::randint(3, m.decoder.vocab_size, {B, T}, gen, torch::kInt64);
  b.input_ids.select(1, 0).fill_(1);                  // <s>
  b.input_ids.select(1, 1).fill_(kImageTokenIndex);   // the image's visual tokens go here
  b.labels = b.input_ids.clone();
  b.labels.slice(1, 0, 2).fill_(kIgnoreIndex);
  b.attention_mask = torch::ones({B, T}, torch::kInt64);
  b.images = torch::randn({B, m.vision.num_channels, m.vision.image_size, m.vision.image_size}, gen);
  b.input_ids = b.input_ids.to(device);
  b.labels = b.labels.to(device);
  b.attention_mask = b.attention_mask.to(device);
  b.images = b.images.to(device);
  b.samples = B;
  return b;
}

// One configuration under test: its model, Trainer and synthetic micro-batches, and the step times measured.
struct Variant {
  std::string label;
  RunConfig cfg;
  MPLUGOwl2ForCausalLM model{nullptr};
  std::unique_ptr<Trainer> trainer;
  std::vector<Batch> micro;
  Plan plan;
  std::vector<double> seconds;
  double loss = 0;
};

std::unique_ptr<Variant> make_variant(const BenchArgs& a, const std::vector<std::string>& extra_sets,
                                      const std::string& label, torch::Device device) {
  auto v = std::make_unique<Variant>();
  v->label = label;
  std::vector<std::string> sets = a.sets;
  sets.insert(sets.end(), extra_sets.begin(), extra_sets.end());
  v->cfg = load_config(a.config, sets);
  const auto& cfg = v->cfg;
  const int64_t accum = cfg.train.global_batch_size / cfg.train.micro_batch_size;
  if (accum < 1 || cfg.train.global_batch_size % cfg.train.micro_batch_size != 0) {
    throw std::invalid_argument(fmt::format("train.global_batch_size {} is not a multiple of train.micro_batch_size {}",
                                            cfg.train.global_batch_size, cfg.train.micro_batch_size));
  }
  // The run's model and policies, with the initial weights (throughput does not depend on the values).
  TrainingModel built = build_training(cfg, {.device = device, .load_init = false}, /*comm=*/nullptr);
  v->model = built.model;
  v->plan = make_plan(cfg, built.sizes, PlanInputs{});
  v->trainer = std::move(built.trainer);
  for (int64_t i = 0; i < accum; ++i) v->micro.push_back(synthetic_batch(cfg, device, cfg.train.seed + i));
  return v;
}

double median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  return xs.empty() ? 0 : xs[xs.size() / 2];
}

nlohmann::json report(const BenchArgs& a, const Variant& v, torch::Device device, int64_t peak_mem) {
  const auto& cfg = v.cfg;
  const double med = median(v.seconds);
  const double samples = double(cfg.train.global_batch_size);
  const double tokens = samples * double(cfg.train.max_length);
  const double peak = device.is_cuda() ? peak_flops_for_device() : 0;
  nlohmann::json j;
  j["config"] = a.config;
  if (!v.label.empty()) j["variant"] = v.label;
  j["device"] = describe_device(device);
  j["precision"] = precision_name(cfg.train.precision);
  j["threads"] = torch::get_num_threads();
  j["params"] = v.plan.total_params;
  j["trainable_params"] = v.plan.trainable_params;
  j["micro_batch"] = cfg.train.micro_batch_size;
  j["accumulation"] = static_cast<int64_t>(v.micro.size());
  j["tokens_per_sample"] = cfg.train.max_length;
  j["median_step_s"] = med;
  j["samples_per_s"] = med > 0 ? samples / med : 0;
  j["tokens_per_s"] = med > 0 ? tokens / med : 0;
  j["model_flops_per_step"] = v.plan.flops_per_step;
  j["tflops_per_s"] = med > 0 ? v.plan.flops_per_step / med / 1e12 : 0;
  if (peak > 0 && med > 0) j["mfu"] = v.plan.flops_per_step / med / peak;
  j["peak_memory_bytes"] = peak_mem;
  j["last_loss"] = v.loss;
  std::cout << j.dump() << "\n";
  std::cerr << fmt::format(
      "bench train: {}{} on {}, {}: {:.4g} s/step, {:.1f} samples/s, {:.0f} tokens/s, {:.3g} TFLOP/s{}, peak memory "
      "{:.2f} GiB\n",
      a.config, v.label.empty() ? "" : " [" + v.label + "]", a.device, precision_name(cfg.train.precision), med,
      j["samples_per_s"].get<double>(), j["tokens_per_s"].get<double>(), j["tflops_per_s"].get<double>(),
      j.contains("mfu") ? fmt::format(", MFU {:.1f}%", 100 * j["mfu"].get<double>()) : "", double(peak_mem) / double(1 << 30));
  return j;
}

int run_bench_train(const BenchArgs& a) {
  if (a.threads > 0) torch::set_num_threads(a.threads);
  const torch::Device device = use_device_arg(a.device);
  std::vector<std::unique_ptr<Variant>> variants;
  variants.push_back(make_variant(a, {}, a.against.empty() ? "" : "base", device));
  if (!a.against.empty()) variants.push_back(make_variant(a, a.against, fmt::format("{}", fmt::join(a.against, " ")), device));
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  // With --against the two configurations alternate step by step, so both see the same machine.
  for (int i = 0; i < a.warmup + a.steps; ++i) {
    for (auto& v : variants) {
      sync();
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = v->trainer->step(v->micro);  // the loss and grad norm are read on the host once, at the end
      sync();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      v->loss = r.loss;
      if (i >= a.warmup) v->seconds.push_back(s);
      std::cerr << fmt::format("step {}{}{}: {:.3f} s, loss {:.4f}\n", i, i < a.warmup ? " (warm-up)" : "",
                               v->label.empty() ? "" : " [" + v->label + "]", s, r.loss);
    }
  }
  int64_t peak_mem = peak_rss_bytes();
#ifdef OWL2_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    peak_mem = stats.allocated_bytes[0].peak;  // index 0: StatType::AGGREGATE (its namespace moved between releases)
  }
#endif
  for (const auto& v : variants) report(a, *v, device, peak_mem);
  if (variants.size() == 2) {
    const double base = median(variants[0]->seconds), other = median(variants[1]->seconds);
    std::cerr << fmt::format("bench train: [{}] / [base] median step time = {:.3f} ({} vs {} trainable parameters; "
                             "peak memory is the process's, both together)\n",
                             variants[1]->label, base > 0 ? other / base : 0.0, variants[1]->plan.trainable_params,
                             variants[0]->plan.trainable_params);
  }
  return 0;
}

void add_bench_train(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
  auto args = std::make_shared<BenchArgs>();
  auto* cmd = bench->add_subcommand(
      "train", "Trainer steps of a run config on synthetic full-length batches (random weights): throughput and MFU");
  cmd->add_option("--config", args->config, "YAML run config (model, train, optim, freeze sections are used)")->required();
  cmd->add_option("--set", args->sets, "Override a key: --set model.decoder.num_hidden_layers=16 (repeatable)");
  add_device_option(cmd, args->device, "cpu");
  cmd->add_option("--steps", args->steps, "Timed optimizer steps (default 5; the median is reported)");
  cmd->add_option("--warmup", args->warmup, "Untimed steps first (default 2)");
  cmd->add_option("--threads", args->threads, "Intra-op CPU threads (default: LibTorch's)");
  cmd->add_option("--against", args->against,
                  "Overrides of a second configuration timed side by side, step by step (e.g. lora.rank=16); prints "
                  "its step time over the first's");
  cmd->callback([&run, args] { run = [args] { return run_bench_train(*args); }; });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_train);

}  // namespace owl2::cli
