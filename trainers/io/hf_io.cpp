// import_hf, export_hf, init_from_pretrained and the HF config files; see hf_io.h.
#include "trainers/io/hf_io.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>

#include "data/tokenizer.h"
#include "owl2/model/abstractor.h"
#include "owl2/io/dtype_names.h"
#include "owl2/model/init.h"
#include "owl2/io/fileio.h"
#include "owl2/io/lora_files.h"
#include "owl2/model/model.h"
#include "owl2/io/state_dict.h"
#include "owl2/model/vision.h"
#include "trainers/io/model_dir.h"
#include "trainers/checkpoint.h"
#include "trainers/parallel/zero.h"

namespace owl2 {
namespace fs = std::filesystem;
namespace {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

uint64_t numel_of(const Shape& s) {
  uint64_t n = 1;
  for (int64_t d : s) n *= static_cast<uint64_t>(d);
  return n;
}

// Tensors made on demand: each name has its metadata up front and a recipe that reads (and, for init, fuses or
// interpolates) the source tensors only when the writer reaches that name's shard.
class ComposedSource final : public TensorSource {
 public:
  struct Entry {
    TensorMeta meta;
    std::function<torch::Tensor()> make;
    std::string where;
  };
  void add(const std::string& name, torch::Dtype dtype, Shape shape, std::function<torch::Tensor()> make,
           std::string where) {
    Entry& e = entries_[name];
    e.meta.dtype = dtype;
    e.meta.shape = std::move(shape);
    e.make = std::move(make);
    e.where = std::move(where);
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& kv : entries_) out.push_back(kv.first);
    return out;
  }
  bool contains(const std::string& name) const override { return entries_.count(name) > 0; }
  TensorMeta meta(const std::string& name) const override { return entries_.at(name).meta; }
  torch::Tensor get(const std::string& name) const override { return entries_.at(name).make(); }
  std::string where(const std::string& name) const override { return entries_.at(name).where; }

 private:
  std::map<std::string, Entry> entries_;
};

void add_passthrough(ComposedSource& out, const TensorSource& src, const std::string& name) {
  const TensorMeta m = src.meta(name);
  out.add(name, m.dtype, m.shape, [&src, name] { return src.get(name); }, src.where(name));
}

bool matches_any(const std::string& name, const std::vector<std::string>& patterns) {
  for (const auto& p : patterns)
    if (std::regex_search(name, std::regex(p))) return true;
  return false;
}

std::string bullet_list(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += "\n  " + i;
  return s;
}

void make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(fmt::format("{}: cannot create directory: {}", dir, ec.message()));
}

void write_json(const std::string& path, const nlohmann::json& j) { write_file_atomic(path, j.dump(2) + "\n"); }

void copy_into(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (fs::equivalent(from, to, ec)) return;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot copy {} to {}: {}", from, to, ec.message()));
}

// config.yaml goes last: a directory without it is not a model directory, so an interrupted import or init
// never looks complete.
void write_model_config(const std::string& out_dir, const RunConfig& cfg, const std::string& origin) {
  write_file_atomic(out_dir + "/config.yaml", "# " + origin + "\n" + to_yaml(cfg));
}

// The tokenizer a new model folder carries: `candidate` (the source checkpoint's tokenizer.model) if it exists,
// else the config's data.tokenizer (read from the working directory, as a run config's paths are), else none.
// Checked before anything is written; the folder's config.yaml then records kModelDirTokenizer.
std::string bundled_tokenizer(const std::string& candidate, const RunConfig& cfg, const std::string& config) {
  if (fs::is_regular_file(candidate)) return candidate;
  if (cfg.data.tokenizer.empty()) return "";
  if (!fs::is_regular_file(cfg.data.tokenizer)) {
    throw std::invalid_argument(fmt::format("{}: data.tokenizer '{}': no such file (and no {})", config,
                                            cfg.data.tokenizer, candidate));
  }
  return cfg.data.tokenizer;
}

