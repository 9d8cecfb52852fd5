// `owl2 bench checkpoint`, `owl2 bench import` and `owl2 bench consolidate`: write and read a synthetic safetensors
// checkpoint, import / export a synthetic reference-layout model, and consolidate a synthetic ZeRO checkpoint,
// comparing in the same run with the Python `safetensors` package doing the same work (GB/s, ratio, peak RSS).
#include <CLI/CLI.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "owl2/io/fileio.h"
#include "owl2/model/model.h"
#include "owl2/io/safetensors.h"
#include "owl2/io/state_dict.h"
#include "trainers/config.h"
#include "trainers/io/hf_io.h"
#include "trainers/parallel/zero.h"

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
  int rc = 0;
  const std::string out = capture_output(cmd, rc);
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
    const auto p =
        nlohmann::json::parse(run_capture(fmt::format("'{}' '{}' '{}'", python, bench_script("checkpoint_load.py"), path)));
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


// ---------------------------------------------------------------------------------------------- bench import

// Random float16 tensors under the names and shapes of a model config, made one at a time when the writer
// reaches them, so writing the synthetic checkpoint holds one shard in memory.
class RandomModelSource final : public TensorSource {
 public:
  explicit RandomModelSource(const ModelConfig& cfg) {
    for (const auto& p : parameter_shapes(cfg)) shapes_[p.name] = p.shape;
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& kv : shapes_) out.push_back(kv.first);
    return out;
  }
  bool contains(const std::string& n) const override { return shapes_.count(n) > 0; }
  TensorMeta meta(const std::string& n) const override { return {torch::kFloat16, shapes_.at(n)}; }
  torch::Tensor get(const std::string& n) const override {
    return torch::empty(shapes_.at(n), torch::kFloat16).uniform_(-0.05, 0.05);
  }
  std::string where(const std::string&) const override { return "<random>"; }

 private:
  std::map<std::string, std::vector<int64_t>> shapes_;
};

// A 7B-shaped model scaled down: LLaMA-2 vocabulary, 1024 wide decoder, as many layers as `bytes` allows in
// float16; the tiny ViT and abstractor of configs/model/tiny.yaml.
RunConfig synthetic_config(uint64_t bytes) {
  RunConfig cfg;
  auto& m = cfg.model;
  m.vision = {64, 256, 2, 4, 3, 32, 4, 1e-6};
  m.abstractor = {8, 64, 1, 4, 176, 64, 8, 1e-6, 1e-5};
  m.decoder.hidden_size = 1024;
  m.decoder.intermediate_size = 2816;
  m.decoder.num_attention_heads = m.decoder.num_key_value_heads = 16;
  m.decoder.num_hidden_layers = 1;
  auto total = [&] {
    uint64_t n = 0;
    for (const auto& p : parameter_shapes(m)) n += static_cast<uint64_t>(p.numel()) * 2;
    return n;
  };
  const uint64_t one = total();
  m.decoder.num_hidden_layers = 2;
  const uint64_t per_layer = total() - one;
  m.decoder.num_hidden_layers = std::max<int64_t>(1, 1 + static_cast<int64_t>((std::max(bytes, one) - one) / per_layer));
  return cfg;
}

uint64_t dir_tensor_bytes(const std::string& dir) {
  const auto src = open_tensor_source(dir);
  uint64_t n = 0;
  for (const auto& name : src->names()) {
    const auto m = src->meta(name);
    uint64_t k = c10::elementSize(m.dtype);
    for (int64_t d : m.shape) k *= static_cast<uint64_t>(d);
    n += k;
  }
  return n;
}

struct ImportBenchArgs {
  double size_mb = 2048;
  std::string shard_size = "512MB";
  std::string dir = "/tmp";
  std::string python;
  std::string tokenizer = "tests/fixtures/tokenizer/tiny_llama.model";
  int repeats = 1;
  bool keep = false;
  std::string child, from, to;  // internal: one measured import or export in this process
};

// Resident memory split (kB) from /proc/self/status: anonymous (owned tensors) vs file-backed (mapped files,
// reclaimable page cache).
long status_kb(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string k;
  long v = 0;
  while (f >> k) {
    if (k == key) {
      f >> v;
      return v;
    }
  }
  return 0;
}

