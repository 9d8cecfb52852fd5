// `owl2 import | export | init`: the reference checkpoint in, Hugging Face-format weights out, and the stage-1
// starting point from HF CLIP + LLaMA checkpoints (trainers/io/hf_io.h does the work).
#include <CLI/CLI.hpp>

#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "owl2/io/safetensors.h"
#include "trainers/io/hf_io.h"

namespace owl2::cli {
namespace {

void add_hf_commands(CLI::App& app, Action& run) {
  struct ImportArgs {
    std::string from, to, dtype, config, shard_size = "5GB";
    bool allow_unexpected = false;
  };
  auto im = std::make_shared<ImportArgs>();
  auto* import = app.add_subcommand("import", "Reference-layout checkpoint (.bin or safetensors + config.json) -> owl2 model directory");
  import->add_option("--from", im->from, "Checkpoint directory (config.json, pytorch_model*.bin / *.safetensors, tokenizer.model)")->required();
  import->add_option("--to", im->to, "Output model directory (config.yaml + model.safetensors)")->required();
  import->add_option("--dtype", im->dtype, "Cast floating-point tensors: bf16, fp16 or fp32 (default: keep)");
  import->add_option("--config", im->config, "Config to build the model from instead of FROM/config.json (JSON or YAML)");
  import->add_option("--shard-size", im->shard_size, "Largest output shard")->capture_default_str();
  import->add_flag("--allow-unexpected", im->allow_unexpected, "Drop checkpoint names the model does not have");
  import->callback([&run, im] {
    run = [im] {
      ImportOptions o;
      o.config = im->config;
      o.dtype = parse_dtype_flag(im->dtype);
      o.max_shard_bytes = parse_byte_size(im->shard_size);
      o.allow_unexpected = im->allow_unexpected;
      const auto report = import_hf(im->from, im->to, o);
      std::cout << fmt::format("{} -> {}: {}\n", im->from, im->to, report.summary());
      if (!report.ignored.empty()) std::cout << fmt::format("ignored (recomputed by owl2): {}\n", fmt::join(report.ignored, ", "));
      return 0;
    };
  });

  struct ExportArgs {
    std::string from, to, dtype, tokenizer, merge_lora, shard_size = "5GB";
    bool allow_external_tokenizer = false;
  };
  auto ex = std::make_shared<ExportArgs>();
  auto* exp = app.add_subcommand("export", "owl2 model directory -> Hugging Face directory in the reference layout");
  exp->add_option("--from", ex->from, "Model directory (config.yaml + weights), e.g. a run's final/")->required();
  exp->add_option("--to", ex->to, "Output directory")->required();
  exp->add_option("--dtype", ex->dtype, "Cast floating-point tensors: bf16, fp16 or fp32 (default: keep)");
  exp->add_option("--shard-size", ex->shard_size, "Largest shard (5GB = 5*10^9 bytes, 4GiB, ...)")->capture_default_str();
  exp->add_option("--tokenizer", ex->tokenizer, "SentencePiece model (default: the folder's tokenizer.model)");
  exp->add_flag("--allow-external-tokenizer", ex->allow_external_tokenizer,
                "Let the folder's config.yaml name a data.tokenizer outside the folder (older folders)");
  exp->add_option("--merge-lora", ex->merge_lora,
                  "LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to merge into the weights")
      ->check(CLI::ExistingDirectory);
  exp->callback([&run, ex] {
    run = [ex] {
      ExportOptions o;
      o.merge_lora = ex->merge_lora;
      o.dtype = parse_dtype_flag(ex->dtype);
      o.max_shard_bytes = parse_byte_size(ex->shard_size);
      o.tokenizer = ex->tokenizer;
      o.allow_external_tokenizer = ex->allow_external_tokenizer;
      const size_t n = export_hf(ex->from, ex->to, o);
      std::cout << fmt::format("{} -> {}: {} tensors, config.json, generation_config.json, preprocessor_config.json, "
                               "tokenizer files\n", ex->from, ex->to, n);
      return 0;
    };
  });

  struct InitArgs {
    InitOptions o;
    std::string dtype = "fp32", shard_size = "5GB";
  };
  auto in = std::make_shared<InitArgs>();
  auto* init = app.add_subcommand("init", "Stage-1 starting point: ViT from HF CLIP, decoder from HF LLaMA, random abstractor");
  init->add_option("--vision", in->o.vision_dir, "HF CLIPVisionModel (or CLIPModel) checkpoint directory")->required();
  init->add_option("--llm", in->o.llm_dir, "HF LlamaForCausalLM checkpoint directory")->required();
  init->add_option("--config", in->o.config, "owl2 YAML (or reference config.json) of the model to build")->required();
  init->add_option("--out", in->o.out_dir, "Output model directory")->required();
  init->add_option("--seed", in->o.seed, "Seed of the abstractor's random init")->capture_default_str();
  init->add_option("--dtype", in->dtype, "Stored dtype: fp32, bf16 or fp16")->capture_default_str();
  init->add_option("--shard-size", in->shard_size, "Largest shard")->capture_default_str();
  init->callback([&run, in] {
    run = [in] {
      InitOptions o = in->o;
      o.dtype = parse_dtype_flag(in->dtype).value_or(torch::kFloat32);
      o.max_shard_bytes = parse_byte_size(in->shard_size);
      std::cout << init_from_pretrained(o) << "\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_hf_commands);

}  // namespace owl2::cli
