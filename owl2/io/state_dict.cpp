// The single checkpoint code path: format detection, index resolution, name-for-name load and save.
#include "owl2/io/state_dict.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <regex>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "owl2/io/fileio.h"
#include "owl2/io/torch_bin.h"

namespace owl2 {
namespace {

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::unique_ptr<TensorSource> open_file(const std::string& path) {
  if (ends_with(path, ".safetensors")) return std::make_unique<SafetensorsFile>(path);
  if (ends_with(path, ".index.json")) return std::make_unique<ShardedSource>(path);
  return std::make_unique<TorchBinFile>(path);  // checks the zip magic itself
}

std::string shape_text(c10::IntArrayRef s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

struct Matcher {
  std::vector<std::regex> res;
  explicit Matcher(const std::vector<std::string>& patterns) {
    for (const auto& p : patterns) {
      try {
        res.emplace_back(p);
      } catch (const std::regex_error& e) {
        throw std::invalid_argument(fmt::format("bad key pattern '{}': {}", p, e.what()));
      }
    }
  }
  bool operator()(const std::string& name) const {
    for (const auto& r : res)
      if (std::regex_search(name, r)) return true;
    return false;
  }
};

std::string list_text(const std::vector<std::string>& names, size_t max = 20) {
  std::string out;
  for (size_t k = 0; k < names.size() && k < max; ++k) out += "\n  " + names[k];
  if (names.size() > max) out += fmt::format("\n  ... and {} more", names.size() - max);
  return out;
}

}  // namespace

std::unique_ptr<TensorSource> open_tensor_source(const std::string& path) {
  if (is_file(path)) return open_file(path);
  if (!is_dir(path)) throw std::runtime_error(fmt::format("{}: no such file or directory", path));
  for (const char* name : {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                           "pytorch_model.bin"}) {
    const std::string p = path + "/" + name;
    if (is_file(p)) return open_file(p);
  }
  throw std::runtime_error(fmt::format("{}: holds none of model.safetensors.index.json, model.safetensors, "
                                       "pytorch_model.bin.index.json, pytorch_model.bin",
                                       path));
}

ShardedSource::ShardedSource(const std::string& index_path) : index_path_(index_path), dir_(parent_dir(index_path)) {
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(read_file_text(index_path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON: {}", index_path, e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw std::runtime_error(fmt::format("{}: expected an object with a 'weight_map' object", index_path));
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it->is_string())
      throw std::runtime_error(fmt::format("{}: weight_map['{}'] is not a file name", index_path, it.key()));
    const std::string file = it->get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      throw std::runtime_error(fmt::format("{}: weight_map['{}'] = '{}' is not a file in the index's directory",
                                           index_path, it.key(), file));
    weight_map_[it.key()] = file;
  }
  std::set<std::string> files;
  for (const auto& kv : weight_map_) files.insert(kv.second);
  for (const auto& f : files)
    if (!is_file(dir_ + "/" + f))
      throw std::runtime_error(fmt::format("{}: shard '{}' named in weight_map does not exist", index_path, f));
}

ShardedSource::~ShardedSource() = default;

std::vector<std::string> ShardedSource::names() const {
  std::vector<std::string> out;
  for (const auto& kv : weight_map_) out.push_back(kv.first);
  return out;
}

const TensorSource& ShardedSource::shard_of(const std::string& name) const {
  auto it = weight_map_.find(name);
  if (it == weight_map_.end()) throw std::runtime_error(fmt::format("{}: no tensor named '{}'", index_path_, name));
  auto& shard = shards_[it->second];
  if (!shard) {
    auto opened = open_file(dir_ + "/" + it->second);
    for (const auto& kv : weight_map_)
      if (kv.second == it->second && !opened->contains(kv.first))
        throw std::runtime_error(fmt::format("{}: weight_map puts '{}' in {}, which does not hold it", index_path_,
                                             kv.first, it->second));
    shard = std::move(opened);
  }
  return *shard;
}

TensorMeta ShardedSource::meta(const std::string& name) const { return shard_of(name).meta(name); }
torch::Tensor ShardedSource::get(const std::string& name) const { return shard_of(name).get(name); }
std::string ShardedSource::where(const std::string& name) const {
  auto it = weight_map_.find(name);
  return it == weight_map_.end() ? index_path_ : dir_ + "/" + it->second;
}

std::vector<std::string> default_ignorable_keys() {
  return {R"(rotary_emb\.inv_freq$)", R"(\.q_pos_embed$)", R"(\.k_pos_embed$)"};
}

std::string LoadReport::summary() const {
  std::string s = fmt::format("loaded {} tensors", loaded.size());
  if (!ignored.empty()) s += fmt::format("; ignored {}: {}", ignored.size(), fmt::join(ignored, ", "));
  if (!missing.empty()) s += fmt::format("; {} missing: {}", missing.size(), fmt::join(missing, ", "));
  if (!unexpected.empty()) s += fmt::format("; {} unexpected: {}", unexpected.size(), fmt::join(unexpected, ", "));
  return s;
}

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters(true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) out.emplace_back(b.key(), b.value());
  return out;
}

LoadReport load_state_dict(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options) {
  const Matcher ignorable(options.ignore);
  LoadReport report;
  std::vector<std::string> shape_errors, dtype_errors;
  std::set<std::string> expected;
  NamedTensors targets;
  for (auto& [name, t] : module_state(module)) {
    if (options.skip && options.skip(name)) continue;
    expected.insert(name);
    if (ignorable(name)) {
      report.ignored.push_back(name);
      continue;
    }
    if (!source.contains(name)) {
      report.missing.push_back(name);
      continue;
    }
    const TensorMeta m = source.meta(name);
    if (c10::IntArrayRef(m.shape) != t.sizes()) {
      shape_errors.push_back(fmt::format("{}: checkpoint {} in {} vs module {}", name, shape_text(m.shape),
                                         source.where(name), shape_text(t.sizes())));
      continue;
    }
    if (m.dtype != t.scalar_type() && !options.convert_dtype) {
      dtype_errors.push_back(fmt::format("{}: checkpoint {} vs module {}", name, c10::toString(m.dtype),
                                         c10::toString(t.scalar_type())));
      continue;
    }
    targets.emplace_back(name, t);
  }
  for (const auto& name : source.names()) {
    if (expected.count(name)) continue;
    if (ignorable(name))
      report.ignored.push_back(name);
    else
      report.unexpected.push_back(name);
  }

  std::string problems;
  if (!shape_errors.empty())
    problems += fmt::format("\n{} shape mismatch(es):{}", shape_errors.size(), list_text(shape_errors));
  if (!dtype_errors.empty())
    problems += fmt::format("\n{} dtype mismatch(es) (convert_dtype is off):{}", dtype_errors.size(), list_text(dtype_errors));
  if (!report.missing.empty() && !options.allow_missing)
    problems += fmt::format("\n{} missing from the checkpoint:{}", report.missing.size(), list_text(report.missing));
  if (!report.unexpected.empty() && !options.allow_unexpected)
    problems += fmt::format("\n{} unexpected in the checkpoint (no such module entry):{}", report.unexpected.size(),
                            list_text(report.unexpected));
  if (!problems.empty()) {
    const auto names = source.names();
    throw std::runtime_error(fmt::format("cannot load {} into the module:{}",
                                         names.empty() ? std::string("an empty checkpoint") : source.where(names.front()),
                                         problems));
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, t] : targets) {
    t.copy_(options.unmapped ? source.get_unmapped(name) : source.get(name));  // converts dtype and device
    report.loaded.push_back(name);
    if (options.loaded) options.loaded(name, t);
  }
  return report;
}

