// `owl2 bench model`: forward+backward time and peak memory of the model on a small configuration, and of the
// Python reference (scripts/bench/bench_reference.py, run as a child process with the same threads and shapes).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "owl2/model/init.h"
#include "owl2/model/model.h"

namespace owl2::cli {
namespace {
namespace fs = std::filesystem;

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is KiB on Linux
}

void add_bench_model(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
  struct Args {
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int iters = 3, warmup = 1, batch = 4, text_tokens = 256;
    bool reference = true;
    std::string python;
  };
  auto args = std::make_shared<Args>();
  auto* model_cmd = bench->add_subcommand(
      "model", "Forward+backward of ViT 6x384 @224, abstractor 2 layers, decoder 6x512 vs the Python reference");
  model_cmd->add_option("--threads", args->threads, "Intra-op threads for both (default: all cores)");
  model_cmd->add_option("--iters", args->iters, "Timed iterations (default 3)");
  model_cmd->add_option("--warmup", args->warmup, "Untimed iterations first (default 1)");
  model_cmd->add_option("--batch", args->batch, "Samples, one image each (default 4)");
  model_cmd->add_option("--text-tokens", args->text_tokens, "Text tokens per sample (default 256)");
  model_cmd->add_flag("!--no-reference", args->reference, "Skip the Python reference");
  model_cmd->add_option("--python", args->python, "Python with torch + transformers (default: <checkout>/.venv/bin/python)");
  model_cmd->callback([&run, args] {
    run = [args] {
      torch::set_num_threads(args->threads);
      const auto cfg = small_bench_model();
      const int64_t B = args->batch, T = args->text_tokens;
      MPLUGOwl2ForCausalLM model(cfg);
      init_weights(model, /*seed=*/0);  // also seeds the random inputs below
      model->train();
      auto ids = torch::randint(3, cfg.decoder.vocab_size, {B, T}, torch::kInt64);
      ids.select(1, 1).fill_(kImageTokenIndex);  // one image per sample, after BOS
      auto labels = ids.clone();
      labels.slice(1, 0, 2).fill_(kIgnoreIndex);
      const auto images = torch::randn({B, cfg.vision.num_channels, cfg.vision.image_size, cfg.vision.image_size});
      const ModelInputs in{ids, torch::ones({B, T}, torch::kInt64), images, labels};

      std::vector<double> times, cpu_times;
      double loss = 0;
      for (int it = 0; it < args->warmup + args->iters; ++it) {
        model->zero_grad(/*set_to_none=*/true);
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = cpu_seconds();
        const auto out = model->forward(in);
        out.loss.backward();
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        loss = out.loss.item<double>();
        if (it >= args->warmup) {
          times.push_back(dt);
          cpu_times.push_back(cpu_seconds() - c0);
        }
      }
      std::sort(times.begin(), times.end());
      std::sort(cpu_times.begin(), cpu_times.end());
      const double median = times[times.size() / 2], cpu_median = cpu_times[cpu_times.size() / 2];
      const double rss = peak_rss_mib();
      std::cout << fmt::format("owl2 bench model: B={} text={} (+{} visual tokens each), threads={}, iters={}\n", B, T,
                               cfg.visual_tokens_per_image(), args->threads, args->iters);
      std::cout << fmt::format("{:<12} {:>14} {:>14} {:>16} {:>10}\n", "impl", "fwd+bwd (s)", "CPU time (s)",
                               "peak RSS (MiB)", "loss");
      std::cout << fmt::format("{:<12} {:>14.3f} {:>14.3f} {:>16.0f} {:>10.4f}\n", "owl2", median, cpu_median, rss, loss);
      if (!args->reference) return 0;

      const auto root = source_root();
      const auto python = args->python.empty() ? (root / ".venv" / "bin" / "python").string() : args->python;
      auto spec = model_config_json(cfg);
      spec["threads"] = args->threads;
      spec["iters"] = args->iters;
      spec["warmup"] = args->warmup;
      spec["batch"] = B;
      spec["text_tokens"] = T;
      int rc = 0;
      const auto cmd = fmt::format("{} {} --spec {}", shell_quote(python),
                                   shell_quote(bench_script("bench_reference.py")),
                                   shell_quote(spec.dump()));
      const auto text = capture_output(cmd, rc);
      if (rc != 0) throw std::runtime_error("bench: the Python reference failed (" + cmd + "):\n" + text);
      const auto r = nlohmann::json::parse(text.substr(text.rfind('{')));
      const double ref_median = r.at("median_s").get<double>();
      const double ref_rss = r.at("peak_rss_mib").get<double>();
      const double ref_cpu = r.at("cpu_median_s").get<double>();
      std::cout << fmt::format("{:<12} {:>14.3f} {:>14.3f} {:>16.0f} {:>10.4f}\n", "reference", ref_median, ref_cpu,
                               ref_rss, r.at("loss").get<double>());
      std::cout << fmt::format("speed-up owl2 vs reference: {:.2f}x wall, {:.2f}x CPU time; peak RSS owl2/reference: {:.2f}\n",
                               ref_median / median, ref_cpu / cpu_median, rss / ref_rss);
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_model);

}  // namespace owl2::cli
