// `owl2 bench data`: JPEG -> normalized tensor throughput of owl2's image pipeline with 1..N threads, against
// PIL + transformers' CLIP processor in Python on the same JPEG (child processes), plus their max abs difference.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "data/image.h"

#ifdef OWL2_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#endif

namespace owl2::cli {
namespace {

namespace fs = std::filesystem;

struct Rate {
  double images_per_s = 0;    // wall clock
  double images_per_cpu_s = 0;  // per second of CPU time: the per-core figure, robust to a loaded machine
  int64_t images = 0;
};

std::string make_jpeg(int64_t width, int64_t height) {
#ifdef OWL2_WITH_OPENCV
  // A deterministic photo-like scene: smooth gradients, a few shapes and sensor-like noise.
  cv::Mat img(static_cast<int>(height), static_cast<int>(width), CV_8UC3);
  std::mt19937 rng(1234);
  std::normal_distribution<double> noise(0.0, 6.0);
  for (int y = 0; y < img.rows; ++y) {
    for (int x = 0; x < img.cols; ++x) {
      const double r = 120 + 80 * std::sin(x * 0.013) + 0.1 * y;
      const double g = 90 + 60 * std::cos(y * 0.021 + x * 0.004);
      double b = 60 + 0.25 * x;
      if ((x - 420) * (x - 420) + (y - 200) * (y - 200) < 90 * 90) b = 230;
      auto& p = img.at<cv::Vec3b>(y, x);
      p[0] = cv::saturate_cast<uint8_t>(b + noise(rng));
      p[1] = cv::saturate_cast<uint8_t>(g + noise(rng));
      p[2] = cv::saturate_cast<uint8_t>(r + noise(rng));
    }
  }
  std::vector<uint8_t> buf;
  cv::imencode(".jpg", img, buf, {cv::IMWRITE_JPEG_QUALITY, 90});
  return std::string(buf.begin(), buf.end());
#else
  (void)width;
  (void)height;
  throw std::runtime_error("bench data: owl2 was built without OpenCV (OWL2_WITH_OPENCV=OFF)");
#endif
}

Rate bench_owl2(const std::string& jpeg, const ImageConfig& cfg, int threads, int64_t images) {
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    torch::Tensor out = torch::empty({3, cfg.size, cfg.size});
    while (next.fetch_add(1) < images) {
      const torch::Tensor rgb = decode_image(jpeg, "bench.jpg");
      preprocess_image_into(rgb, cfg, out);
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto n = static_cast<double>(images);
  return {n / s, n / (cpu_seconds() - cpu0), images};
}

// Runs `procs` Python processes at once; throughput = all images / (last end - first start).
Rate bench_python(const std::string& python, const fs::path& dir, const ImageConfig& cfg, int procs,
                  int64_t images_per_proc) {
  const std::string script = bench_script("data_clip_pil.py");  // the reference pipeline (spec §3.1)
  std::string cmd = "(";
  for (int p = 0; p < procs; ++p) {
    cmd += fmt::format("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 '{}' '{}' '{}' {} {} {} '{}' & ",
                       python, script, (dir / "bench.jpg").string(), image_mode_name(cfg.mode), cfg.size,
                       images_per_proc, (dir / fmt::format("pil_{}.bin", p)).string());
  }
  cmd += "wait) 2>&1";
  int status = 0;
  const std::string output = capture_output(cmd, status);
  double first = 1e300, last = 0, cpu = 0;
  int64_t total = 0;
  int reports = 0;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("{\"start\"", 0) != 0) continue;
    const auto j = nlohmann::json::parse(line);
    first = std::min(first, j["start"].get<double>());
    last = std::max(last, j["end"].get<double>());
    total += j["n"].get<int64_t>();
    cpu += j["cpu"].get<double>();
    ++reports;
  }
  if (reports != procs) {
    throw std::runtime_error(fmt::format("bench data: the Python pipeline ({}) failed:\n{}", python, output));
  }
  return {static_cast<double>(total) / (last - first), static_cast<double>(total) / cpu, total};
}

double load_average() {
  std::ifstream f("/proc/loadavg");
  double l = -1;
  f >> l;
  return l;
}

int run_bench_data(int64_t size, const std::string& mode, int max_threads, int64_t images, int64_t py_images,
                   const std::string& python, bool skip_python) {
  ImageConfig cfg;
  cfg.size = size;
  cfg.mode = parse_image_mode(mode);
  const std::string jpeg = make_jpeg(640, 480);
  const fs::path dir = fs::temp_directory_path() / fmt::format("owl2-bench-data-{}", ::getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "bench.jpg", std::ios::binary) << jpeg;

  fmt::print("owl2 bench data: JPEG 640x480 ({} bytes, q90) -> float32 [3, {}, {}], mode {}; {} hardware threads, "
             "load average {:.2f}\n",
             jpeg.size(), size, size, mode, std::thread::hardware_concurrency(), load_average());
  bench_owl2(jpeg, cfg, 1, std::max<int64_t>(images / 10, 1));  // warm-up
  std::vector<Rate> ours, theirs;
  for (int t = 1; t <= max_threads; ++t) ours.push_back(bench_owl2(jpeg, cfg, t, images));
  const bool python_ok = !skip_python && fs::exists(python);
  if (!skip_python && !python_ok) fmt::print("python {} not found: skipping the PIL comparison\n", python);
  if (python_ok) {
    for (int t = 1; t <= max_threads; ++t) theirs.push_back(bench_python(python, dir, cfg, t, py_images));
  }

  // Wall-clock rates depend on what else runs on the machine; images per CPU-second is the per-core figure.
  fmt::print("{:<8} {:>11} {:>15} {:>7}   {:>15} {:>19} {:>7}\n", "workers", "owl2 img/s", "PIL+CLIP img/s",
             "ratio", "owl2 img/cpu-s", "PIL+CLIP img/cpu-s", "ratio");
  for (int t = 1; t <= max_threads; ++t) {
    const auto& o = ours[t - 1];
    if (python_ok) {
      const auto& p = theirs[t - 1];
      fmt::print("{:<8} {:>11.1f} {:>15.1f} {:>6.2f}x   {:>15.1f} {:>19.1f} {:>6.2f}x\n", t, o.images_per_s,
                 p.images_per_s, o.images_per_s / p.images_per_s, o.images_per_cpu_s, p.images_per_cpu_s,
                 o.images_per_cpu_s / p.images_per_cpu_s);
    } else {
      fmt::print("{:<8} {:>11.1f} {:>15} {:>7}   {:>15.1f} {:>19} {:>7}\n", t, o.images_per_s, "-", "-",
                 o.images_per_cpu_s, "-", "-");
    }
  }
  fmt::print("(owl2: {} images per row, threads in one process; PIL+CLIP: {} images per process, one process per "
             "worker)\n",
             images, py_images);
  if (python_ok) {
    std::ifstream f(dir / "pil_0.bin", std::ios::binary);
    std::vector<float> ref(static_cast<size_t>(3 * size * size));
    f.read(reinterpret_cast<char*>(ref.data()), static_cast<std::streamsize>(ref.size() * sizeof(float)));
    if (f) {
      const torch::Tensor golden = torch::from_blob(ref.data(), {3, size, size}, torch::kFloat);
      const torch::Tensor mine = preprocess_image(decode_image(jpeg, "bench.jpg"), cfg);
      fmt::print("max |owl2 - PIL+CLIP| on the full tensor: {:.3g}\n", (mine - golden).abs().max().item<double>());
    }
  }
  fs::remove_all(dir);
  return 0;
}

void add_bench_data_commands(CLI::App& app, Action& run) {
  // `bench` is shared by several areas: reuse it if another file added it first.
  CLI::App* bench = bench_group(app);

  struct Args {
    int64_t size = 448;
    std::string mode = "pad";
    int threads = 2;
    int64_t images = 400;
    int64_t py_images = 100;
    std::string python = ".venv/bin/python";
    bool no_python = false;
  };
  auto args = std::make_shared<Args>();
  auto* data = bench->add_subcommand("data", "Image pipeline throughput: owl2 vs PIL + CLIPImageProcessor");
  data->add_option("--size", args->size, "Output side")->capture_default_str();
  data->add_option("--mode", args->mode, "resize|pad|crop")->capture_default_str();
  data->add_option("--threads", args->threads, "Measure 1..N threads (Python: 1..N processes)")->capture_default_str();
  data->add_option("--images", args->images, "Images per owl2 measurement")->capture_default_str();
  data->add_option("--py-images", args->py_images, "Images per Python process")->capture_default_str();
  data->add_option("--python", args->python, "Python with pillow and transformers")->capture_default_str();
  data->add_flag("--no-python", args->no_python, "Skip the Python comparison");
  data->callback([&run, args] {
    run = [args] {
      if (args->threads < 1 || args->images < 1 || args->py_images < 1) {
        throw std::invalid_argument("bench data: --threads, --images and --py-images must be positive");
      }
      return run_bench_data(args->size, args->mode, args->threads, args->images, args->py_images, args->python,
                            args->no_python);
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_data_commands);

}  // namespace owl2::cli
