// YAML -> RunConfig: include resolution, --set overrides, typed parsing with full-path errors, validation.
#include "trainers/config.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace owl2 {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// The schema: one field list per struct, shared by the reader and the writer.

template <class V> void fields(V& v, VisionConfig& c) {
  v("hidden_size", c.hidden_size);
  v("intermediate_size", c.intermediate_size);
  v("num_hidden_layers", c.num_hidden_layers);
  v("num_attention_heads", c.num_attention_heads);
  v("num_channels", c.num_channels);
  v("image_size", c.image_size);
  v("patch_size", c.patch_size);
  v("layer_norm_eps", c.layer_norm_eps);
}

template <class V> void fields(V& v, AbstractorConfig& c) {
  v("num_learnable_queries", c.num_learnable_queries);
  v("hidden_size", c.hidden_size);
  v("num_hidden_layers", c.num_hidden_layers);
  v("num_attention_heads", c.num_attention_heads);
  v("intermediate_size", c.intermediate_size);
  v("encoder_hidden_size", c.encoder_hidden_size);
  v("grid_size", c.grid_size);
  v("layer_norm_eps", c.layer_norm_eps);
  v("attn_norm_eps", c.attn_norm_eps);
}

template <class V> void fields(V& v, DecoderConfig& c) {
  v("vocab_size", c.vocab_size);
  v("hidden_size", c.hidden_size);
  v("intermediate_size", c.intermediate_size);
  v("num_hidden_layers", c.num_hidden_layers);
  v("num_attention_heads", c.num_attention_heads);
  v("num_key_value_heads", c.num_key_value_heads);
  v("max_position_embeddings", c.max_position_embeddings);
  v("rms_norm_eps", c.rms_norm_eps);
  v("rope_theta", c.rope_theta);
}

template <class V> void fields(V& v, ModelConfig& c) {
  v("vision", c.vision);
  v("abstractor", c.abstractor);
  v("decoder", c.decoder);
  v("initializer_range", c.initializer_range);
}

template <class V> void fields(V& v, OptimConfig& c) {
  v("lr", c.lr);
  v("min_lr", c.min_lr);
  v("betas", c.betas);
  v("eps", c.eps);
  v("weight_decay", c.weight_decay);
  v("grad_clip", c.grad_clip);
  v("warmup_steps", c.warmup_steps);
  v("vision_layer_decay", c.vision_layer_decay);
}

template <class V> void fields(V& v, ActivationCheckpointing& c) {
  v("vision", c.vision);
  v("abstractor", c.abstractor);
  v("decoder", c.decoder);
}

template <class V> void fields(V& v, TrainConfig& c) {
  v("steps", c.steps);
  v("global_batch_size", c.global_batch_size);
  v("micro_batch_size", c.micro_batch_size);
  v("seed", c.seed);
  v.choice("precision", c.precision, kPrecisionNames);
  v.choice("device", c.device, kDeviceKindNames);
  v("out_dir", c.out_dir);
  v("max_nonfinite_steps", c.max_nonfinite_steps);
  v("max_length", c.max_length);
  v("activation_checkpointing", c.activation_checkpointing);
  v("log_every", c.log_every);
  v("save_every", c.save_every);
  v("keep_last", c.keep_last);
  v("tensorboard", c.tensorboard);
}

template <class V> void fields(V& v, DataSource& c) {
  v("path", c.path);
  v("weight", c.weight);
}

template <class V> void fields(V& v, DataConfig& c) {
  v("tokenizer", c.tokenizer);
  v.choice("chat_template", c.chat_template, kTemplateKindNames);
  v("sources", c.sources);
  v.choice("image_mode", c.image_mode, kImageModeNames);
  v("augment", c.augment);
  v("num_workers", c.num_workers);
  v("group_by_modality", c.group_by_modality);
  v.choice("length_policy", c.length_policy, data::kLengthPolicyNames);
  v("max_bad_fraction", c.max_bad_fraction);
  v("pack_tokens", c.pack_tokens);
  v("pack_buffer", c.pack_buffer);
  v("video_frames", c.video_frames);
  v.choice("video_layout", c.video_layout, kVideoLayoutNames);
  v("streaming", c.streaming);
}