std::optional<nlohmann::json> read_json_if_present(const std::string& path) {
  if (!fs::is_regular_file(path)) return std::nullopt;
  try {
    return nlohmann::json::parse(read_file_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

}  // namespace

std::string KeyReport::summary() const {
  std::string s = fmt::format("{} tensors matched", matched.size());
  if (!ignored.empty()) s += fmt::format("; {} recomputable buffers ignored", ignored.size());
  if (!unexpected.empty()) s += fmt::format("; {} unexpected dropped: {}", unexpected.size(), fmt::join(unexpected, ", "));
  return s;
}

KeyReport check_model_keys(const TensorSource& source, const ModelConfig& cfg, const std::string& label,
                           bool allow_unexpected) {
  KeyReport report;
  std::set<std::string> expected;
  std::vector<std::string> missing, shape_errors, dtype_errors;
  for (const auto& p : parameter_shapes(cfg)) {
    expected.insert(p.name);
    if (!source.contains(p.name)) {
      missing.push_back(fmt::format("{} {}", p.name, shape_str(p.shape)));
      continue;
    }
    const auto m = source.meta(p.name);
    if (m.shape != p.shape) {
      shape_errors.push_back(fmt::format("{}: checkpoint {} in {} vs config {}", p.name, shape_str(m.shape),
                                         source.where(p.name), shape_str(p.shape)));
    } else if (!c10::isFloatingType(m.dtype)) {
      dtype_errors.push_back(fmt::format("{}: {} in {}, expected a floating-point tensor", p.name,
                                         c10::toString(m.dtype), source.where(p.name)));
    } else {
      report.matched.push_back(p.name);
    }
  }
  const auto ignorable = default_ignorable_keys();
  for (const auto& n : source.names()) {
    if (expected.count(n)) continue;
    (matches_any(n, ignorable) ? report.ignored : report.unexpected).push_back(n);
  }
  std::string problems;
  if (!shape_errors.empty()) problems += fmt::format("\n{} shape mismatch(es):{}", shape_errors.size(), bullet_list(shape_errors));
  if (!dtype_errors.empty()) problems += fmt::format("\n{} wrong dtype(s):{}", dtype_errors.size(), bullet_list(dtype_errors));
  if (!missing.empty()) problems += fmt::format("\n{} missing from the checkpoint:{}", missing.size(), bullet_list(missing));
  if (!report.unexpected.empty() && !allow_unexpected)
    problems += fmt::format("\n{} unexpected in the checkpoint (no such parameter in the model the config builds; "
                            "--allow-unexpected drops them):{}",
                            report.unexpected.size(), bullet_list(report.unexpected));
  if (!problems.empty()) throw std::runtime_error(fmt::format("{} does not match the config:{}", label, problems));
  return report;
}

KeyReport import_hf(const std::string& hf_dir, const std::string& out_dir, const ImportOptions& options) {
  if (!fs::is_directory(hf_dir)) throw std::invalid_argument(hf_dir + ": no such directory");
  const std::string config = options.config.empty() ? hf_dir + "/config.json" : options.config;
  if (!fs::is_regular_file(config))
    throw std::invalid_argument(fmt::format("{}: no config.json; pass --config FILE", hf_dir));
  RunConfig cfg = load_config(config);
  const std::string tok = bundled_tokenizer(hf_dir + "/tokenizer.model", cfg, config);
  const auto source = open_tensor_source(hf_dir);
  const KeyReport report = check_model_keys(*source, cfg.model, hf_dir, options.allow_unexpected);

  ComposedSource kept;  // the model's names only: buffers and dropped names are not written
  for (const auto& n : report.matched) add_passthrough(kept, *source, n);
  make_dir(out_dir);
  convert_to_safetensors(kept, out_dir, options.max_shard_bytes, options.dtype);

  if (!tok.empty()) cfg.data.tokenizer = copy_tokenizer_into(tok, out_dir);
  write_model_config(out_dir, cfg, "owl2 import from " + hf_dir + " (model section from " + config + ")");
  return report;
}

nlohmann::json hf_config_json(const RunConfig& cfg, const std::string& torch_dtype) {
  const auto& v = cfg.model.vision;
  const auto& a = cfg.model.abstractor;
  const auto& d = cfg.model.decoder;
  nlohmann::json visual_model = {
      {"model_type", "mplug_owl_vision_model"}, {"hidden_size", v.hidden_size},
      {"intermediate_size", v.intermediate_size}, {"projection_dim", 768},  // unused by the model (spec §1.1)
      {"num_hidden_layers", v.num_hidden_layers}, {"num_attention_heads", v.num_attention_heads},
      {"num_channels", v.num_channels}, {"image_size", v.image_size}, {"patch_size", v.patch_size},
      {"hidden_act", "quick_gelu"}, {"layer_norm_eps", v.layer_norm_eps}, {"attention_dropout", 0.0},
      {"initializer_range", cfg.model.initializer_range}, {"initializer_factor", 1.0}, {"use_flash_attn", false},
      {"use_post_layernorm", true}, {"use_cls_token", true}};
  nlohmann::json visual_abstractor = {
      {"model_type", "mplug_owl_visual_abstract"}, {"add_v2t_pos_emb", false}, {"use_cls_token", true},
      {"num_learnable_queries", a.num_learnable_queries}, {"hidden_size", a.hidden_size},
      {"num_hidden_layers", a.num_hidden_layers}, {"num_attention_heads", a.num_attention_heads},
      {"intermediate_size", a.intermediate_size}, {"attention_probs_dropout_prob", 0.0},
      {"initializer_range", cfg.model.initializer_range}, {"layer_norm_eps", a.layer_norm_eps},
      {"encoder_hidden_size", a.encoder_hidden_size}, {"grid_size", a.grid_size}};
  nlohmann::json j = {
      {"architectures", {"MPLUGOwl2LlamaForCausalLM"}}, {"model_type", "mplug_owl2"},
      {"vocab_size", d.vocab_size}, {"hidden_size", d.hidden_size}, {"intermediate_size", d.intermediate_size},
      {"num_hidden_layers", d.num_hidden_layers}, {"num_attention_heads", d.num_attention_heads},
      {"num_key_value_heads", d.num_key_value_heads}, {"hidden_act", "silu"},
      {"max_position_embeddings", d.max_position_embeddings}, {"rms_norm_eps", d.rms_norm_eps},
      {"rope_theta", d.rope_theta}, {"rope_scaling", nullptr}, {"attention_bias", false}, {"pretraining_tp", 1},
      {"tie_word_embeddings", false}, {"initializer_range", cfg.model.initializer_range}, {"use_cache", true},
      {"bos_token_id", Tokenizer::kBosId}, {"eos_token_id", Tokenizer::kEosId}, {"torch_dtype", torch_dtype},
      {"transformers_version", "4.31.0"},  // the version the reference code pins (spec §1.3)
      {"visual_config", {{"visual_model", visual_model}, {"visual_abstractor", visual_abstractor}}}};
  // process_images reads image_aspect_ratio (spec §3.1): 'pad' and 'resize' are its branches; without the
  // field the CLIP processor alone runs (shortest-edge resize + center crop), owl2's "crop".
  if (cfg.data.image_mode != ImageMode::kCrop) {
    j["image_aspect_ratio"] = std::string(name_of(kImageModeNames, cfg.data.image_mode));
  }
  return j;
}

nlohmann::json hf_preprocessor_config_json(const VisionConfig& vision) {
  // CLIP statistics and bicubic (PIL resample 3) resize to the model's image size (spec §3.1).
  return {{"image_processor_type", "CLIPImageProcessor"},
          {"do_convert_rgb", true},
          {"do_resize", true},
          {"size", {{"shortest_edge", vision.image_size}}},
          {"resample", 3},
          {"do_center_crop", true},
          {"crop_size", {{"height", vision.image_size}, {"width", vision.image_size}}},
          {"do_rescale", true},
          {"rescale_factor", 1.0 / 255.0},
          {"do_normalize", true},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}}};
}

