// Opening a model folder without reading outside it; see model_dir.h.
#include "trainers/io/model_dir.h"

#include "owl2/io/lora_files.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "owl2/io/fileio.h"
#include "owl2/io/weights.h"

namespace owl2 {
namespace fs = std::filesystem;
namespace {

// Whether `path` lies inside `dir` once "..", "." and symbolic links are resolved.
bool inside(const fs::path& path, const fs::path& dir) {
  const fs::path rel = fs::weakly_canonical(path).lexically_relative(fs::weakly_canonical(dir));
  return !rel.empty() && *rel.begin() != ".." && rel != ".";
}

// load_config follows `include:`; in a model folder every included file must be in the folder too. Only the
// include entries are looked at here: syntax errors, missing files and cycles are load_config's to report.
void check_includes_inside(const fs::path& file, const fs::path& dir, std::set<std::string>& seen) {
  if (!seen.insert(fs::weakly_canonical(file).string()).second) return;
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::Exception&) {
    return;
  }
  if (!root.IsMap() || !root["include"].IsDefined()) return;
  const YAML::Node inc = root["include"];
  std::vector<YAML::Node> entries;
  if (inc.IsScalar()) entries.push_back(inc);
  if (inc.IsSequence()) {
    for (const auto& e : inc) entries.push_back(e);
  }
  for (const auto& e : entries) {
    if (!e.IsScalar()) continue;
    const fs::path child = (file.parent_path() / e.Scalar()).lexically_normal();
    if (!inside(child, dir)) {
      throw std::invalid_argument(fmt::format(
          "{}:{}: include '{}' is outside the model folder {} (a model folder reads only its own files); write "
          "the resolved config in its place: owl2 config show {} > resolved.yaml, then move resolved.yaml over it",
          file.string(), e.Mark().line + 1, e.Scalar(), dir.string(), file.string()));
    }
    check_includes_inside(child, dir, seen);
  }
}

}  // namespace

std::string model_dir_tokenizer(const std::string& dir, const std::string& configured, bool allow_external) {
  const fs::path folder(dir);
  const std::string config = (folder / "config.yaml").string();
  const std::string fix = fmt::format("copy the SentencePiece model into the folder (cp TOKENIZER {}) and set "
                                      "data.tokenizer: {} in {}, or pass --tokenizer FILE",
                                      (folder / kModelDirTokenizer).string(), kModelDirTokenizer, config);
  if (configured.empty()) throw std::invalid_argument(fmt::format("{}: data.tokenizer is empty; {}", config, fix));
  const fs::path named(configured);
  const fs::path path = named.is_absolute() ? named : (folder / named).lexically_normal();
  if (!allow_external && !inside(path, folder)) {
    const bool own_copy = fs::is_regular_file(folder / kModelDirTokenizer);
    throw std::invalid_argument(fmt::format(
        "{}: data.tokenizer '{}' is outside the model folder {}; a model folder reads only its own files, so "
        "that it can be moved or shared (folders written by older owl2 versions record an absolute path). {}, "
        "or pass --allow-external-tokenizer to read it from there",
        config, configured, dir,
        own_copy ? fmt::format("The folder has its own {}: set data.tokenizer: {} in {}", kModelDirTokenizer,
                               kModelDirTokenizer, config)
                 : fmt::format("To fix the folder: cp {} {}, set data.tokenizer: {} in {}", configured,
                               (folder / kModelDirTokenizer).string(), kModelDirTokenizer, config)));
  }
  if (!fs::is_regular_file(path)) {
    throw std::invalid_argument(fmt::format(
        "{}: data.tokenizer '{}': no such file (looked for {}; a relative path is read from the model folder, "
        "older owl2 versions read it from the working directory); {}",
        config, configured, path.string(), fix));
  }
  return path.string();
}

std::string copy_tokenizer_into(const std::string& tokenizer, const std::string& dir) {
  const fs::path to = fs::path(dir) / kModelDirTokenizer;
  if (!fs::is_regular_file(tokenizer)) {
    throw std::invalid_argument(fmt::format("{}: no such tokenizer file (to copy into {})", tokenizer, dir));
  }
  std::error_code ec;
  if (fs::exists(to) && fs::equivalent(tokenizer, to, ec)) return kModelDirTokenizer;
  write_file_atomic(to.string(), read_file_text(tokenizer));  // both throw naming the file
  return kModelDirTokenizer;
}

torch::Dtype parse_inference_dtype(const std::string& name) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "bf16") return torch::kBFloat16;
  throw std::invalid_argument("--dtype '" + name + "': expected fp32 or bf16");
}

RunConfig read_model_dir_config(const std::string& dir) {
  const auto config = (fs::path(dir) / "config.yaml").string();
  if (!fs::is_regular_file(config)) {
    if (fs::is_regular_file(fs::path(dir) / "state.json")) {
      throw std::invalid_argument(fmt::format("{}: a training checkpoint, not a model directory; make one with `owl2 "
                                              "checkpoint consolidate --from {} --to DIR`",
                                              dir, dir));
    }
    throw std::invalid_argument(dir + ": not a model directory (no config.yaml; use a run's final/ folder)");
  }
  std::set<std::string> seen;
  check_includes_inside(config, dir, seen);
  return load_config(config);
}

LoadedModel load_model_dir(const std::string& dir, const ModelDirOptions& options) {
  LoadedModel l;
  l.cfg = read_model_dir_config(dir);
  // The tokenizer first: a folder that would read outside itself fails before the weights are read.
  l.cfg.data.tokenizer = options.tokenizer.empty()
                             ? model_dir_tokenizer(dir, l.cfg.data.tokenizer, options.allow_external_tokenizer)
                             : options.tokenizer;
  l.tokenizer = std::make_unique<Tokenizer>(l.cfg.data.tokenizer);
  l.model = MPLUGOwl2ForCausalLM(l.cfg.model);
  LoadOptions load;
  load.convert_dtype = true;  // weights may be stored in bf16 / fp16 (owl2 import/export --dtype); the model is fp32
  load_model_weights(l.model, dir, load);
  if (!options.adapter.empty()) load_lora_adapter(*l.model, options.adapter);
  l.model->to(options.device);
  if (options.dtype != torch::kFloat32) {
    // Module::to(dtype) would cast integer tensors too; the model has none today, but only floats are meant.
    torch::NoGradGuard no_grad;
    for (auto& p : l.model->parameters()) {
      if (p.is_floating_point()) p.set_data(p.to(options.dtype));
    }
    for (auto& b : l.model->buffers()) {
      if (b.is_floating_point()) b.set_data(b.to(options.dtype));
    }
  }
  l.model->eval();
  return l;
}

}  // namespace owl2