template <class V> void fields(V& v, InitConfig& c) {
  v("from", c.from);
  v("allow_missing", c.allow_missing);
}

template <class V> void fields(V& v, EvalConfig& c) {
  v("heldout", c.heldout);
  v("every", c.every);
  v("limit", c.limit);
  v("batch_size", c.batch_size);
  v("max_new_tokens", c.max_new_tokens);
}

template <class V> void fields(V& v, DistributedConfig& c) {
  v("zero_stage", c.zero_stage);
  v("bucket_mb", c.bucket_mb);
  v("timeout_s", c.timeout_s);
  v.choice("reduce_dtype", c.reduce_dtype, kReduceDtypeNames);
  v("prefetch", c.prefetch);
}

template <class V> void fields(V& v, LoraSpec& c) {
  v("rank", c.rank);
  v("alpha", c.alpha);
  v("dropout", c.dropout);
  v("rslora", c.rslora);
  v("targets", c.targets);
  v("modules_to_save", c.modules_to_save);
}

template <class V> void fields(V& v, FreezeRule& c) {
  v("pattern", c.pattern);
  v("trainable", c.trainable);
}

template <class V> void fields(V& v, ParamGroupRule& c) {
  v("name", c.name);
  v("pattern", c.pattern);
  v("lr_scale", c.lr_scale);
  v("weight_decay", c.weight_decay);
}

template <class V> void fields(V& v, RunConfig& c) {
  v("model", c.model);
  v("optim", c.optim);
  v("train", c.train);
  v("data", c.data);
  v("init", c.init);
  v("eval", c.eval);
  v("distributed", c.distributed);
  v("freeze", c.freeze);
  v("param_groups", c.param_groups);
  v("lora", c.lora);
}

template <class T> struct is_vector : std::false_type {};
template <class T> struct is_vector<std::vector<T>> : std::true_type {};
template <class T> struct is_optional : std::false_type {};
template <class T> struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
struct is_struct : std::bool_constant<std::is_class_v<T> && !std::is_same_v<T, std::string> &&
                                      !is_vector<T>::value && !is_optional<T>::value> {};

// ---------------------------------------------------------------------------------------------

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {

// Where each key path was last set ("configs/a.yaml:12" or "--set"), for messages.
using Origins = std::map<std::string, std::string>;

std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

void record_origins(const YAML::Node& node, const std::string& prefix, const std::string& file, Origins& out) {
  if (!node.IsMap()) return;
  for (const auto& it : node) {
    const std::string key = it.first.Scalar();
    if (prefix.empty() && key == "include") continue;
    const std::string path = join(prefix, key);
    out[path] = file + ":" + std::to_string(it.first.Mark().line + 1);
    record_origins(it.second, path, file, out);
  }
}

// Maps merge key by key; anything else is replaced by `over`.
YAML::Node merge(const YAML::Node& base, const YAML::Node& over) {
  if (!base.IsDefined() || !base.IsMap() || !over.IsMap()) return YAML::Clone(over);
  YAML::Node out = YAML::Clone(base);
  for (const auto& it : over) {
    const std::string key = it.first.Scalar();
    const YAML::Node old = YAML::Node(out)[key];
    out[key] = merge(old, it.second);
  }
  return out;
}

YAML::Node load_file(const fs::path& path, std::vector<std::string>& stack, Origins& origins) {
  std::error_code ec;
  const std::string canon = fs::weakly_canonical(path, ec).string();
  if (std::find(stack.begin(), stack.end(), canon) != stack.end()) {
    std::string chain;
    for (const auto& s : stack) chain += fs::path(s).filename().string() + " -> ";
    throw ConfigError(fmt::format("{}: include cycle: {}{}", path.string(), chain, path.filename().string()));
  }
  if (!fs::is_regular_file(path)) throw ConfigError(fmt::format("{}: config file not found", path.string()));
  YAML::Node root;
  try {
    root = YAML::LoadFile(path.string());
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}:{}:{}: YAML syntax error: {}", path.string(), e.mark.line + 1,
                                  e.mark.column + 1, e.msg));
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(fmt::format("{}: the top level must be a mapping of sections", path.string()));

  stack.push_back(canon);
  YAML::Node merged(YAML::NodeType::Map);
  if (const YAML::Node inc = root["include"]; inc.IsDefined()) {
    std::vector<std::pair<std::string, int>> names;
    if (inc.IsScalar()) {
      names.emplace_back(inc.Scalar(), inc.Mark().line + 1);
    } else if (inc.IsSequence()) {
      for (const auto& n : inc) {
        if (!n.IsScalar()) {
          throw ConfigError(fmt::format("{}:{}: include: expected a file name", path.string(), n.Mark().line + 1));
        }
        names.emplace_back(n.Scalar(), n.Mark().line + 1);
      }
    } else {
      throw ConfigError(fmt::format("{}:{}: include: expected a file name or a list of file names", path.string(),
                                    inc.Mark().line + 1));
    }
    for (const auto& [name, line] : names) {
      const fs::path child = (path.parent_path() / name).lexically_normal();
      if (!fs::is_regular_file(child)) {
        throw ConfigError(fmt::format("{}:{}: include '{}' not found (looked for {})", path.string(), line, name,
                                      child.string()));
      }
      merged = merge(merged, load_file(child, stack, origins));
    }
  }
  stack.pop_back();
  record_origins(root, "", path.string(), origins);
  YAML::Node self = YAML::Clone(root);
  self.remove("include");
  return merge(merged, self);
}