namespace {

// A training checkpoint's weights as one source, each tensor read only when asked for (views of the memory-mapped
// files): model.safetensors and, under ZeRO, the trainable (and stage 3's frozen) values put together from
// the ranks' shards, whatever world size wrote them. Also its saved config.
struct CheckpointWeights {
  RunConfig cfg;
  std::shared_ptr<ComposedSource> tensors = std::make_shared<ComposedSource>();
};

CheckpointWeights open_checkpoint_weights(const std::string& checkpoint_dir) {
  const fs::path dir(checkpoint_dir);
  if (!fs::is_regular_file(dir / "state.json"))
    throw std::invalid_argument(fmt::format("{}: not a training checkpoint (no state.json; a run's checkpoints are "
                                            "RUN/checkpoints/step-N)",
                                            checkpoint_dir));
  const auto state = nlohmann::json::parse(read_file_text((dir / "state.json").string()), nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("config"))
    throw std::invalid_argument(fmt::format("{}/state.json: not a checkpoint state (no \"config\")", checkpoint_dir));
  CheckpointWeights out;
  out.cfg = parse_config_text(state.at("config").get<std::string>(), (dir / "state.json").string() + " config");
  auto model = std::make_shared<SafetensorsFile>((dir / "model.safetensors").string());
  for (const auto& n : model->names()) {
    const TensorMeta m = model->meta(n);
    out.tensors->add(n, m.dtype, m.shape, [model, n] { return model->get(n); }, model->where(n));
  }
  const nlohmann::json extra = state.value("extra", nlohmann::json::object());
  if (!extra.contains("zero")) return out;
  const auto& z = extra.at("zero");
  const int64_t world = z.at("world_size").get<int64_t>();
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  std::vector<std::map<std::string, torch::Tensor>> groups;
  bool with_values = true;
  for (int64_t r = 0; r < world && with_values; ++r) {
    const auto path = dir / (zero_shard_group(r) + ".safetensors");
    if (!fs::is_regular_file(path))
      throw std::invalid_argument(fmt::format("{}: missing ZeRO shard {} (saved at world size {})", checkpoint_dir,
                                              path.filename().string(), world));
    files.push_back(std::make_shared<SafetensorsFile>(path.string()));
    with_values = files.back()->contains("values");
    std::map<std::string, torch::Tensor> g;
    for (const char* key : {"values", "segments", "frozen_values", "frozen_segments"})
      if (files.back()->contains(key)) g[key] = files.back()->get(key);  // views of the mapping
    groups.push_back(std::move(g));
  }
  if (!with_values) return out;  // an older checkpoint: its model group is complete
  for (const auto part : {ZeroShardValues::Part::kTrainable, ZeroShardValues::Part::kFrozen}) {
    if (part == ZeroShardValues::Part::kFrozen && !z.contains("frozen")) continue;  // ZeRO 3 only
    auto values = std::make_shared<ZeroShardValues>(z, groups, checkpoint_dir, part);
    for (size_t k = 0; k < values->size(); ++k) {
      if (model->contains(values->name(k)))
        throw std::invalid_argument(fmt::format("{}: '{}' is both in model.safetensors and in the ZeRO shards",
                                                checkpoint_dir, values->name(k)));
      out.tensors->add(values->name(k), values->dtype(), values->shape(k), [values, files, k] { return values->get(k); },
                       checkpoint_dir + "/" + zero_shard_group(0) + ".safetensors ...");
    }
  }
  return out;
}

// The adapter of a LoRA checkpoint's weights written to ADAPTER_DIR (only the adapter tensors and the parameters
// of `saved_modules` are read).
size_t write_adapter(const CheckpointWeights& w, const std::string& checkpoint_dir, const std::string& adapter_dir,
                     const std::vector<std::string>& saved_modules) {
  if (w.cfg.lora.rank <= 0)
    throw std::invalid_argument(fmt::format("{}: not a LoRA run's checkpoint (lora.rank is 0)", checkpoint_dir));
  NamedTensors state;
  for (const auto& n : w.tensors->names()) {
    bool keep = is_lora_parameter(n);
    for (const auto& m : saved_modules) keep = keep || n.starts_with(m + ".");
    if (keep) state.emplace_back(n, w.tensors->get(n));
  }
  return save_lora_adapter(adapter_dir, state, w.cfg.lora, saved_modules, w.cfg.init.from);
}

}  // namespace

