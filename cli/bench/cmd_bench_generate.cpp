// `owl2 bench generate`: greedy decoding speed (time to first token, decode tokens/s at batch 1 and 8) of owl2's
// KV-cache generation against the Python reference with an HF-style cache (scripts/bench/bench_generate_reference.py),
// in fp32 and bf16, same configuration, weights, prompts and threads, in one run; the generated tokens are compared
// too (owl2 against the reference in each dtype, and owl2's bf16 against its fp32).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>
#include <time.h>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "owl2/infer/generate.h"
#include "owl2/model/bf16_gemv.h"
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

// Median of `iters` greedy runs per batch size (decode wall time picks the run; TTFT and CPU time are medians apart).
std::vector<Timing> time_batches(MPLUGOwl2ForCausalLM& model, const torch::Tensor& ids, const torch::Tensor& images,
                                 const std::vector<int>& batches, int iters, int64_t new_tokens) {
  const int64_t T = ids.size(1);
  std::vector<Timing> out;
  for (int B : batches) {
    std::vector<std::vector<int64_t>> prompts;
    for (int b = 0; b < B; ++b) {
      const auto row = ids[b].contiguous();
      prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + T);
    }
    const auto imgs = images.narrow(0, 0, B);  // fp32; generate() casts them to the weights' dtype
    time_generate(model, prompts, imgs, 2);  // warm-up
    std::vector<Timing> runs;
    for (int i = 0; i < iters; ++i) runs.push_back(time_generate(model, prompts, imgs, new_tokens));
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
    out.push_back(med);
  }
  return out;
}

// Positions where two runs chose the same token, and the positions compared (all samples of a batch).
std::pair<int64_t, int64_t> matching_tokens(const std::vector<std::vector<int64_t>>& a,
                                            const std::vector<std::vector<int64_t>>& b) {
  int64_t same = 0, total = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    for (size_t k = 0; k < std::min(a[i].size(), b[i].size()); ++k) same += a[i][k] == b[i][k];
    total += static_cast<int64_t>(std::max(a[i].size(), b[i].size()));
  }
  return {same, total};
}