void apply_override(YAML::Node& root, const std::string& spec, Origins& origins) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError(fmt::format("--set '{}': expected key.path=value, e.g. optim.lr=2e-5", spec));
  }
  const std::string key = spec.substr(0, eq);
  const std::string text = spec.substr(eq + 1);
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const auto dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (parts.back().empty()) throw ConfigError(fmt::format("--set '{}': empty segment in key '{}'", spec, key));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("--set '{}': cannot parse value '{}': {}", spec, text, e.msg));
  }
  YAML::Node cur;
  cur.reset(root);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = cur[parts[i]];
    if (!next.IsDefined() || !next.IsMap()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
    }
    cur.reset(next);
  }
  cur[parts.back()] = value;
  origins[key] = "--set " + key;
}

std::string describe(const YAML::Node& n) {
  if (n.IsMap()) return "a mapping";
  if (n.IsSequence()) return "a list";
  if (n.IsNull()) return "nothing (null)";
  return "'" + n.Scalar() + "'";
}

// Reads a YAML mapping into a struct through its field list, remembering which keys it consumed.
class Reader {
 public:
  Reader(const YAML::Node& node, std::string path, const Origins& origins, const std::string& root)
      : node_(node), path_(std::move(path)), origins_(origins), root_(root) {}

  template <class T> void operator()(const char* key, T& value) {
    keys_.emplace_back(key);
    if (!node_.IsMap()) return;
    const YAML::Node child = node_[key];
    if (child.IsDefined()) read(child, join(path_, key), value);
  }

  // A named choice: read as a string, looked up in the choice's name table.
  template <class E, size_t N> void choice(const char* key, E& value, const NameTable<E, N>& names) {
    std::string name(name_of(names, value));
    (*this)(key, name);
    const std::optional<E> found = find_by_name(names, name);
    if (!found) fail(join(path_, key), fmt::format("expected one of {}, got '{}'", joined_names(names), name));
    value = *found;
  }

  // Every key present in the mapping must be one the schema knows.
  void finish() const {
    if (!node_.IsMap()) return;
    for (const auto& it : node_) {
      const std::string key = it.first.Scalar();
      if (std::find(keys_.begin(), keys_.end(), key) != keys_.end()) continue;
      std::string best;
      size_t best_d = SIZE_MAX;
      for (const auto& k : keys_) {
        const size_t d = edit_distance(key, k);
        if (d < best_d) best_d = d, best = k;
      }
      std::string hint;
      if (!best.empty() && best_d <= std::max<size_t>(2, best.size() / 3)) {
        hint = fmt::format("; did you mean '{}'?", join(path_, best));
      } else {
        std::string list;
        for (const auto& k : keys_) list += (list.empty() ? "" : ", ") + k;
        hint = fmt::format("; valid keys under '{}': {}", path_.empty() ? "<top>" : path_, list);
      }
      fail(join(path_, key), "unknown key '" + join(path_, key) + "'" + hint, /*prefix_path=*/false);
    }
  }