size_t write_checkpoint_adapter(const std::string& checkpoint_dir, const std::string& adapter_dir,
                                const std::vector<std::string>& saved_modules) {
  return write_adapter(open_checkpoint_weights(checkpoint_dir), checkpoint_dir, adapter_dir, saved_modules);
}

size_t consolidate_checkpoint(const std::string& checkpoint_dir, const std::string& out_dir,
                              const ConsolidateOptions& options) {
  CheckpointWeights w = open_checkpoint_weights(checkpoint_dir);
  RunConfig& cfg = w.cfg;
  check_model_keys(*w.tensors, cfg.model, checkpoint_dir, /*allow_unexpected=*/cfg.lora.rank > 0);
  std::shared_ptr<const TensorSource> out = w.tensors;
  make_dir(out_dir);
  if (options.merge_lora && cfg.lora.rank > 0) {
    // The adapter first, then the weights with it folded in, one tensor at a time, as the export merges.
    const std::string adapter_dir = (fs::path(out_dir) / "adapter").string();
    write_adapter(w, checkpoint_dir, adapter_dir, options.lora_saved_modules);
    auto files = std::make_shared<const AdapterFiles>(read_lora_adapter(adapter_dir));
    auto merged = std::make_shared<ComposedSource>();
    const auto src = w.tensors;
    const auto dtype = options.dtype;
    for (const auto& n : src->names()) {
      if (is_lora_parameter(n)) continue;
      const TensorMeta m = src->meta(n);
      const std::string module = n.ends_with(".weight") ? n.substr(0, n.size() - 7) : std::string();
      if (!module.empty() && files->adapters.count(module)) {
        // In the output dtype when one is asked for: a float32 export merges into the float32 weight, as a merge
        // in the model after end_to_fp32 does.
        merged->add(n, dtype.value_or(m.dtype), m.shape,
                    [src, files, n, module, dtype] {
                      auto weight = src->get(n);
                      if (dtype && weight.is_floating_point()) weight = weight.to(*dtype);
                      return merged_weight(weight, *files, module);
                    },
                    files->weights_path);
      } else {
        merged->add(n, m.dtype, m.shape, [src, n] { return src->get(n); }, src->where(n));
      }
    }
    out = merged;
    cfg.lora.rank = 0;  // the folder's weights are merged: loading it adds no adapter
  }
  const std::string tokenizer = options.tokenizer.empty() ? cfg.data.tokenizer : options.tokenizer;
  cfg.data.tokenizer = copy_tokenizer_into(tokenizer, out_dir);
  convert_to_safetensors(*out, out_dir, options.max_shard_bytes, options.dtype);
  write_file_atomic((fs::path(out_dir) / "config.yaml").string(), to_yaml(cfg));
  return out->names().size();
}