int import_child(const ImportBenchArgs& a) {
  const auto t0 = Clock::now();
  if (a.child == "import") {
    ImportOptions o;
    o.max_shard_bytes = parse_byte_size(a.shard_size);
    import_hf(a.from, a.to, o);
  } else if (a.child == "export") {
    ExportOptions o;
    o.max_shard_bytes = parse_byte_size(a.shard_size);
    o.tokenizer = a.tokenizer;
    export_hf(a.from, a.to, o);
  } else {
    throw std::invalid_argument("--child: expected import or export, got '" + a.child + "'");
  }
  const double s = seconds_since(t0);
  // Before dir_tensor_bytes maps the output: the import / export's own footprint.
  const long anon = status_kb("RssAnon:"), file = status_kb("RssFile:"), peak = peak_rss_kb();
  std::cout << nlohmann::json{{"seconds", s}, {"bytes", dir_tensor_bytes(a.to)}, {"peak_rss_kb", peak},
                              {"anon_kb", anon}, {"file_kb", file}}.dump()
            << "\n";
  return 0;
}

int bench_import(const ImportBenchArgs& a) {
  if (!a.child.empty()) return import_child(a);
  if (a.size_mb <= 0) throw std::invalid_argument("--size-mb must be positive");
  std::string python = a.python;
  if (python.empty()) python = std::getenv("OWL2_PYTHON") ? std::getenv("OWL2_PYTHON") : ".venv/bin/python";
  const RunConfig cfg = synthetic_config(static_cast<uint64_t>(a.size_mb * (1 << 20)));
  const std::string root = fmt::format("{}/owl2_bench_import_{}", a.dir, getpid());
  const std::string hf = root + "/hf", owl = root + "/owl2", back = root + "/back", py_in = root + "/py_import",
                    py_out = root + "/py_export";
  std::filesystem::create_directories(hf);
  RandomModelSource random(cfg.model);
  torch::manual_seed(0);
  const uint64_t shard = parse_byte_size(a.shard_size);
  const auto written = convert_to_safetensors(random, hf, shard);
  write_file_atomic(hf + "/config.json", hf_config_json(cfg, std::string(hf_dtype_name(torch::kFloat16))).dump(2));
  const double gb = static_cast<double>(written.total_bytes) / 1e9;
  fmt::print("owl2 bench import: {:.2f} GB float16, {} tensors, decoder {} layers x {} wide, {} shard(s) of <= {} | "
             "torch threads {} | {} cores | {}\n",
             gb, random.names().size(), cfg.model.decoder.num_hidden_layers, cfg.model.decoder.hidden_size,
             written.files.size(), a.shard_size, at::get_num_threads(), std::thread::hardware_concurrency(), root);

  const std::string exe = self_exe();
  struct Best {
    double s = 1e30;
    long rss_kb = 0;
  };
  Best owl_import, py_import, owl_export, py_export;
  // The same reads and writes with the Python package, each shard fsync'd as owl2 does.
  const std::string convert_script = bench_script("checkpoint_convert.py");
  auto measure = [&](const std::string& cmd, Best& best, const char* label) {
    const auto j = nlohmann::json::parse(run_capture(cmd));
    const double s = j["seconds"].get<double>();
    // Export adds the abstractor's two small sin-cos buffers; anything else is a lost or invented tensor.
    const double got = j["bytes"].get<double>(), want = static_cast<double>(written.total_bytes);
    if (got < want || got > want * 1.001)
      throw std::runtime_error(fmt::format("{} wrote {} tensor bytes, expected {}", label, got, want));
    fmt::print("{:<52} {:8.2f} s  {:6.2f} GB/s  peak RSS {:6.0f} MB{}\n", label, s, gb / s,
               j["peak_rss_kb"].get<double>() / 1024,
               j.contains("anon_kb") ? fmt::format("  (at exit: anon {:.0f} MB, file-backed {:.0f} MB)",
                                                   j["anon_kb"].get<double>() / 1024, j["file_kb"].get<double>() / 1024)
                                     : std::string());
    if (s < best.s) best = {s, j["peak_rss_kb"].get<long>()};
  };
  for (int r = 0; r < a.repeats; ++r) {
    std::filesystem::remove_all(owl);
    std::filesystem::remove_all(back);
    std::filesystem::remove_all(py_in);
    std::filesystem::remove_all(py_out);
    measure(fmt::format("'{}' bench import --child import --from '{}' --to '{}' --shard-size {}", exe, hf, owl, a.shard_size),
            owl_import, "import  owl2 import (key check + read + write + fsync)");
    measure(fmt::format("'{}' '{}' '{}' '{}'", python, convert_script, hf, py_in), py_import,
            "import  python load_file + save_file + fsync");
    measure(fmt::format("'{}' bench import --child export --from '{}' --to '{}' --shard-size {} --tokenizer '{}'", exe,
                        owl, back, a.shard_size, a.tokenizer),
            owl_export, "export  owl2 export (key check + read + write + fsync)");
    measure(fmt::format("'{}' '{}' '{}' '{}'", python, convert_script, owl, py_out), py_export,
            "export  python load_file + save_file + fsync");
  }
  fmt::print("best   import: owl2 {:.2f} GB/s vs python {:.2f} GB/s, ratio {:.2f}x (>1: owl2 faster); peak RSS owl2 {:.0f} "
             "MB, python {:.0f} MB\n",
             gb / owl_import.s, gb / py_import.s, py_import.s / owl_import.s, owl_import.rss_kb / 1024.0,
             py_import.rss_kb / 1024.0);
  fmt::print("best   export: owl2 {:.2f} GB/s vs python {:.2f} GB/s, ratio {:.2f}x (>1: owl2 faster); peak RSS owl2 {:.0f} "
             "MB, python {:.0f} MB\n",
             gb / owl_export.s, gb / py_export.s, py_export.s / owl_export.s, owl_export.rss_kb / 1024.0,
             py_export.rss_kb / 1024.0);
  if (!a.keep) std::filesystem::remove_all(root);
  return 0;
}