  [[noreturn]] void fail(const std::string& path, const std::string& what, bool prefix_path = true) const {
    std::string where = root_;
    for (std::string p = path; !p.empty();) {
      if (auto it = origins_.find(p); it != origins_.end()) {
        where = it->second;
        break;
      }
      const auto cut = p.find_last_of(".[");
      p = cut == std::string::npos ? std::string() : p.substr(0, cut);
    }
    throw ConfigError(prefix_path ? fmt::format("{}: {}: {}", where, path, what) : fmt::format("{}: {}", where, what));
  }

 private:
  void read(const YAML::Node& n, const std::string& path, int64_t& out) const {
    if (n.IsScalar()) {
      const std::string& s = n.Scalar();
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && end == s.c_str() + s.size() && errno == 0) {
        out = v;
        return;
      }
    }
    fail(path, "expected an integer, got " + describe(n));
  }

  void read(const YAML::Node& n, const std::string& path, double& out) const {
    if (n.IsScalar()) {
      const std::string& s = n.Scalar();
      char* end = nullptr;
      errno = 0;
      const double v = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && errno == 0 && std::isfinite(v)) {
        out = v;
        return;
      }
    }
    fail(path, "expected a number, got " + describe(n));
  }

  void read(const YAML::Node& n, const std::string& path, bool& out) const {
    if (n.IsScalar()) {
      if (n.Scalar() == "true") return void(out = true);
      if (n.Scalar() == "false") return void(out = false);
    }
    fail(path, "expected true or false, got " + describe(n));
  }

  void read(const YAML::Node& n, const std::string& path, std::string& out) const {
    if (!n.IsScalar()) fail(path, "expected a string, got " + describe(n));
    out = n.Scalar();
  }

  template <class T> void read(const YAML::Node& n, const std::string& path, std::optional<T>& out) const {
    if (n.IsNull()) return void(out.reset());
    T value{};
    read(n, path, value);
    out = value;
  }

  template <class T> void read(const YAML::Node& n, const std::string& path, std::vector<T>& out) const {
    if (!n.IsSequence()) fail(path, "expected a list, got " + describe(n));
    std::vector<T> items(n.size());
    for (size_t i = 0; i < n.size(); ++i) read(n[i], fmt::format("{}[{}]", path, i), items[i]);
    out = std::move(items);
  }

  template <class T, std::enable_if_t<is_struct<T>::value, int> = 0>
  void read(const YAML::Node& n, const std::string& path, T& out) const {
    if (n.IsNull()) return;
    if (!n.IsMap()) fail(path, "expected a mapping, got " + describe(n));
    Reader sub(n, path, origins_, root_);
    fields(sub, out);
    sub.finish();
  }

  const YAML::Node node_;
  const std::string path_;
  const Origins& origins_;
  const std::string& root_;
  std::vector<std::string> keys_;
};

// Writes a struct through its field list.
class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}
  template <class T> void operator()(const char* key, T& value) {
    out_ << YAML::Key << key << YAML::Value;
    write(value);
  }
  template <class E, size_t N> void choice(const char* key, E& value, const NameTable<E, N>& names) {
    std::string name(name_of(names, value));
    (*this)(key, name);
  }

 private:
  void write(int64_t v) { out_ << v; }
  void write(double v) { out_ << fmt::format("{}", v); }
  void write(bool v) { out_ << (v ? "true" : "false"); }
  void write(const std::string& v) { out_ << v; }
  template <class T> void write(std::optional<T>& v) {
    if (v) {
      write(*v);
    } else {
      out_ << YAML::Null;
    }
  }
  template <class T> void write(std::vector<T>& v) {
    if constexpr (!is_struct<T>::value) out_ << YAML::Flow;
    out_ << YAML::BeginSeq;
    for (auto& x : v) write(x);
    out_ << YAML::EndSeq;
  }
  template <class T, std::enable_if_t<is_struct<T>::value, int> = 0> void write(T& v) {
    out_ << YAML::BeginMap;
    fields(*this, v);
    out_ << YAML::EndMap;
  }
  YAML::Emitter& out_;
};

