// `owl2 data synth|synth-bench|verify|bench-loader`: write the synthetic dataset or benchmark folders, scan a
// dataset and count bad input, or time the loader (read + decode) with several thread counts.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <iostream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "cli/commands.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/synth.h"
#include "data/video.h"

namespace owl2::cli {
namespace {

// Samples/s and images/s of one loader epoch whose transform decodes every image (OpenCV, RGB).
void bench_loader(const std::string& path, const std::vector<int>& workers, size_t batch) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  data::ReadOptions ro;
  ro.max_bad_fraction = 1.0;
  const auto ds = data::open_dataset(path, ro);
  const double open_s = std::chrono::duration<double>(clock::now() - t0).count();
  std::cout << path << ": " << ds->size() << " samples, opened (indexed) in " << open_s * 1e3 << " ms\n";
  struct Decoded {
    int64_t pixels = 0;
    int images = 0;
  };
  for (int w : workers) {
    data::LoaderOptions o;
    o.batch_size = batch;
    o.num_workers = w;
    o.prefetch = 4 * batch;
    data::Loader<Decoded, Decoded> loader(
        ds, o,
        [](data::RawSample&& s) {
          Decoded d;
          for (auto& bytes : s.images) {
            const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, bytes.data());
            const cv::Mat img = cv::imdecode(raw, cv::IMREAD_COLOR);
            if (img.empty()) throw std::runtime_error("image does not decode");
            d.pixels += static_cast<int64_t>(img.total());
            ++d.images;
          }
          return d;
        },
        [](std::vector<Decoded>&& v) {
          Decoded sum;
          for (const auto& d : v) sum.pixels += d.pixels, sum.images += d.images;
          return sum;
        });
    const auto t1 = clock::now();
    int64_t images = 0;
    while (auto b = loader.next()) images += b->images;
    const double s = std::chrono::duration<double>(clock::now() - t1).count();
    const int64_t samples = loader.counters().examples;
    std::cout << fmt::format("  workers {}: {} samples in {:.3f} s: {:.0f} samples/s, {:.0f} images/s\n", w, samples, s,
                             static_cast<double>(samples) / s, static_cast<double>(images) / s);
  }
}