// ------------------------------------------------------------------------------------------- bench consolidate

struct ConsolidateBenchArgs {
  double size_mb = 1024;
  int world = 4;
  std::string dir = "/tmp";
  std::string python;
  std::string tokenizer = "tests/fixtures/tokenizer/tiny_llama.model";
  int repeats = 1;
  bool keep = false;
  std::string child_from, child_to;  // internal: one measured consolidation in this process
};

// A ZeRO-2 training checkpoint of the synthetic model in float32 as `world` ranks write it: each rank's `values`
// over its slices of the gradient buckets (the trainer's ZeroLayout, 25 MB buckets) and their `segments`, the
// manifest in state.json, a model group with nothing untrained. Returns the parameters' bytes.
uint64_t write_zero_checkpoint(const RunConfig& cfg, int world, const std::string& dir) {
  std::filesystem::create_directories(dir);
  torch::manual_seed(0);
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> numels;
  std::vector<torch::Tensor> params;
  uint64_t bytes = 0;
  for (const auto& p : parameter_shapes(cfg.model)) {
    names.push_back(p.name);
    shapes.push_back(p.shape);
    numels.push_back(p.numel());
    params.push_back(torch::empty(p.shape, torch::kFloat32).uniform_(-0.05, 0.05).reshape({-1}));
    bytes += static_cast<uint64_t>(p.numel()) * 4;
  }
  nlohmann::json manifest_params = nlohmann::json::array();
  for (size_t k = 0; k < names.size(); ++k) manifest_params.push_back({names[k], numels[k], shapes[k]});
  for (int r = 0; r < world; ++r) {
    const ZeroLayout layout(numels, 4, world, r, 25 << 20);
    auto values = torch::zeros({layout.shard_numel}, torch::kFloat32);
    auto segs = torch::zeros({static_cast<int64_t>(layout.segments.size()), 5}, torch::kLong);
    auto a = segs.accessor<int64_t, 2>();
    for (size_t i = 0; i < layout.segments.size(); ++i) {
      const auto& sg = layout.segments[i];
      values.narrow(0, sg.shard_offset, sg.length).copy_(params[sg.param].narrow(0, sg.param_offset, sg.length));
      const auto row = static_cast<int64_t>(i);
      a[row][0] = sg.param;
      a[row][1] = sg.param_offset;
      a[row][2] = sg.length;
      a[row][3] = sg.shard_offset;
      a[row][4] = 1;
    }
    save_safetensors(fmt::format("{}/{}.safetensors", dir, zero_shard_group(r)), {{"values", values}, {"segments", segs}});
  }
  save_safetensors(dir + "/model.safetensors", {});
  const nlohmann::json state = {
      {"config", to_yaml(cfg)},
      {"extra", {{"zero", {{"stage", 2}, {"world_size", world}, {"params", manifest_params}}}}}};
  write_file_atomic(dir + "/state.json", state.dump());
  return bytes;
}

