// The run configuration: YAML files (with `include:`) plus `--set key=value` overrides, parsed in one
// place into typed structs and validated once. Every error names the full key path (and its file:line).
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/choices.h"
#include "owl2/infer/device.h"
#include "owl2/io/name_table.h"
#include "owl2/model/config.h"
#include "owl2/model/lora.h"

namespace owl2 {

// A bad config file, key, type or value. The CLI maps it to exit code 2.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// AdamW with a cosine schedule; defaults are the paper's stage-1 recipe (spec §4.1, Table 15).
struct OptimConfig {
  double lr = 1e-4;
  double min_lr = 1e-6;
  std::vector<double> betas{0.9, 0.98};
  double eps = 1e-6;
  double weight_decay = 0.05;
  double grad_clip = 1.0;
  int64_t warmup_steps = 1000;
  double vision_layer_decay = 0.9;  // layer-wise LR decay of the ViT (paper; never in the reference code)
};

// Which stacks recompute their blocks in backward instead of keeping activations.
struct ActivationCheckpointing {
  bool vision = true;  // the reference always checkpoints the ViT in training
  bool abstractor = false;
  bool decoder = true;
};

// The training dtype policy (trainers/precision.h): fp32; bf16 weights with fp32 masters; bf16 autocast over fp32.
enum class Precision { kFp32, kBf16, kBf16Autocast };
inline constexpr NameTable<Precision, 3> kPrecisionNames{
    {{Precision::kFp32, "fp32"}, {Precision::kBf16, "bf16"}, {Precision::kBf16Autocast, "bf16-autocast"}}};
inline const char* precision_name(Precision p) { return name_of(kPrecisionNames, p).data(); }

struct TrainConfig {
  int64_t steps = 1000;
  int64_t global_batch_size = 256;
  int64_t micro_batch_size = 1;
  int64_t seed = 0;
  Precision precision = Precision::kFp32;
  // auto: cuda:LOCAL_RANK when a GPU is visible (NCCL between ranks), else the CPU (Gloo); cpu; cuda (exit 2
  // without a GPU). docs/gpu.md
  DeviceKind device = DeviceKind::kAuto;
  std::string out_dir = "runs/default";
  int64_t max_nonfinite_steps = 3;  // stop after this many non-finite steps in a row (each is skipped)
  int64_t max_length = 2048;        // decoder tokens per sample after splicing the visual tokens
  ActivationCheckpointing activation_checkpointing;
  int64_t log_every = 10;           // plain progress lines off a terminal
  int64_t save_every = 0;           // steps between training checkpoints; 0: only at the end
  int64_t keep_last = 2;            // training checkpoints kept
  bool tensorboard = true;          // rank 0 also writes TensorBoard event files next to metrics.jsonl
};

// The dtype of ZeRO's gradient collectives under train.precision bf16 (docs/distributed.md): fp32 (the bf16
// gradients widened, exact), or bf16 (half the bytes); either way the result accumulates in the fp32 gradient shard.
enum class ReduceDtype { kFp32, kBf16 };
inline constexpr NameTable<ReduceDtype, 2> kReduceDtypeNames{{{ReduceDtype::kFp32, "fp32"}, {ReduceDtype::kBf16, "bf16"}}};
inline const char* reduce_dtype_name(ReduceDtype d) { return name_of(kReduceDtypeNames, d).data(); }

// Data parallelism across ranks (torchrun/Slurm); docs/distributed.md.
struct DistributedConfig {
  // 0 replicated, 1 AdamW state sharded, 2 + gradients sharded (reduce-scatter), 3 + decoder block parameters
  // sharded (gathered per block for forward and recompute)
  int64_t zero_stage = 0;
  double bucket_mb = 25;      // gradient bucket size: one collective per bucket, launched during backward
  int64_t timeout_s = 600;    // a collective that takes longer fails, naming the rank, step and collective
  ReduceDtype reduce_dtype = ReduceDtype::kFp32;  // ZeRO with train.precision bf16: gradient collectives' dtype
  bool prefetch = true;  // ZeRO 3: start the next block's all-gather while the current one computes
};

struct DataSource {
  std::string path;     // tar shards (a folder or .tar), JSONL, or LLaVA JSON
  double weight = 1.0;  // share in the mixture
};

struct DataConfig {
  std::string tokenizer;                 // SentencePiece .model
  TemplateKind chat_template = TemplateKind::kMplugOwl2;
  std::vector<DataSource> sources;
  ImageMode image_mode = ImageMode::kPad;  // resize | pad | crop (spec §3.1)
  bool augment = false;                  // random resized crop + horizontal flip (BLIP-2 style)
  int64_t num_workers = 2;               // decode threads
  bool group_by_modality = false;
  data::LengthPolicy length_policy = data::LengthPolicy::kDrop;  // drop | truncate samples over train.max_length
  double max_bad_fraction = 0.01;
  // Sequence packing (docs/datasets.md, "Packing"): > 0 packs samples into rows of at most this many decoder
  // tokens (visual tokens counted); train.*_batch_size then count rows. 0 = one sample per row.
  int64_t pack_tokens = 0;
  int64_t pack_buffer = 64;  // look-ahead of the best-fit packer, in samples
  int64_t video_frames = 8;  // frames sampled from each "video" sample, each an image slot (docs/datasets.md)
  VideoLayout video_layout = VideoLayout::kFramesFirst;  // frames_first | numbered (data/choices.h)
  // Streaming (docs/datasets.md, "Streaming"): the one tar-shard source is read shard by shard, each rank its own
  // shards, with no index; false: every shard is indexed at start-up and samples are shuffled globally.
  bool streaming = false;
};

// Where the weights start: a directory or file of owl2 / HF-layout weights; empty: the documented random init.
struct InitConfig {
  std::string from;
  bool allow_missing = false;            // e.g. a text-only LLM checkpoint without vision weights
};

// Periodic evaluation on a held-out question file (JSONL with question_id, image, prompt, answer, type).
struct EvalConfig {
  std::string heldout;
  int64_t every = 0;                     // steps; 0: at the end only
  int64_t limit = 0;                     // questions; 0: all
  int64_t batch_size = 32;
  int64_t max_new_tokens = 12;
};

// Freezing: ordered rules over parameter names, first match wins. `pattern` is a glob over the full name:
// '*' matches any run of characters (dots included), '?' one character, e.g. "model.layers.*.multiway.1.*".
struct FreezeRule {
  std::string pattern;
  bool trainable = true;
};

// Optimizer parameter groups over the trainable parameters, first match wins.
struct ParamGroupRule {
  std::string name;                    // shown in the table; defaults to the pattern
  std::string pattern;
  double lr_scale = 1.0;               // multiplies the scheduled LR
  std::optional<double> weight_decay;  // unset: optim.weight_decay
};

struct RunConfig {
  ModelConfig model;
  OptimConfig optim;
  TrainConfig train;
  DataConfig data;
  InitConfig init;
  EvalConfig eval;
  DistributedConfig distributed;
  std::vector<FreezeRule> freeze{{"*", true}};  // replaced by the LoRA rule when lora.rank > 0
  // No weight decay on biases and norms (the reference trainer's rule); everything else in one group.
  std::vector<ParamGroupRule> param_groups{{"no_decay", "*.bias", 1.0, 0.0},
                                           {"norms", "*norm*", 1.0, 0.0},
                                           {"ffn_ln", "*ffn_ln*", 1.0, 0.0},
                                           {"default", "*", 1.0, std::nullopt}};
  // LoRA fine-tuning (owl2/model/lora.h, docs/lora.md): rank > 0 adds adapters to lora.targets and trains only
  // them and lora.modules_to_save; every other parameter is frozen whatever `freeze` says.
  LoraSpec lora;
};

// Reads `path`, resolves `include:` (relative to the including file, later wins), applies the
// overrides ("optim.lr=2e-5", value parsed as YAML), parses and validates. Throws ConfigError.
// A path ending in .json is read as the reference config.json layout (LLaMA fields at the top level,
// visual_config.visual_model and visual_config.visual_abstractor) into the model section.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Parses a YAML document given as text (no includes); `origin` names it in messages.
RunConfig parse_config_text(const std::string& yaml, const std::string& origin = "<string>");

// The resolved configuration as YAML, every key with its value (defaults included).
std::string to_yaml(const RunConfig& cfg);

// Edit distance, used to suggest the closest valid key.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace owl2
