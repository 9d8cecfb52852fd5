// `owl2 bench checkpoint`: write and read a synthetic safetensors checkpoint and compare, in the same run,
// with the Python `safetensors` package loading the same file (GB/s, ratio, peak RSS).
#include <CLI/CLI.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli/commands.h"
#include "owl2/safetensors.h"

namespace owl2::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

long peak_rss_kb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run: " + cmd);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = pclose(p);
  if (rc != 0) throw std::runtime_error(fmt::format("'{}' failed (status {}): {}", cmd, rc, out));
  return out;
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("cannot resolve /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

// Anonymous memory backed by transparent huge pages (kB), from /proc/self/smaps_rollup.
long anon_huge_kb() {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string key;
  long v = 0;
  while (f >> key) {
    if (key == "AnonHugePages:") {
      f >> v;
      return v;
    }
  }
  return 0;
}

// The child side of a read measurement: a fresh process, so its peak RSS is the load alone.
int read_child(const std::string& path) {
  auto t0 = Clock::now();
  double lazy_s = 0;
  {
    SafetensorsFile lazy(path);  // zero-copy: views of the mapping, nothing read yet
    std::vector<torch::Tensor> views;
    for (const auto& name : lazy.names()) views.push_back(lazy.get(name));
    lazy_s = seconds_since(t0);
  }
  t0 = Clock::now();
  SafetensorsFile f(path);
  std::vector<torch::Tensor> owned;
  uint64_t bytes = 0;
  const bool mapped = std::getenv("OWL2_BENCH_MAPPED_COPY") != nullptr;
  for (const auto& name : f.names()) {
    owned.push_back(mapped ? f.get(name).clone() : f.get_copy(name));
    bytes += owned.back().numel() * owned.back().element_size();
  }
  const double s = seconds_since(t0);
  std::cout << nlohmann::json{{"seconds", s}, {"lazy_seconds", lazy_s}, {"bytes", bytes}, {"peak_rss_kb", peak_rss_kb()}, {"anon_huge_kb", anon_huge_kb()}}.dump()
            << "\n";
  return 0;
}

constexpr const char* kPythonLoad = R"(
import json, resource, sys, time
from safetensors.torch import load_file
t0 = time.perf_counter()
d = load_file(sys.argv[1])
lazy = time.perf_counter() - t0
d = {k: v.clone() for k, v in d.items()}  # materialize: load_file maps the file lazily
s = time.perf_counter() - t0
n = sum(t.numel() * t.element_size() for t in d.values())
print(json.dumps({"seconds": s, "lazy_seconds": lazy, "bytes": n, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
)";

struct Args {
  double size_mb = 2048;
  double tensor_mb = 32;
  std::string dir = "/tmp";
  std::string python;
  std::string read_child;
  int repeats = 2;
  bool keep = false;
};

int bench_checkpoint(const Args& a) {
  if (!a.read_child.empty()) return read_child(a.read_child);
  if (a.size_mb <= 0 || a.tensor_mb <= 0) throw std::invalid_argument("--size-mb and --tensor-mb must be positive");
  std::string python = a.python;
  if (python.empty()) python = std::getenv("OWL2_PYTHON") ? std::getenv("OWL2_PYTHON") : ".venv/bin/python";

  // bf16 tensors of ~tensor_mb each (the released weights are stored in 16-bit); the last one takes the rest.
  const int64_t total = static_cast<int64_t>(a.size_mb * (1 << 20)) / 2;
  const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(a.tensor_mb * (1 << 20)) / 2);
  NamedTensors tensors;
  torch::manual_seed(0);
  for (int64_t done = 0, k = 0; done < total; ++k) {
    const int64_t n = std::min(per, total - done);
    tensors.emplace_back(fmt::format("model.layers.{}.weight", k),
                         torch::empty({n}, torch::kBFloat16).uniform_(-1, 1));
    done += n;
  }
  const double gb = static_cast<double>(total * 2) / 1e9;
  const std::string path = fmt::format("{}/owl2_bench_{}.safetensors", a.dir, getpid());
  fmt::print("owl2 bench checkpoint: {:.2f} GB ({:.0f} MiB) in {} bf16 tensors, {} | torch threads {} | {} cores\n", gb, a.size_mb,
             tensors.size(), path, at::get_num_threads(), std::thread::hardware_concurrency());

  auto t0 = Clock::now();
  save_safetensors(path, tensors);
  const double write_s = seconds_since(t0);
  fmt::print("write  owl2 save_safetensors (incl. fsync + rename)   {:8.2f} s  {:6.2f} GB/s\n", write_s, gb / write_s);
  tensors.clear();

  const std::string exe = self_exe();
  double best_cpp = 1e30, best_py = 1e30;
  long rss_cpp = 0, rss_py = 0;
  for (int r = 0; r < a.repeats; ++r) {
    const auto c = nlohmann::json::parse(run_capture(fmt::format("'{}' bench checkpoint --read-child '{}'", exe, path)));
    const auto p = nlohmann::json::parse(run_capture(fmt::format("'{}' -c '{}' '{}'", python, kPythonLoad, path)));
    if (c["bytes"] != p["bytes"]) throw std::runtime_error("owl2 and python read different byte counts");
    fmt::print("open   owl2 SafetensorsFile + get() views (lazy)      {:8.4f} s\n", c["lazy_seconds"].get<double>());
    fmt::print("open   python load_file (lazy)                        {:8.4f} s\n", p["lazy_seconds"].get<double>());
    fmt::print("read   owl2 open + get_copy() every tensor            {:8.2f} s  {:6.2f} GB/s  peak RSS {:6.0f} MB"
               "  (huge pages {:.0f} MB)\n",
               c["seconds"].get<double>(), gb / c["seconds"].get<double>(), c["peak_rss_kb"].get<double>() / 1024,
               c["anon_huge_kb"].get<double>() / 1024);
    fmt::print("read   python load_file + clone() every tensor        {:8.2f} s  {:6.2f} GB/s  peak RSS {:6.0f} MB\n",
               p["seconds"].get<double>(), gb / p["seconds"].get<double>(), p["peak_rss_kb"].get<double>() / 1024);
    best_cpp = std::min(best_cpp, c["seconds"].get<double>());
    best_py = std::min(best_py, p["seconds"].get<double>());
    rss_cpp = c["peak_rss_kb"].get<long>();
    rss_py = p["peak_rss_kb"].get<long>();
  }
  fmt::print("best   owl2 {:.2f} GB/s vs python {:.2f} GB/s: ratio {:.2f}x (>1: owl2 faster); peak RSS owl2 {:.0f} MB, python {:.0f} MB\n",
             gb / best_cpp, gb / best_py, best_py / best_cpp, rss_cpp / 1024.0, rss_py / 1024.0);
  if (!a.keep) std::remove(path.c_str());
  return 0;
}

void add_bench_checkpoint(CLI::App& app, Action& run) {
  CLI::App* bench = nullptr;
  try {  // the `bench` group may already have been added by another cmd_bench_*.cpp
    bench = app.get_subcommand("bench");
  } catch (const CLI::OptionNotFound&) {
    bench = app.add_subcommand("bench", "Benchmarks");
    bench->require_subcommand(1);
  }
  auto args = std::make_shared<Args>();
  auto* cmd = bench->add_subcommand("checkpoint", "safetensors write/read throughput vs the Python safetensors package");
  cmd->add_option("--size-mb", args->size_mb, "Checkpoint size in MiB")->capture_default_str();
  cmd->add_option("--tensor-mb", args->tensor_mb, "Size of each tensor in MiB")->capture_default_str();
  cmd->add_option("--dir", args->dir, "Directory for the temporary file")->capture_default_str();
  cmd->add_option("--python", args->python, "Python with safetensors (default $OWL2_PYTHON or .venv/bin/python)");
  cmd->add_option("--repeats", args->repeats, "Read measurements per reader (best is reported)")->capture_default_str();
  cmd->add_flag("--keep", args->keep, "Keep the file");
  cmd->add_option("--read-child", args->read_child, "(internal) measure one read of FILE in this process")->group("");
  cmd->callback([&run, args] { run = [args] { return bench_checkpoint(*args); }; });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_checkpoint);

}  // namespace owl2::cli