size_t export_hf(const std::string& model_dir, const std::string& hf_dir, const ExportOptions& options) {
  const RunConfig cfg = read_model_dir_config(model_dir);
  const std::string tok_path = options.tokenizer.empty()
                                   ? model_dir_tokenizer(model_dir, cfg.data.tokenizer, options.allow_external_tokenizer)
                                   : options.tokenizer;
  const Tokenizer tokenizer(tok_path);
  const auto source = open_tensor_source(model_dir);
  const KeyReport report = check_model_keys(*source, cfg.model, model_dir, /*allow_unexpected=*/false);

  ComposedSource out;
  if (options.merge_lora.empty()) {
    for (const auto& n : report.matched) add_passthrough(out, *source, n);
  } else {
    auto files = std::make_shared<const AdapterFiles>(read_lora_adapter(options.merge_lora));
    std::set<std::string> used;
    for (const auto& n : report.matched) {
      const TensorMeta m = source->meta(n);
      const std::string module = n.ends_with(".weight") ? n.substr(0, n.size() - 7) : std::string();
      const TensorSource* src = source.get();
      if (!module.empty() && files->adapters.count(module)) {
        out.add(n, m.dtype, m.shape, [src, files, n, module] { return merged_weight(src->get(n), *files, module); },
                files->weights_path);
        used.insert(module);
      } else if (files->full.count(n)) {
        if (files->full.at(n).sizes() != c10::IntArrayRef(m.shape)) {
          throw std::runtime_error(fmt::format("{}: '{}' has shape {}, the model's is {}", files->weights_path, n,
                                               shape_str(files->full.at(n).sizes().vec()), shape_str(m.shape)));
        }
        out.add(n, m.dtype, m.shape, [files, n, dtype = m.dtype] { return files->full.at(n).to(dtype); },
                files->weights_path);
        used.insert(n);
      } else {
        add_passthrough(out, *source, n);
      }
    }
    for (const auto& [module, _] : files->adapters) {
      if (!used.count(module)) throw std::runtime_error(fmt::format("{}: the model has no module '{}'", files->weights_path, module));
    }
    for (const auto& [name, _] : files->full) {
      if (!used.count(name)) throw std::runtime_error(fmt::format("{}: the model has no parameter '{}'", files->weights_path, name));
    }
  }
  // The abstractor's sin-cos tables (spec §1.2), float32 like the reference buffers.
  const auto& a = cfg.model.abstractor;
  const Shape q_shape{a.num_learnable_queries, a.hidden_size}, k_shape{a.grid_size * a.grid_size + 1, a.hidden_size};
  for (int64_t i = 0; i < a.num_hidden_layers; ++i) {
    const std::string pre = fmt::format("model.visual_abstractor.encoder.layers.{}.crossattention.attention.", i);
    out.add(pre + "q_pos_embed", torch::kFloat32, q_shape,
            [a] { return sincos_1d(a.hidden_size, torch::arange(a.num_learnable_queries, torch::kFloat32)); }, "<computed>");
    out.add(pre + "k_pos_embed", torch::kFloat32, k_shape, [a] { return sincos_2d_with_cls(a.hidden_size, a.grid_size); },
            "<computed>");
  }
  const torch::Dtype stored = source->meta("model.embed_tokens.weight").dtype;
  make_dir(hf_dir);
  convert_to_safetensors(out, hf_dir, options.max_shard_bytes, options.dtype);

  copy_into(tok_path, hf_dir + "/tokenizer.model");
  const std::string bos = tokenizer.id_to_piece(Tokenizer::kBosId), eos = tokenizer.id_to_piece(Tokenizer::kEosId),
                    unk = tokenizer.id_to_piece(Tokenizer::kUnkId);
  // LlamaTokenizer (slow, SentencePiece) as the reference loads it (use_fast=False, spec §3.3); pad = unk as in
  // training; legacy true keeps the 4.31 handling of text after special tokens that owl2's tokenizer matches.
  write_json(hf_dir + "/tokenizer_config.json",
             {{"tokenizer_class", "LlamaTokenizer"}, {"add_bos_token", true}, {"add_eos_token", false},
              {"bos_token", bos}, {"eos_token", eos}, {"unk_token", unk}, {"pad_token", unk},
              {"clean_up_tokenization_spaces", false}, {"legacy", true},
              {"model_max_length", cfg.model.decoder.max_position_embeddings}, {"padding_side", "right"},
              {"sp_model_kwargs", nlohmann::json::object()}});
  write_json(hf_dir + "/special_tokens_map.json",
             {{"bos_token", bos}, {"eos_token", eos}, {"unk_token", unk}, {"pad_token", unk}});
  write_json(hf_dir + "/generation_config.json",
             {{"bos_token_id", Tokenizer::kBosId}, {"eos_token_id", Tokenizer::kEosId},
              {"pad_token_id", Tokenizer::kPadId}, {"max_length", cfg.model.decoder.max_position_embeddings},
              {"transformers_version", "4.31.0"}});
  write_json(hf_dir + "/preprocessor_config.json", hf_preprocessor_config_json(cfg.model.vision));
  write_json(hf_dir + "/config.json", hf_config_json(cfg, std::string(hf_dtype_name(options.dtype.value_or(stored)))));
  return out.names().size();
}

