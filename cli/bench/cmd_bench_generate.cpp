// `owl2 bench generate`: greedy decoding speed (time to first token, decode tokens/s at batch 1 and 8) of owl2's
// KV-cache generation against the Python reference with an HF-style cache (scripts/bench/bench_generate_reference.py),
// same configuration, weights, prompts and threads, in one run; the generated tokens are compared too.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>
#include <time.h>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "owl2/infer/generate.h"
#include "owl2/model/init.h"
#include "owl2/io/safetensors.h"
#include "owl2/io/state_dict.h"
#include "trainers/config.h"

namespace owl2::cli {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Timing {
  double ttft_s = 0, decode_s = 0, decode_cpu_s = 0;
  std::vector<std::vector<int64_t>> tokens;
};

// One greedy run: time to the first token of every sample, then the time of the remaining steps.
Timing time_generate(MPLUGOwl2ForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                     const torch::Tensor& images, int64_t new_tokens) {
  GenerateOptions o;
  o.max_new_tokens = new_tokens;
  o.eos_id = -1;  // every sample runs all steps, as the reference loop does
  std::vector<Clock::time_point> stamps;
  std::vector<double> cpu;
  o.on_token = [&](int64_t, int64_t) {
    stamps.push_back(Clock::now());
    cpu.push_back(cpu_seconds());
  };
  const auto t0 = Clock::now();
  const auto out = generate(model, prompts, images, o);
  const size_t B = prompts.size();
  Timing t;
  t.ttft_s = std::chrono::duration<double>(stamps[B - 1] - t0).count();
  t.decode_s = std::chrono::duration<double>(stamps.back() - stamps[B - 1]).count();
  t.decode_cpu_s = cpu.back() - cpu[B - 1];
  for (const auto& g : out) t.tokens.push_back(g.tokens);
  return t;
}

void add_bench_generate(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
  struct Args {
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int iters = 3, text_tokens = 32, new_tokens = 32;
    std::vector<int> batches{1, 8};
    bool reference = true;
    std::string python, config;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand(
      "generate", "Greedy decoding with the KV cache (TTFT, tokens/s at batch 1 and 8) vs the Python reference");
  cmd->add_option("--threads", args->threads, "Intra-op threads for both (default: all cores)")->check(CLI::PositiveNumber);
  cmd->add_option("--iters", args->iters, "Timed runs per batch size, median reported (default 3)")->check(CLI::PositiveNumber);
  cmd->add_option("--text-tokens", args->text_tokens, "Text tokens per prompt besides the image (default 32)")
      ->check(CLI::Range(2, 1024));
  cmd->add_option("--new-tokens", args->new_tokens, "Tokens generated per prompt (default 32)")->check(CLI::Range(2, 1024));
  cmd->add_option("--batches", args->batches, "Batch sizes (default 1 8)")->check(CLI::Range(1, 64));
  cmd->add_option("--config", args->config,
                  "Model YAML (e.g. configs/model/tiny.yaml); default: ViT 6x384 @224, decoder 6x512, 32000 tokens");
  cmd->add_flag("!--no-reference", args->reference, "Skip the Python reference");
  cmd->add_option("--python", args->python, "Python with torch + transformers (default: <checkout>/.venv/bin/python)");
  cmd->callback([&run, args] {
    run = [args] {
      torch::set_num_threads(args->threads);
      const auto cfg = args->config.empty() ? small_bench_model() : load_config(args->config).model;
      MPLUGOwl2ForCausalLM model(cfg);
      init_weights(model, /*seed=*/0);  // also seeds the random prompts and images below
      model->eval();
      const int64_t max_batch = *std::max_element(args->batches.begin(), args->batches.end());
      const int64_t T = args->text_tokens;
      auto ids = torch::randint(3, cfg.decoder.vocab_size, {max_batch, T}, torch::kInt64);
      ids.select(1, 0).fill_(1);                  // BOS
      ids.select(1, 1).fill_(kImageTokenIndex);   // one image per prompt, after BOS
      const auto images = torch::randn({max_batch, cfg.vision.num_channels, cfg.vision.image_size, cfg.vision.image_size});

      std::cout << fmt::format(
          "owl2 bench generate ({}): greedy, {} text tokens + {} visual tokens per prompt, {} new tokens, threads={}, "
          "iters={}\n",
          args->config.empty() ? "decoder 6x512, vocab 32000" : args->config, T, cfg.visual_tokens_per_image(),
          args->new_tokens, args->threads, args->iters);
      std::vector<Timing> ours;
      for (int B : args->batches) {
        std::vector<std::vector<int64_t>> prompts;
        for (int b = 0; b < B; ++b) {
          const auto row = ids[b].contiguous();
          prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + T);
        }
        const auto imgs = images.narrow(0, 0, B);
        time_generate(model, prompts, imgs, 2);  // warm-up
        std::vector<Timing> runs;
        for (int i = 0; i < args->iters; ++i) runs.push_back(time_generate(model, prompts, imgs, args->new_tokens));
        std::sort(runs.begin(), runs.end(), [](const Timing& a, const Timing& b) { return a.decode_s < b.decode_s; });
        Timing med = runs[runs.size() / 2];
        std::vector<double> ttfts, cpus;
        for (const auto& r : runs) {
          ttfts.push_back(r.ttft_s);
          cpus.push_back(r.decode_cpu_s);
        }
        std::sort(ttfts.begin(), ttfts.end());
        std::sort(cpus.begin(), cpus.end());
        med.ttft_s = ttfts[ttfts.size() / 2];
        med.decode_cpu_s = cpus[cpus.size() / 2];
        ours.push_back(med);
      }
      auto rate = [&](int B, double decode_s) { return B * (args->new_tokens - 1) / decode_s; };
      // CPU time per generated token: steadier than wall time on a loaded machine.
      auto cpu_ms = [&](int B, double cpu_s) { return 1e3 * cpu_s / (B * (args->new_tokens - 1)); };
      std::cout << fmt::format("{:<10} {:>6} {:>12} {:>16} {:>20}\n", "impl", "batch", "TTFT (ms)", "decode tok/s",
                               "CPU ms/token");
      for (size_t i = 0; i < ours.size(); ++i) {
        std::cout << fmt::format("{:<10} {:>6} {:>12.1f} {:>16.1f} {:>20.2f}\n", "owl2", args->batches[i],
                                 1e3 * ours[i].ttft_s, rate(args->batches[i], ours[i].decode_s),
                                 cpu_ms(args->batches[i], ours[i].decode_cpu_s));
      }
      if (!args->reference) return 0;

      // The same weights and inputs for the reference, through a temporary directory.
      const auto tmp = fs::temp_directory_path() / fmt::format("owl2_bench_generate_{}", ::getpid());
      fs::create_directories(tmp);
      save_state_dict(*model, tmp.string());
      save_safetensors((tmp / "inputs.safetensors").string(), {{"input_ids", ids}, {"images", images}});
      const auto root = source_root();
      const auto python = args->python.empty() ? (root / ".venv" / "bin" / "python").string() : args->python;
      auto spec = model_config_json(cfg);
      spec["threads"] = args->threads;
      spec["iters"] = args->iters;
      spec["new_tokens"] = args->new_tokens;
      spec["batches"] = args->batches;
      spec["weights"] = (tmp / "model.safetensors").string();
      spec["inputs"] = (tmp / "inputs.safetensors").string();
      const auto cmdline = fmt::format("{} {} --spec {}", shell_quote(python),
                                       shell_quote(bench_script("bench_generate_reference.py")),
                                       shell_quote(spec.dump()));
      std::string text;
      FILE* p = popen(cmdline.c_str(), "r");
      if (!p) throw std::runtime_error("bench generate: cannot start: " + cmdline);
      std::array<char, 4096> buf{};
      size_t n;
      while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) text.append(buf.data(), n);
      const int rc = pclose(p);
      fs::remove_all(tmp);
      if (rc != 0 || text.find('{') == std::string::npos) {
        throw std::runtime_error("bench generate: the Python reference failed (" + cmdline + "):\n" + text);
      }
      const auto r = nlohmann::json::parse(text.substr(text.rfind("{\"threads\"")));
      for (size_t i = 0; i < ours.size(); ++i) {
        const auto& ref = r.at("results").at(i);
        const int B = args->batches[i];
        const double ref_rate = ref.at("decode_tokens_per_s").get<double>();
        const double ref_ttft = ref.at("ttft_s").get<double>();
        const bool same = ref.at("tokens").get<std::vector<std::vector<int64_t>>>() == ours[i].tokens;
        const double ref_cpu = ref.at("decode_cpu_s").get<double>();
        std::cout << fmt::format("{:<10} {:>6} {:>12.1f} {:>16.1f} {:>20.2f}\n", "reference", B, 1e3 * ref_ttft, ref_rate,
                                 cpu_ms(B, ref_cpu));
        std::cout << fmt::format(
            "batch {}: owl2 vs reference: decode {:.2f}x (wall), {:.2f}x (CPU time), TTFT {:.2f}x; tokens {}\n", B,
            rate(B, ours[i].decode_s) / ref_rate, ref_cpu / ours[i].decode_cpu_s, ref_ttft / ours[i].ttft_s,
            same ? "identical" : "DIFFER");
      }
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_generate);

}  // namespace owl2::cli
