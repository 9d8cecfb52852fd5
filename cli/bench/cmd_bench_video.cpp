// `owl2 bench video`: N frames sampled from a clip (data/video.h), decoded and preprocessed, against the Python
// pipeline of scripts/bench/video_decode_ref.py (PyAV, else decord, else OpenCV's binding, + CLIPImageProcessorPil)
// on the same clip, side by side in one run. The default clip is a 640x360 MPEG-4 file written here.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "data/image.h"
#include "data/video.h"

namespace owl2::cli {
namespace {
namespace fs = std::filesystem;

// `frames` frames of 30 fps 640x360 video: smooth gradients that drift and a block that moves, so that the codec has
// real motion to encode.
std::string make_clip(const fs::path& dir, int64_t frames) {
  std::vector<torch::Tensor> out;
  const auto y = torch::arange(360, torch::kFloat32).view({360, 1, 1}), x = torch::arange(640, torch::kFloat32).view({1, 640, 1});
  const auto ch = torch::tensor({1.0f, 0.7f, 0.4f}).view({1, 1, 3});
  for (int64_t t = 0; t < frames; ++t) {
    auto f = (127.5 + 100 * torch::sin((x * 0.02 + y * 0.013) * ch + 0.1 * static_cast<double>(t))).clamp(0, 255);
    auto img = f.to(torch::kUInt8).contiguous();
    const int64_t bx = (8 * t) % 560;
    img.slice(0, 140, 220).slice(1, bx, bx + 80).fill_(250);
    out.push_back(img);
  }
  const auto path = (dir / "clip_640x360.mp4").string();
  data::write_video(path, out, 30.0);
  return path;
}

struct VideoTiming {
  double wall = 0, cpu = 0;
};

int run_bench_video(std::string clip, int64_t frames, int64_t size, const std::string& mode, int64_t repeats,
                    const std::string& python, bool no_python) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("owl2-bench-video-{}", ::getpid());
  fs::create_directories(dir);
  if (clip.empty()) clip = make_clip(dir, 300);
  ImageConfig cfg;
  cfg.size = size;
  cfg.mode = parse_image_mode(mode);
  const auto probe = data::decode_video(clip, frames);
  fmt::print("owl2 bench video: {} ({} frames of {}x{}), {} sampled frames -> float32 [3, {}, {}], mode {}; {} "
             "clips per measurement, one thread\n",
             clip, probe.total, probe.frames[0].size(1), probe.frames[0].size(0), frames, size, size, mode, repeats);
  torch::set_num_threads(1);
  auto time_owl2 = [&](bool with_preprocess) {
    torch::Tensor last;
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    for (int64_t r = 0; r < repeats; ++r) {
      const auto v = data::decode_video(clip, frames);
      if (with_preprocess)
        for (const auto& f : v.frames) last = preprocess_image(f, cfg);
    }
    return VideoTiming{std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), cpu_seconds() - c0};
  };
  time_owl2(true);  // warm-up
  const VideoTiming od = time_owl2(false), op = time_owl2(true);

  std::optional<nlohmann::json> ref;
  std::string ref_error;
  if (!no_python && fs::exists(python)) {
    const std::string cmd = fmt::format("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 '{}' '{}' '{}' {} "
                                        "{} {} {} '{}' 2>&1",
                                        python, bench_script("video_decode_ref.py"), clip, frames, size, mode, repeats,
                                        (dir / "ref.bin").string());
    int status = 0;
    const std::string output = capture_output(cmd, status);
    std::istringstream lines(output);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("{\"decoder\"", 0) == 0) ref = nlohmann::json::parse(line);
    }
    if (!ref) ref_error = output;
  } else if (!no_python) {
    ref_error = "python " + python + " not found";
  }

  const double clips = static_cast<double>(repeats), n = static_cast<double>(frames * repeats);
  fmt::print("{:<28} {:>12} {:>16} {:>18}\n", "", "clips/s", "frames/cpu-s", "clip frames/cpu-s");
  auto row = [&](const std::string& name, double wall, double cpu) {
    fmt::print("{:<28} {:>12.2f} {:>16.1f} {:>18.1f}\n", name, clips / wall, n / cpu,
               clips * static_cast<double>(probe.total) / cpu);
  };
  row("owl2 decode", od.wall, od.cpu);
  row("owl2 decode + preprocess", op.wall, op.cpu);
  if (ref) {
    const auto& d = (*ref)["decode"];
    const auto& p = (*ref)["pipeline"];
    const std::string dec = (*ref)["decoder"].get<std::string>();
    row(dec + " decode", d["end"].get<double>() - d["start"].get<double>(), d["cpu"].get<double>());
    row(dec + " + CLIP processor", p["end"].get<double>() - p["start"].get<double>(), p["cpu"].get<double>());
    fmt::print("per core (frames per CPU-second), owl2 / {}: decode {:.2f}x, decode + preprocess {:.2f}x\n", dec,
               d["cpu"].get<double>() / od.cpu, p["cpu"].get<double>() / op.cpu);
    std::ifstream f(dir / "ref.bin", std::ios::binary);
    std::vector<float> buf(static_cast<size_t>(3 * size * size));
    f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size() * sizeof(float)));
    if (f) {
      const auto golden = torch::from_blob(buf.data(), {3, size, size}, torch::kFloat);
      const auto mine = preprocess_image(probe.frames[0], cfg);
      fmt::print("max |owl2 - reference| on the first sampled frame's tensor: {:.3g} (different decoders may "
                 "round differently)\n", (mine - golden).abs().max().item<double>());
    }
  } else if (!no_python) {
    fmt::print("no Python comparison: {}\n", ref_error);
  }
  fs::remove_all(dir);
  return 0;
}

void add_bench_video(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
  struct Args {
    std::string clip, mode = "pad", python = ".venv/bin/python";
    int64_t frames = 8, size = 448, repeats = 10;
    bool no_python = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand("video", "Video frames decoded and preprocessed per second: owl2 vs PyAV/decord + "
                                             "CLIPImageProcessor on the same clip");
  cmd->add_option("--clip", args->clip, "Video file (default: a 640x360 MPEG-4 clip of 300 frames written here)");
  cmd->add_option("--frames", args->frames, "Frames sampled per clip")->capture_default_str();
  cmd->add_option("--size", args->size, "Output side")->capture_default_str();
  cmd->add_option("--mode", args->mode, "resize|pad|crop")->capture_default_str();
  cmd->add_option("--repeats", args->repeats, "Clips per measurement")->capture_default_str();
  cmd->add_option("--python", args->python, "Python with av (or decord), pillow and transformers")->capture_default_str();
  cmd->add_flag("--no-python", args->no_python, "owl2 only");
  cmd->callback([&run, args] {
    run = [args] {
      return run_bench_video(args->clip, args->frames, args->size, args->mode, args->repeats, args->python,
                             args->no_python);
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_video);

}  // namespace owl2::cli