int bench_consolidate(const ConsolidateBenchArgs& a) {
  if (!a.child_from.empty()) {
    const auto t0 = Clock::now();
    ConsolidateOptions o;
    o.max_shard_bytes = uint64_t{1} << 40;  // one file, as the Python side writes
    o.tokenizer = a.tokenizer;
    consolidate_checkpoint(a.child_from, a.child_to, o);
    const double s = seconds_since(t0);
    // Before dir_tensor_bytes maps the output: the consolidation's own footprint.
    const long anon = status_kb("RssAnon:"), file = status_kb("RssFile:"), peak = peak_rss_kb();
    std::cout << nlohmann::json{{"seconds", s}, {"bytes", dir_tensor_bytes(a.child_to)}, {"peak_rss_kb", peak},
                                {"anon_kb", anon}, {"file_kb", file}}.dump()
              << "\n";
    return 0;
  }
  if (a.size_mb <= 0) throw std::invalid_argument("--size-mb must be positive");
  if (a.world < 1) throw std::invalid_argument("--world must be at least 1");
  std::string python = a.python;
  if (python.empty()) python = std::getenv("OWL2_PYTHON") ? std::getenv("OWL2_PYTHON") : ".venv/bin/python";
  // synthetic_config sizes float16 weights: half the bytes give the float32 size asked for.
  const RunConfig cfg = synthetic_config(static_cast<uint64_t>(a.size_mb * (1 << 20) / 2));
  const std::string root = fmt::format("{}/owl2_bench_consolidate_{}", a.dir, getpid());
  const std::string ck = root + "/checkpoint", owl = root + "/owl2", py = root + "/python.safetensors";
  const uint64_t written = write_zero_checkpoint(cfg, a.world, ck);
  const double gb = static_cast<double>(written) / 1e9;
  fmt::print("owl2 bench consolidate: {:.2f} GB float32 in {} ZeRO shards, {} tensors | torch threads {} | {} cores | {}\n",
             gb, a.world, parameter_shapes(cfg.model).size(), at::get_num_threads(), std::thread::hardware_concurrency(),
             root);
  struct Best {
    double s = 1e30;
    long rss_kb = 0;
  };
  Best owl_best, py_best;
  auto measure = [&](const std::string& cmd, Best& best, const char* label) {
    const auto j = nlohmann::json::parse(run_capture(cmd));
    const double s = j["seconds"].get<double>();
    if (j["bytes"].get<double>() != static_cast<double>(written))
      throw std::runtime_error(fmt::format("{} wrote {} tensor bytes, expected {}", label, j["bytes"].dump(), written));
    fmt::print("{:<56} {:8.2f} s  {:6.2f} GB/s  peak RSS {:6.0f} MB{}\n", label, s, gb / s,
               j["peak_rss_kb"].get<double>() / 1024,
               j.contains("anon_kb") ? fmt::format("  (at exit: anon {:.0f} MB, file-backed {:.0f} MB)",
                                                   j["anon_kb"].get<double>() / 1024, j["file_kb"].get<double>() / 1024)
                                     : std::string());
    if (s < best.s) best = {s, j["peak_rss_kb"].get<long>()};
  };
  const std::string exe = self_exe(), script = bench_script("checkpoint_consolidate.py");
  for (int r = 0; r < a.repeats; ++r) {
    std::filesystem::remove_all(owl);
    std::filesystem::remove(py);
    measure(fmt::format("'{}' bench consolidate --child-from '{}' --child-to '{}' --tokenizer '{}'", exe, ck, owl,
                        a.tokenizer),
            owl_best, "owl2 checkpoint consolidate (read shards + write + fsync)");
    measure(fmt::format("'{}' '{}' '{}' '{}'", python, script, ck, py), py_best,
            "python safe_open + assemble + save_file + fsync");
  }
  // The same weights either way.
  const auto ours = open_tensor_source(owl);
  const SafetensorsFile theirs(py);
  if (ours->names().size() != theirs.names().size())
    throw std::runtime_error(fmt::format("owl2 wrote {} tensors, python {}", ours->names().size(), theirs.names().size()));
  for (const auto& name : theirs.names()) {
    if (!torch::equal(ours->get(name), theirs.get(name)))
      throw std::runtime_error("owl2 and python consolidated '" + name + "' differently");
  }
  fmt::print("same   {} tensors, equal bit for bit\n", theirs.names().size());
  fmt::print("best   owl2 {:.2f} GB/s vs python {:.2f} GB/s: ratio {:.2f}x (>1: owl2 faster); peak RSS owl2 {:.0f} MB, "
             "python {:.0f} MB\n",
             gb / owl_best.s, gb / py_best.s, py_best.s / owl_best.s, owl_best.rss_kb / 1024.0, py_best.rss_kb / 1024.0);
  if (!a.keep) std::filesystem::remove_all(root);
  return 0;
}