namespace {

// One owl2 tensor of `init`: the source keys it reads (with the shapes the config needs) and how it is built.
struct Recipe {
  const TensorSource* src = nullptr;
  std::vector<std::string> keys;
  std::vector<Shape> shapes;  // empty shape: any [T, D] position table (checked separately)
  std::function<torch::Tensor(std::vector<torch::Tensor>)> build;
};

// HF CLIPVisionModel -> owl2 ViT names (spec §2.2 vs transformers' CLIP layout).
// `c` is the key prefix: "vision_model." (CLIPModel, and CLIPVisionModel up to transformers 4.x) or "".
std::map<std::string, Recipe> vision_recipes(const TensorSource& clip, const VisionConfig& v, const std::string& c) {
  const int64_t D = v.hidden_size, H = v.num_attention_heads, K = D / H;
  const std::string o = "model.vision_model.";
  std::map<std::string, Recipe> r;
  auto same = [&](const std::string& ours, const std::string& theirs, Shape shape) {
    r[o + ours] = {&clip, {c + theirs}, {shape}, [](std::vector<torch::Tensor> t) { return t[0]; }};
  };
  r[o + "embeddings.cls_token"] = {&clip, {c + "embeddings.class_embedding"}, {{D}},
                                   [D](std::vector<torch::Tensor> t) { return t[0].reshape({1, 1, D}); }};
  same("embeddings.patch_embed.weight", "embeddings.patch_embedding.weight", {D, v.num_channels, v.patch_size, v.patch_size});
  // CLIP's table is [T0, D]; a different grid is resampled in float64 (bicubic, class row kept).
  r[o + "embeddings.position_embedding"] = {
      &clip, {c + "embeddings.position_embedding.weight"}, {{}}, [grid = v.grid()](std::vector<torch::Tensor> t) {
        return interpolate_position_embedding(t[0].to(torch::kFloat64).unsqueeze(0), grid);
      }};
  for (const char* p : {"weight", "bias"}) {
    same(fmt::format("embeddings.pre_layernorm.{}", p), fmt::format("pre_layrnorm.{}", p), {D});
    same(fmt::format("post_layernorm.{}", p), fmt::format("post_layernorm.{}", p), {D});
  }
  for (int64_t l = 0; l < v.num_hidden_layers; ++l) {
    const std::string ol = fmt::format("encoder.layers.{}.", l), cl = ol;
    for (const char* p : {"weight", "bias"}) {
      const bool w = std::string(p) == "weight";
      same(ol + "input_layernorm." + p, cl + "layer_norm1." + p, {D});
      same(ol + "post_attention_layernorm." + p, cl + "layer_norm2." + p, {D});
      same(ol + "self_attn.dense." + p, cl + "self_attn.out_proj." + p, w ? Shape{D, D} : Shape{D});
      same(ol + "mlp.fc1." + p, cl + "mlp.fc1." + p, w ? Shape{v.intermediate_size, D} : Shape{v.intermediate_size});
      same(ol + "mlp.fc2." + p, cl + "mlp.fc2." + p, w ? Shape{D, v.intermediate_size} : Shape{D});
      // Fused rows are laid out per head as [h][q|k|v][K] (spec §1.1): stack [H, K, ...] blocks on a new axis 1.
      const Shape part = w ? Shape{D, D} : Shape{D};
      r[o + ol + "self_attn.query_key_value." + p] = {
          &clip,
          {c + cl + "self_attn.q_proj." + p, c + cl + "self_attn.k_proj." + p, c + cl + "self_attn.v_proj." + p},
          {part, part, part},
          [H, K, D, w](std::vector<torch::Tensor> t) {
            const Shape per_head = w ? Shape{H, 1, K, D} : Shape{H, 1, K};
            return torch::cat({t[0].reshape(per_head), t[1].reshape(per_head), t[2].reshape(per_head)}, 1)
                .reshape(w ? Shape{3 * D, D} : Shape{3 * D});
          }};
    }
  }
  return r;
}

// HF LlamaForCausalLM -> owl2 decoder: the same names with both multiway copies read from the one LLaMA tensor.
std::map<std::string, Recipe> decoder_recipes(const TensorSource& llm, const ModelConfig& cfg) {
  std::map<std::string, Recipe> r;
  static const std::regex multiway(R"(\.multiway\.[01])");
  for (const auto& p : parameter_shapes(cfg)) {
    if (p.name.rfind("model.vision_model.", 0) == 0 || p.name.rfind("model.visual_abstractor.", 0) == 0) continue;
    r[p.name] = {&llm, {std::regex_replace(p.name, multiway, "")}, {p.shape},
                 [](std::vector<torch::Tensor> t) { return t[0]; }};
  }
  return r;
}

std::string describe(const std::vector<std::string>& v) { return v.empty() ? "none" : fmt::format("{}", fmt::join(v, ", ")); }

}  // namespace