void add_data_commands(CLI::App& app, Action& run) {
  auto* data = app.add_subcommand("data", "Datasets: write the synthetic demo set, verify datasets");
  data->require_subcommand(1);

  auto synth_opts = std::make_shared<data::SynthOptions>();
  auto* synth = data->add_subcommand("synth", "Write the deterministic synthetic shapes dataset");
  synth->add_option("--out", synth_opts->out_dir, "Output directory")->required();
  synth->add_option("--seed", synth_opts->seed, "Seed (same seed -> byte-identical files)");
  synth->add_option("--image-size", synth_opts->image_size, "Image side in pixels")->check(CLI::Range(16, 1024));
  synth->add_option("--train", synth_opts->train_images, "Training images");
  synth->add_option("--heldout", synth_opts->heldout_images, "Held-out images");
  synth->add_option("--train-text", synth_opts->train_text, "Text-only training samples");
  synth->add_option("--heldout-text", synth_opts->heldout_text, "Text-only held-out questions");
  synth->add_option("--shard-size", synth_opts->shard_size, "Pairs per pretraining tar shard (<= 10000)");
  synth->add_option("--rounds", synth_opts->rounds,
                    "Question rounds per training image conversation (default 3; at most the 6 or 7 that apply)")
      ->check(CLI::Range(1, 7));
  synth->add_option("--train-videos", synth_opts->train_videos,
                    "Clips of moving squares for video fine-tuning (video_train.json, two questions each; default 0)")
      ->check(CLI::NonNegativeNumber);
  auto weights = std::make_shared<std::vector<std::string>>();
  synth->add_option("--question-weight", *weights,
                    "TYPE=N (repeatable): ask question type TYPE (caption, color, shape, position, count, yesno, mc) "
                    "N times as often, and earlier, in training conversations (default: all 1)");
  synth->callback([&run, synth_opts, weights] {
    for (const auto& w : *weights) {
      const auto eq = w.find('=');
      int64_t n = 0;
      const char* end = w.data() + w.size();
      if (eq == std::string::npos || eq == 0 ||
          std::from_chars(w.data() + eq + 1, end, n).ptr != end || eq + 1 == w.size())
        throw CLI::ValidationError("--question-weight", "expected TYPE=N with an integer N, got '" + w + "'");
      synth_opts->question_weights[w.substr(0, eq)] = n;
    }
    run = [synth_opts] {
      const auto s = data::write_synth_dataset(*synth_opts);
      std::cout << "wrote " << synth_opts->out_dir << ": " << s.pretrain_pairs << " pretraining pairs in "
                << s.pretrain_shards << " shards, " << s.instruct_samples << " instruction samples, "
                << s.heldout_questions << " held-out questions"
                << (s.video_samples ? fmt::format(", {} video samples", s.video_samples) : std::string())
                << " (" << s.files.size() << " files)\n";
      return 0;
    };
  });

  auto bench_opts = std::make_shared<data::SynthBenchOptions>();
  auto* sbench = data->add_subcommand(
      "synth-bench",
      "Write small benchmark folders in the public formats (vqav2, pope, mme, mmbench, coco; msrvtt_qa, msvd_qa, tgif_qa with video)");
  sbench->add_option("--out", bench_opts->out_dir, "Output directory")->required();
  sbench->add_option("--seed", bench_opts->seed, "Seed (same seed -> byte-identical files)");
  sbench->add_option("--image-size", bench_opts->image_size, "Image side in pixels")->check(CLI::Range(16, 1024));
  sbench->add_option("--images", bench_opts->images, "Scenes per benchmark")->check(CLI::Range(2, 100000));
  sbench->callback([&run, bench_opts] {
    run = [bench_opts] {
      const auto files = data::write_synth_bench(*bench_opts);
      std::cout << "wrote " << bench_opts->out_dir << ": vqav2, pope, mme, mmbench, coco"
                << (data::video_decoding_available() ? ", msrvtt_qa, msvd_qa, tgif_qa" : "") << " (" << files.size()
                << " files)\n";
      return 0;
    };
  });

  struct VerifyArgs {
    std::string path;
    double max_bad_fraction = 0.01;
    bool no_decode = false;
  };
  auto vargs = std::make_shared<VerifyArgs>();
  auto* verify = data->add_subcommand(
      "verify", "Scan a dataset (folder of tar shards, .tar, .jsonl, LLaVA .json), count bad input; exit 1 if over the limit");
  verify->add_option("path", vargs->path, "Dataset path")->required();
  verify->add_option("--max-bad-fraction", vargs->max_bad_fraction, "Largest acceptable share of bad entries")
      ->check(CLI::Range(0.0, 1.0));
  verify->add_flag("--no-decode", vargs->no_decode, "Do not decode images (only read their bytes)");
  verify->callback([&run, vargs] {
    run = [vargs] {
      const auto r = data::verify_dataset(vargs->path, vargs->max_bad_fraction, !vargs->no_decode, &std::cerr);
      std::cout << vargs->path << ": " << r.samples << " good samples, " << r.images << " images, " << r.bad
                << " bad\n";
      for (const auto& [reason, n] : r.counts) std::cout << "  " << reason << ": " << n << "\n";
      if (!r.worst_files.empty()) {
        std::cout << "worst files:\n";
        for (const auto& [file, n] : r.worst_files) std::cout << "  " << file << ": " << n << "\n";
      }
      if (r.over_limit) {
        std::cout << "FAIL: bad fraction over the limit of " << vargs->max_bad_fraction << "\n";
        return 1;
      }
      std::cout << "ok\n";
      return 0;
    };
  });

  struct BenchArgs {
    std::string path;
    std::vector<int> workers{0, 1, 2};
    size_t batch = 32;
  };
  auto bargs = std::make_shared<BenchArgs>();
  auto* bench = data->add_subcommand("bench-loader", "Time one loader epoch (read + decode images) per worker count");
  bench->add_option("path", bargs->path, "Dataset path")->required();
  bench->add_option("--workers", bargs->workers, "Worker thread counts to time (0 = caller's thread)");
  bench->add_option("--batch", bargs->batch, "Batch size")->check(CLI::PositiveNumber);
  bench->callback([&run, bargs] {
    run = [bargs] {
      bench_loader(bargs->path, bargs->workers, bargs->batch);
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_data_commands);

}  // namespace owl2::cli
