// `owl2 checkpoint ls|convert|consolidate|resume-info`: inspect any weights file or directory, convert it (e.g. the
// released .bin shards) to sharded safetensors one shard at a time, turn a training checkpoint (ZeRO shards of any
// world size) into a model directory, and show what a training resume would take.
#include <CLI/CLI.hpp>

#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "owl2/io/dtype_names.h"
#include "owl2/io/state_dict.h"
#include "trainers/checkpoint.h"
#include "trainers/io/hf_io.h"

namespace owl2::cli {
namespace {

int list_tensors(const std::string& path) {
  const auto src = open_tensor_source(path);
  uint64_t total = 0;
  const auto names = src->names();
  for (const auto& n : names) {
    const auto m = src->meta(n);
    uint64_t numel = 1;
    for (int64_t d : m.shape) numel *= static_cast<uint64_t>(d);
    total += numel * c10::elementSize(m.dtype);
    std::cout << fmt::format("{}  {}  [{}]\n", n, safetensors_dtype_name(m.dtype), fmt::join(m.shape, ", "));
  }
  std::cout << fmt::format("{} tensors, {} bytes\n", names.size(), total);
  return 0;
}

void add_checkpoint_commands(CLI::App& app, Action& run) {
  auto* group = app.add_subcommand("checkpoint", "Inspect and convert weights; inspect training checkpoints");
  group->require_subcommand(1);

  auto path = std::make_shared<std::string>();
  auto* ls = group->add_subcommand("ls", "List names, dtypes and shapes (safetensors, torch.save .bin, or a directory)");
  ls->add_option("path", *path, "File or directory (sharded through an index json)")->required();
  ls->callback([&run, path] { run = [path] { return list_tensors(*path); }; });

  struct ConvertArgs {
    std::string from, to, dtype, shard_size = "5GB";
  };
  auto c = std::make_shared<ConvertArgs>();
  auto* convert = group->add_subcommand("convert", "Write any readable weights as HF-layout safetensors shards");
  convert->add_option("--from", c->from, "Source file or directory")->required();
  convert->add_option("--to", c->to, "Output directory")->required();
  convert->add_option("--dtype", c->dtype, "Cast floating-point tensors: bf16, fp16 or fp32");
  convert->add_option("--shard-size", c->shard_size, "Largest shard (5GB = 5*10^9 bytes, 4GiB, ...)")->capture_default_str();
  convert->callback([&run, c] {
    run = [c] {
      const auto cast = parse_dtype_flag(c->dtype);
      const uint64_t shard = parse_byte_size(c->shard_size);
      const auto src = open_tensor_source(c->from);
      const auto res = convert_to_safetensors(*src, c->to, shard, cast);
      std::cout << fmt::format("{}: {} tensors, {} bytes in {} file(s)\n", c->to, src->names().size(), res.total_bytes,
                               res.files.size());
      return 0;
    };
  });

  struct ConsolidateArgs {
    std::string from, to, dtype, tokenizer, shard_size = "5GB";
  };
  auto k = std::make_shared<ConsolidateArgs>();
  auto* consolidate = group->add_subcommand(
      "consolidate", "Training checkpoint (step-N/, ZeRO shards of any world size) -> model directory, one tensor at a time");
  consolidate->add_option("--from", k->from, "Checkpoint directory, e.g. RUN/checkpoints/step-000001000")
      ->required()
      ->check(CLI::ExistingDirectory);
  consolidate->add_option("--to", k->to, "Output model directory (config.yaml, tokenizer.model, weights)")->required();
  consolidate->add_option("--dtype", k->dtype, "Cast floating-point tensors: bf16, fp16 or fp32 (default: keep)");
  consolidate->add_option("--tokenizer", k->tokenizer, "SentencePiece model (default: the saved config's data.tokenizer)");
  consolidate->add_option("--shard-size", k->shard_size, "Largest shard (5GB = 5*10^9 bytes, 4GiB, ...)")
      ->capture_default_str();
  consolidate->callback([&run, k] {
    run = [k] {
      ConsolidateOptions o;
      o.dtype = parse_dtype_flag(k->dtype);
      o.max_shard_bytes = parse_byte_size(k->shard_size);
      o.tokenizer = k->tokenizer;
      const size_t n = consolidate_checkpoint(k->from, k->to, o);
      std::cout << fmt::format("{} -> {}: {} tensors, config.yaml, tokenizer.model\n", k->from, k->to, n);
      return 0;
    };
  });

  auto root = std::make_shared<std::string>();
  auto* info = group->add_subcommand("resume-info", "Which training checkpoint a resume would take, and what it skips");
  info->add_option("dir", *root, "Checkpoint root (holds step-*/ and latest)")->required();
  info->callback([&run, root] {
    run = [root] {
      const auto r = CheckpointManager(*root, 1).resume();
      std::cout << r.summary() << "\n";
      return r.checkpoint ? 0 : 1;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_checkpoint_commands);

}  // namespace owl2::cli