void validate_run(const RunConfig& c, const Reader& r) {
  try {
    validate(c.model);
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    const auto colon = msg.find(':');
    r.fail(msg.substr(0, colon), msg.substr(colon + 2));
  }
  const auto& o = c.optim;
  if (!(o.lr > 0)) r.fail("optim.lr", fmt::format("must be positive, got {}", o.lr));
  if (o.min_lr < 0 || o.min_lr > o.lr) r.fail("optim.min_lr", fmt::format("must be in [0, optim.lr = {}], got {}", o.lr, o.min_lr));
  if (o.betas.size() != 2) r.fail("optim.betas", fmt::format("expected 2 values, got {}", o.betas.size()));
  for (size_t i = 0; i < 2; ++i) {
    if (o.betas[i] < 0 || o.betas[i] >= 1) r.fail(fmt::format("optim.betas[{}]", i), fmt::format("must be in [0, 1), got {}", o.betas[i]));
  }
  if (!(o.eps > 0)) r.fail("optim.eps", fmt::format("must be positive, got {}", o.eps));
  if (o.weight_decay < 0) r.fail("optim.weight_decay", fmt::format("must be >= 0, got {}", o.weight_decay));
  if (o.grad_clip < 0) r.fail("optim.grad_clip", fmt::format("must be >= 0 (0 disables clipping), got {}", o.grad_clip));
  if (o.warmup_steps < 0) r.fail("optim.warmup_steps", fmt::format("must be >= 0, got {}", o.warmup_steps));
  if (o.vision_layer_decay <= 0 || o.vision_layer_decay > 1) {
    r.fail("optim.vision_layer_decay", fmt::format("must be in (0, 1], got {}", o.vision_layer_decay));
  }
  const auto& t = c.train;
  if (t.steps <= 0) r.fail("train.steps", fmt::format("must be positive, got {}", t.steps));
  if (t.micro_batch_size <= 0) r.fail("train.micro_batch_size", fmt::format("must be positive, got {}", t.micro_batch_size));
  if (t.global_batch_size <= 0 || t.global_batch_size % t.micro_batch_size != 0) {
    r.fail("train.global_batch_size", fmt::format("must be a positive multiple of train.micro_batch_size ({}), got {}",
                                                  t.micro_batch_size, t.global_batch_size));
  }
  if (t.out_dir.empty()) r.fail("train.out_dir", "must not be empty");
  if (t.max_length <= 0) r.fail("train.max_length", fmt::format("must be positive, got {}", t.max_length));
  if (t.max_nonfinite_steps < 0) r.fail("train.max_nonfinite_steps", fmt::format("must be >= 0, got {}", t.max_nonfinite_steps));
  if (t.log_every <= 0) r.fail("train.log_every", fmt::format("must be positive, got {}", t.log_every));
  if (t.save_every < 0) r.fail("train.save_every", fmt::format("must be >= 0, got {}", t.save_every));
  if (t.keep_last < 1) r.fail("train.keep_last", fmt::format("must be >= 1, got {}", t.keep_last));
  const auto& d = c.data;
  for (size_t i = 0; i < d.sources.size(); ++i) {
    if (d.sources[i].path.empty()) r.fail(fmt::format("data.sources[{}].path", i), "must not be empty");
    if (!(d.sources[i].weight > 0)) {
      r.fail(fmt::format("data.sources[{}].weight", i), fmt::format("must be positive, got {}", d.sources[i].weight));
    }
  }
  if (d.num_workers < 0) r.fail("data.num_workers", fmt::format("must be >= 0, got {}", d.num_workers));
  if (d.max_bad_fraction < 0 || d.max_bad_fraction > 1) {
    r.fail("data.max_bad_fraction", fmt::format("must be in [0, 1], got {}", d.max_bad_fraction));
  }
  if (d.pack_tokens < 0) r.fail("data.pack_tokens", fmt::format("must be >= 0 (0 disables packing), got {}", d.pack_tokens));
  if (d.pack_buffer < 1) r.fail("data.pack_buffer", fmt::format("must be >= 1, got {}", d.pack_buffer));
  if (d.video_frames < 1) r.fail("data.video_frames", fmt::format("must be >= 1, got {}", d.video_frames));
  if (d.streaming) {
    if (d.sources.size() != 1) {
      r.fail("data.streaming", fmt::format("streams exactly one tar-shard source (a folder, brace pattern or JSON shard "
                                           "list), got {} sources", d.sources.size()));
    }
    if (d.pack_tokens > 0) r.fail("data.streaming", "cannot be combined with data.pack_tokens (packing plans whole epochs)");
    if (d.group_by_modality) r.fail("data.streaming", "cannot be combined with data.group_by_modality");
  }
  const auto& dist = c.distributed;
  if (dist.zero_stage < 0 || dist.zero_stage > 3) {
    r.fail("distributed.zero_stage", fmt::format("must be 0, 1, 2 or 3, got {}", dist.zero_stage));
  }
  // Only ZeRO with bf16 masters reduces into a float32 shard; elsewhere a bf16 reduction would not apply.
  if (dist.reduce_dtype == ReduceDtype::kBf16 && (dist.zero_stage < 1 || t.precision != Precision::kBf16)) {
    r.fail("distributed.reduce_dtype",
           fmt::format("bf16 applies to ZeRO (zero_stage 1, 2 or 3) with train.precision: bf16, got zero_stage {} and "
                       "train.precision: {}", dist.zero_stage, precision_name(t.precision)));
  }
  if (!(dist.bucket_mb > 0)) r.fail("distributed.bucket_mb", fmt::format("must be positive, got {}", dist.bucket_mb));
  if (dist.timeout_s <= 0) r.fail("distributed.timeout_s", fmt::format("must be positive, got {}", dist.timeout_s));
  const auto& e = c.eval;
  if (e.every < 0) r.fail("eval.every", fmt::format("must be >= 0, got {}", e.every));
  if (e.limit < 0) r.fail("eval.limit", fmt::format("must be >= 0, got {}", e.limit));
  if (e.batch_size <= 0) r.fail("eval.batch_size", fmt::format("must be positive, got {}", e.batch_size));
  if (e.max_new_tokens <= 0) r.fail("eval.max_new_tokens", fmt::format("must be positive, got {}", e.max_new_tokens));
  if (c.freeze.empty()) r.fail("freeze", "must list at least one rule (e.g. {pattern: \"*\", trainable: true})");
  for (size_t i = 0; i < c.freeze.size(); ++i) {
    if (c.freeze[i].pattern.empty()) r.fail(fmt::format("freeze[{}].pattern", i), "must not be empty");
  }
  const auto& l = c.lora;
  if (l.rank < 0) r.fail("lora.rank", fmt::format("must be >= 0 (0 disables LoRA), got {}", l.rank));
  if (l.rank > 0) {
    if (!(l.alpha > 0)) r.fail("lora.alpha", fmt::format("must be positive, got {}", l.alpha));
    if (!(l.dropout >= 0 && l.dropout < 1)) r.fail("lora.dropout", fmt::format("must be in [0, 1), got {}", l.dropout));
    if (l.targets.empty()) r.fail("lora.targets", "must list at least one module pattern");
    for (size_t i = 0; i < l.targets.size(); ++i) {
      if (l.targets[i].empty()) r.fail(fmt::format("lora.targets[{}]", i), "must not be empty");
    }
    for (size_t i = 0; i < l.modules_to_save.size(); ++i) {
      if (l.modules_to_save[i].empty()) r.fail(fmt::format("lora.modules_to_save[{}]", i), "must not be empty");
    }
  }
  if (c.param_groups.empty()) r.fail("param_groups", "must list at least one group (e.g. {pattern: \"*\"})");
  for (size_t i = 0; i < c.param_groups.size(); ++i) {
    const auto& g = c.param_groups[i];
    if (g.pattern.empty()) r.fail(fmt::format("param_groups[{}].pattern", i), "must not be empty");
    if (!(g.lr_scale >= 0)) r.fail(fmt::format("param_groups[{}].lr_scale", i), fmt::format("must be >= 0, got {}", g.lr_scale));
    if (g.weight_decay && *g.weight_decay < 0) {
      r.fail(fmt::format("param_groups[{}].weight_decay", i), fmt::format("must be >= 0, got {}", *g.weight_decay));
    }
  }
}