ShardedWriteResult convert_to_safetensors(const TensorSource& source, const std::string& dir, uint64_t max_shard_bytes,
                                          std::optional<torch::Dtype> cast,
                                          const std::map<std::string, std::string>& metadata) {
  if (!is_dir(dir) && ::mkdir(dir.c_str(), 0755) != 0 && !is_dir(dir))
    throw std::runtime_error(fmt::format("{}: cannot create directory: {}", dir, std::strerror(errno)));
  const auto names = source.names();
  std::vector<uint64_t> bytes;
  ShardedWriteResult result;
  for (const auto& n : names) {
    const TensorMeta m = source.meta(n);
    const torch::Dtype dt = cast && c10::isFloatingType(m.dtype) ? *cast : m.dtype;
    uint64_t numel = 1;
    for (int64_t d : m.shape) numel *= static_cast<uint64_t>(d);
    bytes.push_back(numel * c10::elementSize(dt));
    result.total_bytes += bytes.back();
  }
  const auto plan = plan_shards(bytes, max_shard_bytes);
  std::map<std::string, std::string> weight_map;
  for (size_t s = 0; s < plan.size(); ++s) {
    const std::string file = plan.size() == 1 ? std::string("model.safetensors") : shard_file_name("model", s, plan.size());
    NamedTensors shard;  // this shard's tensors only: views of a mapping, or read from a .bin
    for (size_t k : plan[s]) {
      shard.emplace_back(names[k], source.get(names[k]));
      weight_map[names[k]] = file;
    }
    save_safetensors(dir + "/" + file, shard, metadata, cast, /*checksum=*/false);
    result.files.push_back(file);
  }
  if (plan.size() > 1) write_safetensors_index(dir, "model", weight_map, result.total_bytes);
  else std::remove((dir + "/model.safetensors.index.json").c_str());
  return result;
}

ShardedWriteResult save_state_dict(const torch::nn::Module& module, const std::string& dir, const SaveOptions& options) {
  const Matcher excluded(options.exclude);
  NamedTensors tensors;
  for (auto& [name, t] : module_state(module))
    if (!excluded(name)) tensors.emplace_back(name, t);
  if (!is_dir(dir) && ::mkdir(dir.c_str(), 0755) != 0 && !is_dir(dir))
    throw std::runtime_error(fmt::format("{}: cannot create directory: {}", dir, std::strerror(errno)));
  return save_safetensors_sharded(dir, tensors, options.max_shard_bytes, options.metadata, "model", options.dtype);
}

}  // namespace owl2