void add_bench_checkpoint(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
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

  auto ia = std::make_shared<ImportBenchArgs>();
  auto* imp = bench->add_subcommand("import", "owl2 import / export throughput vs the Python safetensors package");
  imp->add_option("--size-mb", ia->size_mb, "Synthetic model size in MiB (float16)")->capture_default_str();
  imp->add_option("--shard-size", ia->shard_size, "Largest shard")->capture_default_str();
  imp->add_option("--dir", ia->dir, "Directory for the temporary files")->capture_default_str();
  imp->add_option("--python", ia->python, "Python with safetensors (default $OWL2_PYTHON or .venv/bin/python)");
  imp->add_option("--tokenizer", ia->tokenizer, "SentencePiece model the export copies")->capture_default_str();
  imp->add_option("--repeats", ia->repeats, "Measurements per tool (best is reported)")->capture_default_str();
  imp->add_flag("--keep", ia->keep, "Keep the files");
  imp->add_option("--child", ia->child, "(internal) one measured import or export in this process")->group("");
  imp->add_option("--from", ia->from, "(internal)")->group("");
  imp->add_option("--to", ia->to, "(internal)")->group("");
  imp->callback([&run, ia] { run = [ia] { return bench_import(*ia); }; });

  auto ca = std::make_shared<ConsolidateBenchArgs>();
  auto* con = bench->add_subcommand("consolidate",
                                    "owl2 checkpoint consolidate throughput vs the same job with the Python safetensors package");
  con->add_option("--size-mb", ca->size_mb, "Synthetic model size in MiB (float32)")->capture_default_str();
  con->add_option("--world", ca->world, "Ranks whose ZeRO shards the checkpoint holds")->capture_default_str();
  con->add_option("--dir", ca->dir, "Directory for the temporary files")->capture_default_str();
  con->add_option("--python", ca->python, "Python with safetensors (default $OWL2_PYTHON or .venv/bin/python)");
  con->add_option("--tokenizer", ca->tokenizer, "SentencePiece model the model folder gets")->capture_default_str();
  con->add_option("--repeats", ca->repeats, "Measurements per tool (best is reported)")->capture_default_str();
  con->add_flag("--keep", ca->keep, "Keep the files");
  con->add_option("--child-from", ca->child_from, "(internal) one measured consolidation in this process")->group("");
  con->add_option("--child-to", ca->child_to, "(internal)")->group("");
  con->callback([&run, ca] { run = [ca] { return bench_consolidate(*ca); }; });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_checkpoint);

}  // namespace owl2::cli