RunConfig parse_node(const YAML::Node& root, const Origins& origins, const std::string& origin) {
  RunConfig cfg;
  Reader reader(root, "", origins, origin);
  fields(reader, cfg);
  reader.finish();
  validate_run(cfg, reader);
  return cfg;
}

}  // namespace

namespace {

// The reference config.json layout (spec §2.3): LLaMA fields at the top, the ViT and the abstractor under
// visual_config.{visual_model, visual_abstractor}. Known fields become model.* keys of a YAML tree, so the
// same typed reader and validation apply; unrelated HF fields (architectures, torch_dtype, ...) are ignored.
YAML::Node hf_config_to_yaml(const std::string& path, Origins& origins) {
  std::ifstream f(path);
  if (!f) throw ConfigError(path + ": config file not found");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  if (!j.is_object()) throw ConfigError(path + ": expected a JSON object");
  auto expect_string = [&](const nlohmann::json& obj, const std::string& where, const char* key, const char* want) {
    if (obj.contains(key) && obj[key] != want) {
      throw ConfigError(fmt::format("{}: {}{}: expected \"{}\", got {}", path, where, key, want, obj[key].dump()));
    }
  };
  expect_string(j, "", "model_type", "mplug_owl2");
  expect_string(j, "", "hidden_act", "silu");
  YAML::Node root(YAML::NodeType::Map);
  auto copy = [&](const nlohmann::json& obj, const std::string& where, const std::string& section,
                  const std::vector<std::string>& keys) {
    for (const auto& k : keys) {
      if (!obj.contains(k) || obj[k].is_null()) continue;
      const auto& v = obj[k];
      root["model"][section][k] = v.is_string() ? v.get<std::string>() : v.dump();
      origins["model." + section + "." + k] = fmt::format("{} ({}{})", path, where, k);
    }
  };
  copy(j, "", "decoder",
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta"});
  if (j.contains("initializer_range") && j["initializer_range"].is_number()) {
    root["model"]["initializer_range"] = j["initializer_range"].dump();
    origins["model.initializer_range"] = fmt::format("{} (initializer_range)", path);
  }
  if (j.contains("num_attention_heads") && !j.contains("num_key_value_heads")) {
    root["model"]["decoder"]["num_key_value_heads"] = j["num_attention_heads"].dump();  // no GQA field: MHA
  }
  if (j.contains("visual_config")) {
    const auto& vc = j["visual_config"];
    if (vc.contains("visual_model")) {
      const auto& vm = vc["visual_model"];
      expect_string(vm, "visual_config.visual_model.", "hidden_act", "quick_gelu");
      copy(vm, "visual_config.visual_model.", "vision",
           {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "image_size", "patch_size", "layer_norm_eps"});
    }
    if (vc.contains("visual_abstractor")) {
      copy(vc["visual_abstractor"], "visual_config.visual_abstractor.", "abstractor",
           {"num_learnable_queries", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "encoder_hidden_size", "grid_size", "layer_norm_eps"});
    }
  }
  return root;
}

}  // namespace

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  Origins origins;
  std::vector<std::string> stack;
  const bool hf_json = path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  YAML::Node root = hf_json ? hf_config_to_yaml(path, origins) : load_file(fs::path(path), stack, origins);
  for (const auto& o : overrides) apply_override(root, o, origins);
  return parse_node(root, origins, path);
}

RunConfig parse_config_text(const std::string& yaml, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}:{}: YAML syntax error: {}", origin, e.mark.line + 1, e.msg));
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(origin + ": the top level must be a mapping of sections");
  Origins origins;
  record_origins(root, "", origin, origins);
  return parse_node(root, origins, origin);
}

std::string to_yaml(const RunConfig& cfg) {
  RunConfig copy = cfg;
  YAML::Emitter out;
  Writer w(out);
  out << YAML::BeginMap;
  fields(w, copy);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace owl2
