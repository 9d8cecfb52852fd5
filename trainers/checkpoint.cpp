// Training checkpoints: atomic directory-per-step saves with CRC32 manifests, pruning, and validated resume.
#include "trainers/checkpoint.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ostream>
#include <stdexcept>

#include <ATen/Context.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/cuda.h>

#include "owl2/io/fileio.h"
#include "trainers/full_parameters.h"
#include "trainers/parallel/distributed.h"
#include "trainers/parallel/zero.h"
#include "trainers/trainer.h"

namespace owl2 {
namespace {

using nlohmann::json;

std::string step_dir_name(int64_t step) { return fmt::format("step-{:09d}", step); }

// "step-000000123" -> 123; -1 for anything else.
int64_t parse_step_dir(const std::string& name) {
  if (name.size() < 6 || name.compare(0, 5, "step-") != 0) return -1;
  int64_t v = 0;
  for (size_t k = 5; k < name.size(); ++k) {
    if (name[k] < '0' || name[k] > '9' || v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (name[k] - '0');
  }
  return v;
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void create_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw std::runtime_error(fmt::format("{}: cannot create directory: {}", dir, std::strerror(errno)));
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (const auto& n : list_dir(path)) remove_tree(path + "/" + n);
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    throw std::runtime_error(fmt::format("cannot rename {} to {}: {}", from, to, std::strerror(errno)));
}

bool valid_group_name(const std::string& g) {
  if (g.empty() || g[0] == '.') return false;
  return std::all_of(g.begin(), g.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'; });
}

}  // namespace

std::string ResumeResult::summary() const {
  std::string s = checkpoint ? fmt::format("resuming from {} (step {})", dir, checkpoint->step)
                             : std::string("no valid checkpoint: starting fresh");
  for (const auto& k : skipped) s += fmt::format("\n  skipped {}: {}", k.dir, k.reason);
  return s;
}

CheckpointManager::CheckpointManager(std::string root, int keep_last) : root_(std::move(root)), keep_last_(keep_last) {
  if (keep_last_ < 1) throw std::invalid_argument(fmt::format("checkpoint keep_last must be >= 1, got {}", keep_last_));
}

std::vector<std::string> CheckpointManager::complete_checkpoints() const {
  std::vector<std::pair<int64_t, std::string>> found;
  for (const auto& n : list_dir(root_))
    if (parse_step_dir(n) >= 0) found.emplace_back(parse_step_dir(n), n);
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

std::string CheckpointManager::latest() const {
  if (!exists(root_ + "/latest")) return "";
  std::string s = read_file_text(root_ + "/latest");
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void CheckpointManager::clean_leftovers() const {
  create_dir(root_);
  for (const auto& n : list_dir(root_))  // leftovers of a save or prune that was killed
    if (n.rfind(".tmp-", 0) == 0 || n.rfind(".trash-", 0) == 0) remove_tree(root_ + "/" + n);
}

namespace {
// Writes each group as <group>.safetensors into `dir` and records bytes and CRC32 in `files`.
void write_groups(const std::string& dir, const std::map<std::string, NamedTensors>& groups, json& files,
                  const std::function<void(const std::string&)>& after) {
  for (const auto& [group, tensors] : groups) {
    if (!valid_group_name(group)) throw std::invalid_argument(fmt::format("bad checkpoint tensor group name '{}'", group));
    const std::string file = group + ".safetensors";
    if (files.contains(file)) throw std::invalid_argument(fmt::format("checkpoint tensor group '{}' is written twice", group));
    const uint32_t crc = save_safetensors(dir + "/" + file, tensors);
    struct stat st {};
    ::stat((dir + "/" + file).c_str(), &st);
    files[file] = {{"bytes", static_cast<uint64_t>(st.st_size)}, {"crc32", crc}};
    after("file:" + group);
  }
}
}  // namespace

std::string CheckpointManager::save(const TrainingCheckpoint& ckpt) {
  if (ckpt.step < 0) throw std::invalid_argument(fmt::format("checkpoint step must be >= 0, got {}", ckpt.step));
  clean_leftovers();
  stage("begin");
  const std::string tmp = fmt::format("{}/.tmp-{}-{}", root_, step_dir_name(ckpt.step), ::getpid());
  create_dir(tmp);
  json files = json::object();
  const auto after = [this](const std::string& s) { stage(s); };
  write_groups(tmp, ckpt.tensors, files, after);
  write_groups(tmp, ckpt.rank_tensors, files, after);
  return commit(tmp, ckpt, files);
}

std::string CheckpointManager::save(const TrainingCheckpoint& ckpt, const SaveGroup& group) {
  if (group.world_size == 1) return save(ckpt);
  if (ckpt.step < 0) throw std::invalid_argument(fmt::format("checkpoint step must be >= 0, got {}", ckpt.step));
  const bool lead = group.rank == 0;
  // One name for all ranks (no pid): rank 0 removes any leftover of it before anyone writes.
  const std::string tmp = fmt::format("{}/.tmp-{}-w{}", root_, step_dir_name(ckpt.step), group.world_size);
  if (lead) {
    clean_leftovers();
    create_dir(tmp);
  }
  stage("begin");
  group.barrier(fmt::format("barrier before writing checkpoint step {}", ckpt.step));
  json files = json::object();
  const auto after = [this](const std::string& s) { stage(s); };
  if (lead) write_groups(tmp, ckpt.tensors, files, after);
  write_groups(tmp, ckpt.rank_tensors, files, after);
  write_file_atomic(fmt::format("{}/rank-{}.json", tmp, group.rank), files.dump(1) + "\n");
  stage("rank-files");
  group.barrier(fmt::format("barrier after writing checkpoint step {}", ckpt.step));
  std::string final_dir = root_ + "/" + step_dir_name(ckpt.step);
  if (lead) {
    for (int64_t r = 1; r < group.world_size; ++r) {
      const std::string path = fmt::format("{}/rank-{}.json", tmp, r);
      if (!exists(path)) throw std::runtime_error(fmt::format("{}: rank {} did not list its checkpoint files", path, r));
      const json theirs = json::parse(read_file_text(path));
      for (auto it = theirs.begin(); it != theirs.end(); ++it) {
        if (files.contains(it.key()))
          throw std::runtime_error(fmt::format("checkpoint file {} is written by two ranks", it.key()));
        files[it.key()] = *it;
      }
    }
    final_dir = commit(tmp, ckpt, files);
  }
  group.barrier(fmt::format("barrier after committing checkpoint step {}", ckpt.step));
  return final_dir;
}

std::string CheckpointManager::commit(const std::string& tmp, const TrainingCheckpoint& ckpt, const json& files) {
  const std::string name = step_dir_name(ckpt.step);
  const json state = {{"format_version", kCheckpointFormatVersion},
                      {"step", ckpt.step},
                      {"scheduler", ckpt.scheduler},
                      {"data_position", ckpt.data_position},
                      {"extra", ckpt.extra},
                      {"config", ckpt.config_text},
                      {"files", files}};
  write_file_atomic(tmp + "/state.json", state.dump(2) + "\n");  // last file: its presence means "complete"
  stage("state.json");
  fsync_path(tmp);
  stage("synced");

  const std::string final_dir = root_ + "/" + name;
  if (exists(final_dir)) {  // re-saving a step (after a resume): move the old one out of the way first
    const std::string trash = fmt::format("{}/.trash-{}-{}", root_, name, ::getpid());
    rename_or_throw(final_dir, trash);
    rename_or_throw(tmp, final_dir);
    remove_tree(trash);
  } else {
    rename_or_throw(tmp, final_dir);
  }
  fsync_path(root_);
  stage("renamed");

  write_file_atomic(root_ + "/latest", name + "\n");
  stage("latest");

  const auto all = complete_checkpoints();
  const std::string keep = latest();
  for (size_t k = 0; k + static_cast<size_t>(keep_last_) < all.size(); ++k) {
    if (all[k] == keep) continue;
    // Rename first so that a half-deleted directory never looks like a checkpoint.
    const std::string trash = fmt::format("{}/.trash-{}-{}", root_, all[k], ::getpid());
    rename_or_throw(root_ + "/" + all[k], trash);
    remove_tree(trash);
  }
  fsync_path(root_);
  stage("pruned");
  return final_dir;
}

std::string CheckpointManager::validate(const std::string& dir, bool verify_checksums) {
  const std::string state_path = dir + "/state.json";
  if (!exists(state_path)) return "missing state.json (the save did not finish)";
  json state;
  try {
    state = json::parse(read_file_text(state_path));
  } catch (const std::exception& e) {
    return fmt::format("state.json is unreadable: {}", e.what());
  }
  if (!state.is_object() || !state.contains("format_version") || !state["format_version"].is_number_integer())
    return "state.json has no format_version";
  if (state["format_version"].get<int>() != kCheckpointFormatVersion)
    return fmt::format("format_version {} is not the supported {}", state["format_version"].dump(), kCheckpointFormatVersion);
  if (!state.contains("step") || !state["step"].is_number_integer()) return "state.json has no step";
  const std::string base = dir.substr(dir.find_last_of('/') + 1);
  if (parse_step_dir(base) >= 0 && parse_step_dir(base) != state["step"].get<int64_t>())
    return fmt::format("state.json says step {} but the directory is {}", state["step"].get<int64_t>(), base);
  if (!state.contains("files") || !state["files"].is_object()) return "state.json has no files table";
  for (auto it = state["files"].begin(); it != state["files"].end(); ++it) {
    const std::string path = dir + "/" + it.key();
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return fmt::format("{} is missing", it.key());
    const uint64_t bytes = (*it).value("bytes", uint64_t{0});
    if (static_cast<uint64_t>(st.st_size) != bytes)
      return fmt::format("{} has {} bytes, the manifest says {}", it.key(), st.st_size, bytes);
    if (verify_checksums) {
      const uint32_t crc = crc32_file(path);
      const uint32_t want = (*it).value("crc32", uint32_t{0});
      if (crc != want) return fmt::format("{} checksum mismatch: crc32 {:08x}, the manifest says {:08x}", it.key(), crc, want);
    }
  }
  return "";
}

ResumeResult CheckpointManager::resume(bool verify_checksums) const {
  ResumeResult out;
  for (const auto& n : list_dir(root_))
    if (n.rfind(".tmp-", 0) == 0) out.skipped.push_back({root_ + "/" + n, "incomplete save (temporary directory)"});
  auto all = complete_checkpoints();
  std::reverse(all.begin(), all.end());
  for (const auto& name : all) {
    const std::string dir = root_ + "/" + name;
    std::string reason = validate(dir, verify_checksums);
    if (reason.empty()) {
      try {
        const json state = json::parse(read_file_text(dir + "/state.json"));
        TrainingCheckpoint ck;
        ck.step = state["step"].get<int64_t>();
        ck.scheduler = state.value("scheduler", json::object());
        ck.data_position = state.value("data_position", json::object());
        ck.extra = state.value("extra", json::object());
        ck.config_text = state.value("config", std::string());
        for (auto it = state["files"].begin(); it != state["files"].end(); ++it) {
          const std::string file = it.key();
          const std::string suffix = ".safetensors";
          if (file.size() <= suffix.size() || file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
          SafetensorsFile f(dir + "/" + file);
          auto& group = ck.tensors[file.substr(0, file.size() - suffix.size())];
          for (const auto& t : f.names()) group.emplace_back(t, f.get(t));
        }
        out.checkpoint = std::move(ck);
        out.dir = dir;
        return out;
      } catch (const std::exception& e) {
        reason = e.what();
      }
    }
    out.skipped.push_back({dir, reason});
  }
  return out;
}

NamedTensors capture_rng_states() {
  NamedTensors out;
  {
    auto gen = at::globalContext().defaultGenerator(at::kCPU);
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.emplace_back("cpu", gen.get_state());
  }
  if (torch::cuda::is_available()) {  // the current device: the rank's own (use_device), whatever its index
    auto gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA));
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.emplace_back("cuda", gen.get_state());
  }
  return out;
}

void restore_rng_states(const NamedTensors& states) {
  for (const auto& [name, state] : states) {
    at::Device device(at::kCPU);
    // "cuda" (and "cuda.N" of older checkpoints): the generator of the device that saved it goes to this
    // process's current device, so a checkpoint resumes on another GPU index; without CUDA it is not needed.
    if (name == "cuda" || name.rfind("cuda.", 0) == 0) {
      if (!torch::cuda::is_available()) continue;
      device = at::Device(at::kCUDA);
    } else if (name != "cpu") {
      throw std::runtime_error(fmt::format("unknown RNG state '{}'", name));
    }
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state.contiguous());
  }
}

NamedTensors adamw_state_tensors(torch::optim::AdamW& optimizer, const NamedTensors& params) {
  NamedTensors out;
  auto& state = optimizer.state();
  for (const auto& [name, p] : params) {
    auto it = state.find(p.unsafeGetTensorImpl());
    if (it == state.end()) continue;
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    out.emplace_back(name + ".step", torch::tensor(s.step(), torch::kInt64));
    out.emplace_back(name + ".exp_avg", s.exp_avg());
    out.emplace_back(name + ".exp_avg_sq", s.exp_avg_sq());
    if (s.max_exp_avg_sq().defined()) out.emplace_back(name + ".max_exp_avg_sq", s.max_exp_avg_sq());
  }
  return out;
}

void load_adamw_state(torch::optim::AdamW& optimizer, const NamedTensors& params, const NamedTensors& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  std::map<std::string, torch::Tensor> param_by_name(params.begin(), params.end());
  for (const auto& [key, t] : by_name) {
    const auto dot = key.find_last_of('.');
    if (dot == std::string::npos || !param_by_name.count(key.substr(0, dot)))
      throw std::runtime_error(fmt::format("optimizer state '{}' names no parameter", key));
  }
  auto& opt_state = optimizer.state();
  for (const auto& [name, p] : params) {
    if (!by_name.count(name + ".step")) continue;
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(by_name.at(name + ".step").item<int64_t>());
    for (const char* field : {".exp_avg", ".exp_avg_sq"}) {
      const auto it = by_name.find(name + field);
      if (it == by_name.end()) throw std::runtime_error(fmt::format("optimizer state '{}{}' is missing", name, field));
      if (it->second.sizes() != p.sizes())
        throw std::runtime_error(fmt::format("optimizer state '{}{}' has shape [{}] but the parameter has [{}]", name, field,
                                             fmt::join(it->second.sizes(), ", "), fmt::join(p.sizes(), ", ")));
    }
    s->exp_avg(by_name.at(name + ".exp_avg").to(p.options()).clone());
    s->exp_avg_sq(by_name.at(name + ".exp_avg_sq").to(p.options()).clone());
    if (by_name.count(name + ".max_exp_avg_sq")) s->max_exp_avg_sq(by_name.at(name + ".max_exp_avg_sq").to(p.options()).clone());
    opt_state[p.unsafeGetTensorImpl()] = std::move(s);
  }
}

std::string save_training_checkpoint(CheckpointManager& ckpts, Trainer& trainer, const data::LoaderState& data_position,
                                     const std::string& config_text, const SaveGroup& group,
                                     const std::vector<data::LoaderState>& every_rank) {
  const bool lead = group.rank == 0;
  TrainingCheckpoint c;
  c.step = trainer.step_count();
  if (trainer.zero()) {
    // Every rank writes its shard: the AdamW state and the values (float32 masters in bf16) of the trainable
    // parameters it owns, and at ZeRO 3 its slices of the frozen parameters; rank 0 adds what is not sharded
    // (other frozen weights, buffers). Nothing is gathered.
    if (lead) {
      c.tensors["model"] = trainer.untrained_state();
      c.tensors["rng"] = capture_rng_states();
    }
    c.rank_tensors[zero_shard_group(group.rank)] = trainer.optimizer_state();
    c.extra["zero"] = trainer.optimizer_manifest();
  } else {
    FullParameters full(trainer);  // no-op without ZeRO 3; kept for the replicated bf16 masters
    if (lead) {
      c.tensors["model"] = trainer.precision().model_state();  // bf16: fp32 masters, for an exact resume
      c.tensors["rng"] = capture_rng_states();
      c.tensors["optimizer"] = trainer.optimizer_state();
    }
  }
  c.scheduler = {{"step", trainer.step_count()},
                 {"nonfinite_in_a_row", trainer.nonfinite_in_a_row()},
                 {"world_size", group.world_size}};
  c.data_position = json::parse(data::state_to_json(data_position));
  if (!every_rank.empty()) {
    c.data_position["ranks"] = json::array();
    for (const auto& p : every_rank) c.data_position["ranks"].push_back(json::parse(data::state_to_json(p)));
  }
  c.config_text = config_text;
  return ckpts.save(c, group);
}

std::optional<data::LoaderState> resume_training(const CheckpointManager& ckpts, Trainer& trainer, int64_t world_size,
                                                 std::ostream* log, int64_t rank) {
  auto res = ckpts.resume();
  if (log && !res.skipped.empty()) *log << res.summary() << "\n";
  if (!res.checkpoint) return std::nullopt;
  const auto& c = *res.checkpoint;
  const auto model_it = c.tensors.find("model");
  if (model_it == c.tensors.end()) throw std::runtime_error(res.dir + ": checkpoint has no model tensors");
  std::map<std::string, torch::Tensor> m(model_it->second.begin(), model_it->second.end());
  std::vector<ZeroShardValues> parts;  // the trainable (and ZeRO 3's frozen) weights, in the shards
  for (const auto part : {ZeroShardValues::Part::kTrainable, ZeroShardValues::Part::kFrozen}) {
    if (ZeroShardValues::present(c, part)) parts.push_back(ZeroShardValues::of(c, res.dir, part));
  }
  std::vector<const ZeroShardValues*> part_ptrs;
  for (const auto& p : parts) part_ptrs.push_back(&p);
  try {
    // Under ZeRO each rank reads its own slices of the sharded weights; bf16: the fp32 masters exactly.
    trainer.load_checkpoint_weights(m, part_ptrs, res.dir);
  } catch (const std::exception& e) {
    throw std::runtime_error(
        fmt::format("cannot resume from {}: its model does not match this config: {}", res.dir, e.what()));
  }
  trainer.load_optimizer_from(c);  // any world size and ZeRO stage: the state reshards
  restore_rng_states(c.tensors.at("rng"));
  trainer.set_counters(c.scheduler.at("step").get<int64_t>(), c.scheduler.value("nonfinite_in_a_row", 0));
  const int64_t saved_world = c.scheduler.value("world_size", int64_t{1});
  const json& saved_position = c.data_position;
  data::LoaderState position;
  if (saved_position.contains("ranks")) {  // streaming: one position per rank, dealt out anew at another world size
    const json& ranks = saved_position["ranks"];
    if (!ranks.is_array() || static_cast<int64_t>(ranks.size()) != saved_world)
      throw std::runtime_error(fmt::format("{}: data_position.ranks must list {} positions, one per rank", res.dir, saved_world));
    std::vector<data::LoaderState> saved;
    for (const auto& r : ranks) saved.push_back(data::state_from_json(r.dump()));
    try {
      position = reshard_stream_states(saved, rank, world_size);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(fmt::format("cannot resume from {} at {} ranks: {}", res.dir, world_size, e.what()));
    }
  } else {
    position = reshard_loader_state(data::state_from_json(saved_position.dump()), saved_world, world_size);
  }
  if (log) *log << "resumed from " << res.dir << " at step " << trainer.step_count() << "\n";
  return position;
}

}  // namespace owl2
