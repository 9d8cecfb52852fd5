// Shared by the cli/bench/cmd_bench_*.cpp files: the `owl2 bench` group, where the Python sides of the comparisons
// live (scripts/bench/), and the small model configuration that the model and generation benchmarks measure (and
// print, so a report says what was timed).
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <time.h>

#include <array>
#include <cstdio>
#include <stdexcept>

#include <filesystem>
#include <string>

#include "owl2/model/config.h"

namespace owl2::cli {

// The `bench` group, added by whichever cmd_bench_*.cpp registers first.
inline CLI::App* bench_group(CLI::App& app) {
  const auto found = app.get_subcommands([](CLI::App* s) { return s->get_name() == "bench"; });
  if (!found.empty()) return found.front();
  auto* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  return bench;
}

// CPU time of this process (all threads), for the per-core rates the benchmarks print.
inline double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The checkout root: three levels above build/bin/owl2 when that holds scripts/bench/, else the working directory.
inline std::filesystem::path source_root() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const auto root = exe.parent_path().parent_path().parent_path();
    if (fs::is_directory(root / "scripts" / "bench")) return root;
  }
  return fs::current_path();
}

// A Python program of the benchmarks, by file name under scripts/bench/ of the checkout.
inline std::string bench_script(const std::string& name) {
  return (source_root() / "scripts" / "bench" / name).string();
}

// Runs `cmd` through the shell and returns what it writes to stdout; `status` gets pclose's status. Throws only
// when the shell cannot be started.
inline std::string capture_output(const std::string& cmd, int& status) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("bench: cannot start: " + cmd);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  status = pclose(p);
  return out;
}

// `s` as one single-quoted shell word.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// ViT 6x384 at 224 px (patch 14, grid 16), abstractor 2 layers (65 visual tokens), decoder 6x512 with the
// LLaMA vocabulary; configs/bench/small.yaml spells out the same model.
inline ModelConfig small_bench_model() {
  ModelConfig c;
  c.vision = {384, 1536, 6, 6, 3, 224, 14, 1e-6};
  c.abstractor = {64, 384, 2, 6, 1024, 384, 16, 1e-6, 1e-5};
  c.decoder = {32000, 512, 1376, 6, 8, 8, 2048, 1e-6, 10000.0};
  return c;
}

inline nlohmann::json model_config_json(const ModelConfig& c) {
  const auto& v = c.vision;
  const auto& a = c.abstractor;
  const auto& d = c.decoder;
  return {{"vision",
           {{"hidden_size", v.hidden_size}, {"intermediate_size", v.intermediate_size},
            {"num_hidden_layers", v.num_hidden_layers}, {"num_attention_heads", v.num_attention_heads},
            {"num_channels", v.num_channels}, {"image_size", v.image_size}, {"patch_size", v.patch_size},
            {"layer_norm_eps", v.layer_norm_eps}}},
          {"abstractor",
           {{"num_learnable_queries", a.num_learnable_queries}, {"hidden_size", a.hidden_size},
            {"num_hidden_layers", a.num_hidden_layers}, {"num_attention_heads", a.num_attention_heads},
            {"intermediate_size", a.intermediate_size}, {"encoder_hidden_size", a.encoder_hidden_size},
            {"grid_size", a.grid_size}, {"layer_norm_eps", a.layer_norm_eps}, {"attn_norm_eps", a.attn_norm_eps}}},
          {"decoder",
           {{"vocab_size", d.vocab_size}, {"hidden_size", d.hidden_size}, {"intermediate_size", d.intermediate_size},
            {"num_hidden_layers", d.num_hidden_layers}, {"num_attention_heads", d.num_attention_heads},
            {"num_key_value_heads", d.num_key_value_heads}, {"max_position_embeddings", d.max_position_embeddings},
            {"rms_norm_eps", d.rms_norm_eps}, {"rope_theta", d.rope_theta}}}};
}

}  // namespace owl2::cli