std::string init_from_pretrained(const InitOptions& opt) {
  RunConfig cfg = load_config(opt.config);
  const std::string tok = bundled_tokenizer(opt.llm_dir + "/tokenizer.model", cfg, opt.config);
  const ModelConfig& mc = cfg.model;
  const auto clip = open_tensor_source(opt.vision_dir);
  const auto llm = open_tensor_source(opt.llm_dir);
  std::vector<std::string> notes;

  // The source configs are only checked for what the weights cannot show: the activation and the epsilons.
  if (const auto cj = read_json_if_present(opt.vision_dir + "/config.json")) {
    const auto& vj = cj->contains("vision_config") ? (*cj)["vision_config"] : *cj;  // CLIPModel nests it
    if (vj.contains("hidden_act") && vj["hidden_act"] != "quick_gelu")
      throw std::invalid_argument(fmt::format("{}/config.json: hidden_act {} but owl2's ViT uses quick_gelu (spec §1.1)",
                                              opt.vision_dir, vj["hidden_act"].dump()));
    // Heads do not show in the weight shapes but decide the q/k/v interleave.
    if (vj.contains("num_attention_heads") && vj["num_attention_heads"].get<int64_t>() != mc.vision.num_attention_heads)
      throw std::invalid_argument(fmt::format("{}/config.json: num_attention_heads {} but the config's "
                                              "vision.num_attention_heads is {}", opt.vision_dir,
                                              vj["num_attention_heads"].get<int64_t>(), mc.vision.num_attention_heads));
    if (vj.contains("layer_norm_eps") && vj["layer_norm_eps"].get<double>() != mc.vision.layer_norm_eps)
      notes.push_back(fmt::format("CLIP layer_norm_eps {} replaced by the config's vision.layer_norm_eps {}",
                                  vj["layer_norm_eps"].get<double>(), mc.vision.layer_norm_eps));
  }
  if (const auto lj = read_json_if_present(opt.llm_dir + "/config.json")) {
    if (lj->contains("hidden_act") && (*lj)["hidden_act"] != "silu")
      throw std::invalid_argument(fmt::format("{}/config.json: hidden_act {} but the decoder uses silu (spec §1.3)",
                                              opt.llm_dir, (*lj)["hidden_act"].dump()));
    if (lj->contains("num_attention_heads") && (*lj)["num_attention_heads"].get<int64_t>() != mc.decoder.num_attention_heads)
      throw std::invalid_argument(fmt::format("{}/config.json: num_attention_heads {} but the config's "
                                              "decoder.num_attention_heads is {}", opt.llm_dir,
                                              (*lj)["num_attention_heads"].get<int64_t>(), mc.decoder.num_attention_heads));
    if (lj->contains("rope_theta") && (*lj)["rope_theta"].get<double>() != mc.decoder.rope_theta)
      notes.push_back(fmt::format("LLaMA rope_theta {} replaced by the config's decoder.rope_theta {}",
                                  (*lj)["rope_theta"].get<double>(), mc.decoder.rope_theta));
    if (lj->contains("rms_norm_eps") && (*lj)["rms_norm_eps"].get<double>() != mc.decoder.rms_norm_eps)
      notes.push_back(fmt::format("LLaMA rms_norm_eps {} replaced by the config's decoder.rms_norm_eps {}",
                                  (*lj)["rms_norm_eps"].get<double>(), mc.decoder.rms_norm_eps));
  }

  // transformers 5 saves CLIPVisionModel without the vision_model. prefix that CLIPModel and 4.x files carry.
  std::string prefix;
  if (clip->contains("vision_model.embeddings.class_embedding")) prefix = "vision_model.";
  else if (!clip->contains("embeddings.class_embedding"))
    throw std::invalid_argument(fmt::format("{}: no embeddings.class_embedding or vision_model.embeddings.class_embedding; "
                                            "expected an HF CLIPVisionModel or CLIPModel checkpoint", opt.vision_dir));
  auto recipes = vision_recipes(*clip, mc.vision, prefix);
  for (auto& [k, rec] : decoder_recipes(*llm, mc)) recipes[k] = std::move(rec);

  // Check every source key and shape before writing anything.
  std::vector<std::string> problems;
  std::set<std::string> used_clip, used_llm;
  for (const auto& [name, rec] : recipes) {
    const std::string which = rec.src == clip.get() ? "CLIP" : "LLaMA";
    for (size_t i = 0; i < rec.keys.size(); ++i) {
      const auto& key = rec.keys[i];
      (rec.src == clip.get() ? used_clip : used_llm).insert(key);
      if (!rec.src->contains(key)) {
        problems.push_back(fmt::format("{} key {} is missing (needed for {})", which, key, name));
        continue;
      }
      const Shape got = rec.src->meta(key).shape;
      if (rec.shapes[i].empty()) {  // the position table: [1 + g*g, D] with any square grid
        const int64_t P = got.size() == 2 ? got[0] - 1 : -1;
        const auto g = P > 0 ? static_cast<int64_t>(std::llround(std::sqrt(double(P)))) : -1;
        if (got.size() != 2 || g * g != P || got[1] != mc.vision.hidden_size)
          problems.push_back(fmt::format("CLIP key {} has shape {} in {}, the config needs [1 + g*g, {}] (any grid g; "
                                         "vision.hidden_size {})",
                                         key, shape_str(got), rec.src->where(key), mc.vision.hidden_size,
                                         mc.vision.hidden_size));
      } else if (got != rec.shapes[i]) {
        problems.push_back(fmt::format("{} key {} has shape {} in {}, the config needs {} (for {})", which, key,
                                       shape_str(got), rec.src->where(key), shape_str(rec.shapes[i]), name));
      }
    }
  }
  // Leftovers: deeper towers than the config, or a different architecture. Recomputable buffers and the
  // text half of a full CLIPModel are not used.
  std::vector<std::string> unused;
  const std::vector<std::string> clip_skippable = {R"(embeddings\.position_ids$)", "^text_model\\.",
                                                   "^visual_projection\\.", "^text_projection\\.", "^logit_scale$"};
  for (const auto& n : clip->names()) {
    if (used_clip.count(n)) continue;
    if (matches_any(n, clip_skippable)) unused.push_back(n);
    else problems.push_back(fmt::format("CLIP key {} in {} has no place in the model the config builds "
                                        "(vision.num_hidden_layers {})", n, clip->where(n), mc.vision.num_hidden_layers));
  }
  for (const auto& n : llm->names()) {
    if (used_llm.count(n)) continue;
    if (matches_any(n, default_ignorable_keys())) unused.push_back(n);
    else problems.push_back(fmt::format("LLaMA key {} in {} has no place in the model the config builds "
                                        "(decoder.num_hidden_layers {})", n, llm->where(n), mc.decoder.num_hidden_layers));
  }
  if (!problems.empty())
    throw std::runtime_error(fmt::format("owl2 init: {} and {} do not fit {}:{}", opt.vision_dir, opt.llm_dir,
                                         opt.config, bullet_list(problems)));

  // The abstractor: the model's documented init (init_weights, owl2/model/init.h) after torch::manual_seed(seed).
  VisualAbstractor abstractor(mc.abstractor, mc.decoder.hidden_size);
  init_weights(abstractor, static_cast<uint64_t>(opt.seed));
  ComposedSource out;
  std::map<std::string, Shape> shapes;
  for (const auto& p : parameter_shapes(mc)) shapes[p.name] = p.shape;
  for (const auto& [name, rec] : recipes) {
    // The interpolated position table is made in float64 and cast to the init dtype when written.
    const torch::Dtype dtype = name == "model.vision_model.embeddings.position_embedding"
                                   ? torch::kFloat64 : rec.src->meta(rec.keys[0]).dtype;
    out.add(name, dtype, shapes.at(name), [&rec] {
      std::vector<torch::Tensor> t;
      for (const auto& k : rec.keys) t.push_back(rec.src->get(k));
      return rec.build(std::move(t));
    }, rec.src->where(rec.keys[0]));
  }
  for (const auto& item : abstractor->named_parameters()) {
    const torch::Tensor t = item.value().detach();
    out.add("model.visual_abstractor." + item.key(), t.scalar_type(), t.sizes().vec(), [t] { return t; }, "<random init>");
  }
  // The assembled names must be exactly the model's: a recipe table that missed or invented a name fails here.
  const auto built = out.names();
  check_model_keys(out, mc, "owl2 init (assembled tensors)");
  make_dir(opt.out_dir);
  convert_to_safetensors(out, opt.out_dir, opt.max_shard_bytes, opt.dtype);

  if (!tok.empty()) cfg.data.tokenizer = copy_tokenizer_into(tok, opt.out_dir);
  write_model_config(opt.out_dir, cfg,
                     fmt::format("owl2 init: vision {}, llm {}, abstractor seed {}", opt.vision_dir, opt.llm_dir, opt.seed));
  uint64_t bytes = 0;
  for (const auto& n : built) bytes += numel_of(out.meta(n).shape) * c10::elementSize(opt.dtype);
  return fmt::format("{}: {} tensors ({:.1f} MB, {}); abstractor random (seed {}); not used: {}{}", opt.out_dir,
                     built.size(), bytes / 1e6, c10::toString(opt.dtype), opt.seed, describe(unused),
                     notes.empty() ? "" : "; note: " + fmt::format("{}", fmt::join(notes, "; ")));
}

}  // namespace owl2