void add_bench_generate(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
  struct Args {
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int iters = 3, text_tokens = 32, new_tokens = 32;
    std::vector<int> batches{1, 8};
    std::vector<std::string> dtypes{"fp32", "bf16"};
    bool reference = true;
    std::string python, config;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand(
      "generate",
      "Greedy decoding with the KV cache (TTFT, tokens/s at batch 1 and 8) in fp32 and bf16 vs the Python reference");
  cmd->add_option("--threads", args->threads, "Intra-op threads for both (default: all cores)")->check(CLI::PositiveNumber);
  cmd->add_option("--iters", args->iters, "Timed runs per batch size, median reported (default 3)")->check(CLI::PositiveNumber);
  cmd->add_option("--text-tokens", args->text_tokens, "Text tokens per prompt besides the image (default 32)")
      ->check(CLI::Range(2, 1024));
  cmd->add_option("--new-tokens", args->new_tokens, "Tokens generated per prompt (default 32)")->check(CLI::Range(2, 1024));
  cmd->add_option("--batches", args->batches, "Batch sizes (default 1 8)")->check(CLI::Range(1, 64));
  cmd->add_option("--dtypes", args->dtypes,
                  "Model dtypes, each run on both sides: fp32 and/or bf16 (default both; fp32 first, bf16 is cast "
                  "from it)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--config", args->config,
                  "Model YAML (e.g. configs/model/tiny.yaml); default: ViT 6x384 @224, decoder 6x512, 32000 tokens");
  cmd->add_flag("!--no-reference", args->reference, "Skip the Python reference");
  cmd->add_option("--python", args->python, "Python with torch + transformers (default: <checkout>/.venv/bin/python)");
  cmd->callback([&run, args] {
    run = [args] {
      // fp32 first: the bf16 weights are the fp32 ones rounded once, on both sides.
      std::vector<std::string> dtypes;
      for (const char* name : {"fp32", "bf16"}) {
        if (std::find(args->dtypes.begin(), args->dtypes.end(), name) != args->dtypes.end()) dtypes.push_back(name);
      }
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

      // The same weights and inputs for the reference, through a temporary directory, saved before any cast.
      const auto tmp = fs::temp_directory_path() / fmt::format("owl2_bench_generate_{}", ::getpid());
      if (args->reference) {
        fs::create_directories(tmp);
        save_state_dict(*model, tmp.string());
        save_safetensors((tmp / "inputs.safetensors").string(), {{"input_ids", ids}, {"images", images}});
      }

      std::cout << fmt::format(
          "owl2 bench generate ({}): greedy, {} text tokens + {} visual tokens per prompt, {} new tokens, threads={}, "
          "iters={}, dtypes {}, bf16 matrix-vector kernel {}\n",
          args->config.empty() ? "decoder 6x512, vocab 32000" : args->config, T, cfg.visual_tokens_per_image(),
          args->new_tokens, args->threads, args->iters, fmt::join(dtypes, " "),
          bf16_gemv_cpu_supported() ? "on (AVX2, no native bf16)" : "off (at::linear)");
      std::map<std::string, std::vector<Timing>> ours, refs;  // by dtype, then batch
      for (const auto& d : dtypes) {
        if (d == "bf16") {
          torch::NoGradGuard no_grad;
          model->to(torch::kBFloat16);
        }
        ours[d] = time_batches(model, ids, images, args->batches, args->iters, args->new_tokens);
      }
      auto rate = [&](int B, double decode_s) { return B * (args->new_tokens - 1) / decode_s; };
      // CPU time per generated token: steadier than wall time on a loaded machine.
      auto cpu_ms = [&](int B, double cpu_s) { return 1e3 * cpu_s / (B * (args->new_tokens - 1)); };
      auto print_row = [&](const char* impl, const std::string& dtype, int B, const Timing& t) {
        std::cout << fmt::format("{:<10} {:>6} {:>6} {:>12.1f} {:>16.1f} {:>20.2f}\n", impl, dtype, B, 1e3 * t.ttft_s,
                                 rate(B, t.decode_s), cpu_ms(B, t.decode_cpu_s));
      };
      std::cout << fmt::format("{:<10} {:>6} {:>6} {:>12} {:>16} {:>20}\n", "impl", "dtype", "batch", "TTFT (ms)",
                               "decode tok/s", "CPU ms/token");
      for (const auto& d : dtypes) {
        for (size_t i = 0; i < args->batches.size(); ++i) print_row("owl2", d, args->batches[i], ours[d][i]);
      }
      if (args->reference) {
        const auto root = source_root();
        const auto python = args->python.empty() ? (root / ".venv" / "bin" / "python").string() : args->python;
        auto spec = model_config_json(cfg);
        spec["threads"] = args->threads;
        spec["iters"] = args->iters;
        spec["new_tokens"] = args->new_tokens;
        spec["batches"] = args->batches;
        spec["dtypes"] = dtypes;
        spec["weights"] = (tmp / "model.safetensors").string();
        spec["inputs"] = (tmp / "inputs.safetensors").string();
        const auto cmdline = fmt::format("{} {} --spec {}", shell_quote(python),
                                         shell_quote(bench_script("bench_generate_reference.py")),
                                         shell_quote(spec.dump()));
        int rc = 0;
        const std::string text = capture_output(cmdline, rc);
        fs::remove_all(tmp);
        if (rc != 0 || text.find('{') == std::string::npos) {
          throw std::runtime_error("bench generate: the Python reference failed (" + cmdline + "):\n" + text);
        }
        const auto r = nlohmann::json::parse(text.substr(text.rfind("{\"threads\"")));
        size_t at = 0;
        for (const auto& d : dtypes) {
          for (size_t i = 0; i < args->batches.size(); ++i, ++at) {
            const auto& ref = r.at("results").at(at);
            Timing t;
            t.ttft_s = ref.at("ttft_s").get<double>();
            t.decode_s = ref.at("decode_s").get<double>();
            t.decode_cpu_s = ref.at("decode_cpu_s").get<double>();
            t.tokens = ref.at("tokens").get<std::vector<std::vector<int64_t>>>();
            refs[d].push_back(t);
            print_row("reference", d, args->batches[i], t);
          }
        }
      }
      // Ratios are decode tokens/s (wall) of the first over the second; CPU time per token in brackets.
      auto ratio = [&](int B, const Timing& a, const Timing& b) {
        return fmt::format("{:.2f}x ({:.2f}x CPU)", rate(B, a.decode_s) / rate(B, b.decode_s),
                           b.decode_cpu_s / a.decode_cpu_s);
      };
      auto agree = [](const Timing& a, const Timing& b) {
        const auto [same, total] = matching_tokens(a.tokens, b.tokens);
        return fmt::format("{} ({}/{} tokens match)", same == total ? "identical" : "DIFFER", same, total);
      };
      for (size_t i = 0; i < args->batches.size(); ++i) {
        const int B = args->batches[i];
        for (const auto& d : dtypes) {
          if (!args->reference) break;
          const auto& o = ours[d][i];
          const auto& f = refs[d][i];
          std::cout << fmt::format("batch {} {}: owl2 vs reference: decode {}, TTFT {:.2f}x; tokens {}\n", B, d,
                                   ratio(B, o, f), f.ttft_s / o.ttft_s, agree(o, f));
        }
        if (dtypes.size() < 2) continue;
        const auto& b16 = ours["bf16"][i];
        std::string line = fmt::format("batch {}: owl2 bf16 / owl2 fp32 {}", B, ratio(B, b16, ours["fp32"][i]));
        if (args->reference) {
          line += fmt::format(", / reference fp32 {}, / reference bf16 {}", ratio(B, b16, refs["fp32"][i]),
                              ratio(B, b16, refs["bf16"][i]));
        }
        std::cout << line << fmt::format("; owl2 bf16 vs fp32 tokens {}\n", agree(b16, ours["fp32"][i]));
      }
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_generate);

}  // namespace owl2::cli
