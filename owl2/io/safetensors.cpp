// safetensors: a reader that validates the whole header before trusting a byte of it, and a durable writer.
#include "owl2/io/safetensors.h"

#include <algorithm>

#include <ATen/Parallel.h>
#include <cstring>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "owl2/io/fileio.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace owl2 {
namespace {

using nlohmann::json;

struct DtypeName {
  const char* name;
  torch::Dtype dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw std::runtime_error(fmt::format("{}: {}", file, what));
}

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Parses JSON rejecting duplicate keys at any depth (nlohmann keeps the last one silently) and nesting
// deeper than a safetensors header needs.
json parse_header_json(const char* begin, const char* end, const std::string& file) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  int depth = 0;
  auto cb = [&](int, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        [[fallthrough]];
      case json::parse_event_t::array_start:
        if (++depth > 3) fail(file, "header JSON is nested deeper than a safetensors header can be");
        break;
      case json::parse_event_t::object_end:
        keys.pop_back();
        [[fallthrough]];
      case json::parse_event_t::array_end:
        --depth;
        break;
      case json::parse_event_t::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(k).second) fail(file, fmt::format("duplicate key '{}' in the header", k));
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail(file, fmt::format("header is not valid JSON: {}", e.what()));
  }
}

uint64_t json_u64(const json& v, const std::string& file, const std::string& what) {
  if (!v.is_number_unsigned()) fail(file, fmt::format("{}: expected a non-negative integer, got {}", what, v.dump()));
  return v.get<uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& name, const json& e, const std::string& file) {
  if (!e.is_object()) fail(file, fmt::format("tensor '{}': expected an object, got {}", name, e.type_name()));
  for (auto it = e.begin(); it != e.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      fail(file, fmt::format("tensor '{}': unknown field '{}'", name, it.key()));
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!e.contains(k)) fail(file, fmt::format("tensor '{}': missing field '{}'", name, k));

  SafetensorsEntry out;
  const auto& dt = e["dtype"];
  if (!dt.is_string()) fail(file, fmt::format("tensor '{}': dtype must be a string, got {}", name, dt.dump()));
  try {
    out.dtype = safetensors_dtype(dt.get<std::string>());
  } catch (const std::exception& ex) {
    fail(file, fmt::format("tensor '{}': {}", name, ex.what()));
  }

  const auto& shape = e["shape"];
  if (!shape.is_array()) fail(file, fmt::format("tensor '{}': shape must be a list, got {}", name, shape.dump()));
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : shape) {
    const uint64_t v = json_u64(d, file, fmt::format("tensor '{}' shape", name));
    if (v > static_cast<uint64_t>(INT64_MAX)) fail(file, fmt::format("tensor '{}': dimension {} too large", name, v));
    out.shape.push_back(static_cast<int64_t>(v));
    overflow |= __builtin_mul_overflow(numel, v, &numel);
  }
  const auto& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail(file, fmt::format("tensor '{}': data_offsets must be [begin, end], got {}", name, off.dump()));
  out.begin = json_u64(off[0], file, fmt::format("tensor '{}' data_offsets", name));
  out.end = json_u64(off[1], file, fmt::format("tensor '{}' data_offsets", name));
  if (out.end < out.begin)
    fail(file, fmt::format("tensor '{}': data_offsets [{}, {}] end before begin", name, out.begin, out.end));

  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(out.dtype)), &nbytes);
  if (overflow || nbytes != out.end - out.begin)
    fail(file, fmt::format("tensor '{}': {} {} needs {} bytes but data_offsets [{}, {}] span {} bytes", name,
                           dt.get<std::string>(), shape_text(out.shape),
                           overflow ? std::string("more than 2^64") : std::to_string(nbytes), out.begin, out.end,
                           out.end - out.begin));
  return out;
}

}  // namespace

torch::Dtype safetensors_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.dtype;
  throw std::invalid_argument(fmt::format("unsupported dtype '{}' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)", name));
}

std::string safetensors_dtype_name(torch::Dtype dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.dtype) return d.name;
  throw std::invalid_argument(fmt::format("dtype {} cannot be stored in safetensors by owl2", c10::toString(dtype)));
}

SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& file) {
  if (size < 8) fail(file, fmt::format("truncated: {} bytes, shorter than the 8-byte header length", size));
  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n > kSafetensorsMaxHeader)
    fail(file, fmt::format("header length {} exceeds the {}-byte limit", n, kSafetensorsMaxHeader));
  if (n > size - 8) fail(file, fmt::format("truncated: header length {} but only {} bytes follow it", n, size - 8));
  if (n < 2 || bytes[8] != '{') fail(file, "header does not start with '{'");

  const char* hb = reinterpret_cast<const char*>(bytes + 8);
  const json header = parse_header_json(hb, hb + n, file);
  if (!header.is_object()) fail(file, "header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail(file, "__metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          fail(file, fmt::format("__metadata__ '{}': expected a string, got {}", m.key(), m->dump()));
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    out.tensors.emplace(it.key(), parse_entry(it.key(), *it, file));
  }

  // The byte ranges must tile the data buffer exactly: sorted by begin, each starts where the last ended.
  const uint64_t buffer = size - out.data_start;
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> order;
  for (const auto& kv : out.tensors) {
    if (kv.second.end > buffer)
      fail(file, fmt::format("tensor '{}': data_offsets [{}, {}] extend past the {}-byte data buffer (truncated file?)",
                             kv.first, kv.second.begin, kv.second.end, buffer));
    order.emplace_back(&kv.first, &kv.second);
  }
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second->begin, a.second->end) < std::tie(b.second->begin, b.second->end);
  });
  uint64_t covered = 0;
  const std::string* last = nullptr;
  for (const auto& [name, e] : order) {
    if (e->begin < covered)
      fail(file, fmt::format("tensors '{}' and '{}' overlap: [{}, {}) starts before {}", *last, *name, e->begin,
                             e->end, covered));
    if (e->begin > covered)
      fail(file, fmt::format("hole in the data buffer: bytes [{}, {}) belong to no tensor (before '{}')", covered,
                             e->begin, *name));
    if (e->end > covered) last = name;
    covered = std::max(covered, e->end);
  }
  if (covered != buffer)
    fail(file, fmt::format("hole in the data buffer: bytes [{}, {}) at the end belong to no tensor", covered, buffer));
  return out;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(MappedFile::open(path)) {
  header_ = parse_safetensors(map_->data(), map_->size(), path);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(header_.tensors.size());
  for (const auto& kv : header_.tensors) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = header_.tensors.find(name);
  if (it == header_.tensors.end()) fail(map_->path(), fmt::format("no tensor named '{}'", name));
  return it->second;
}

TensorMeta SafetensorsFile::meta(const std::string& name) const {
  const auto& e = entry(name);
  return {e.dtype, e.shape};
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const auto& e = entry(name);
  uint8_t* p = map_->mutable_data() + header_.data_start + e.begin;
  const auto opts = torch::TensorOptions().dtype(e.dtype).device(torch::kCPU);
  const size_t esize = c10::elementSize(e.dtype);
  if (reinterpret_cast<uintptr_t>(p) % esize != 0) {  // written by a tool that does not align: copy
    auto t = torch::empty(e.shape, opts);
    std::memcpy(t.data_ptr(), p, e.end - e.begin);
    return t;
  }
  auto keep = map_;
  return torch::from_blob(p, e.shape, [keep](void*) {}, opts);
}

namespace {
torch::Dtype stored_dtype(const torch::Tensor& t, std::optional<torch::Dtype> cast) {
  return cast && t.is_floating_point() ? *cast : t.scalar_type();
}
}  // namespace

torch::Tensor SafetensorsFile::get_copy(const std::string& name) const {
  const auto& e = entry(name);
  auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  advise_huge_pages(t.data_ptr(), e.end - e.begin);  // fewer page faults while the kernel copies in
  // Large tensors are read in chunks on the intra-op threads: one pread stream cannot saturate memory bandwidth.
  constexpr uint64_t kChunk = uint64_t{8} << 20;
  const uint64_t n = e.end - e.begin, offset = header_.data_start + e.begin;
  auto* dst = static_cast<char*>(t.data_ptr());
  const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t end) {
    for (int64_t c = b; c < end; ++c) {
      const uint64_t at = static_cast<uint64_t>(c) * kChunk;
      read_file_range(map_->path(), offset + at, std::min(kChunk, n - at), dst + at);
    }
  });
  return t;
}

uint32_t save_safetensors(const std::string& path, const NamedTensors& tensors,
                          const std::map<std::string, std::string>& metadata, std::optional<torch::Dtype> cast,
                          bool checksum) {
  std::set<std::string> seen;
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    if (name == "__metadata__") fail(path, "'__metadata__' is reserved and cannot name a tensor");
    if (!seen.insert(name).second) fail(path, fmt::format("duplicate tensor name '{}'", name));
    if (!t.defined()) fail(path, fmt::format("tensor '{}' is undefined", name));
    safetensors_dtype_name(stored_dtype(t, cast));  // throws for unsupported dtypes
    order[i] = i;
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const size_t ea = c10::elementSize(stored_dtype(tensors[a].second, cast));
    const size_t eb = c10::elementSize(stored_dtype(tensors[b].second, cast));
    return ea != eb ? ea > eb : tensors[a].first < tensors[b].first;
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    const torch::Dtype dt = stored_dtype(t, cast);
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * c10::elementSize(dt);
    header[name] = {{"dtype", safetensors_dtype_name(dt)},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // the data buffer starts 8-byte aligned
  const uint64_t n = text.size();

  AtomicFile out(path, checksum);
  out.write(&n, 8);
  out.write(text.data(), text.size());
  for (size_t i : order) {
    const auto& src = tensors[i].second;
    const auto t = src.detach().to(torch::kCPU, stored_dtype(src, cast)).contiguous();
    out.write(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
  }
  out.commit();
  return out.crc32();
}

std::vector<std::vector<size_t>> plan_shards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes) {
  if (max_shard_bytes == 0) throw std::invalid_argument("max shard size must be positive");
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (!shards.back().empty() && in_shard + bytes[i] > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes[i];
  }
  return shards;
}

std::string shard_file_name(const std::string& stem, size_t index, size_t count) {
  return fmt::format("{}-{:05d}-of-{:05d}.safetensors", stem, index + 1, count);
}

void write_safetensors_index(const std::string& dir, const std::string& stem,
                             const std::map<std::string, std::string>& weight_map, uint64_t total_bytes) {
  const json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  write_file_atomic(fmt::format("{}/{}.safetensors.index.json", dir, stem), index.dump(2) + "\n");
}

uint64_t parse_byte_size(const std::string& text) {
  static const std::pair<const char*, uint64_t> units[] = {
      {"KiB", uint64_t{1} << 10}, {"MiB", uint64_t{1} << 20}, {"GiB", uint64_t{1} << 30}, {"TiB", uint64_t{1} << 40},
      {"KB", 1000ull},            {"MB", 1000000ull},         {"GB", 1000000000ull},      {"TB", 1000000000000ull},
      {"B", 1ull},
  };
  size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) ++digits;
  const std::string number = text.substr(0, digits), unit = text.substr(digits);
  uint64_t scale = unit.empty() ? 1 : 0;
  for (const auto& [name, value] : units)
    if (unit == name) scale = value;
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(number, &used);
    if (used != number.size()) scale = 0;
  } catch (const std::exception&) {
    scale = 0;
  }
  if (scale == 0 || v <= 0)
    throw std::invalid_argument(fmt::format("bad size '{}': expected a positive number with an optional unit "
                                            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 5GB", text));
  return static_cast<uint64_t>(v * static_cast<double>(scale));
}

ShardedWriteResult save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                            uint64_t max_shard_bytes,
                                            const std::map<std::string, std::string>& metadata,
                                            const std::string& stem, std::optional<torch::Dtype> cast) {
  if (max_shard_bytes == 0) fail(dir, "max shard size must be positive");
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors[a].first < tensors[b].first; });

  ShardedWriteResult result;
  std::vector<uint64_t> bytes;
  for (size_t i : order) {
    const auto& t = tensors[i].second;
    bytes.push_back(t.defined() ? static_cast<uint64_t>(t.numel()) * c10::elementSize(stored_dtype(t, cast)) : 0);
    result.total_bytes += bytes.back();
  }
  const auto plan = plan_shards(bytes, max_shard_bytes);

  const std::string index_path = fmt::format("{}/{}.safetensors.index.json", dir, stem);
  if (plan.size() == 1) {
    const std::string name = stem + ".safetensors";
    save_safetensors(dir + "/" + name, tensors, metadata, cast, /*checksum=*/false);
    std::remove(index_path.c_str());  // a stale index would shadow the single file
    result.files.push_back(name);
    return result;
  }
  std::map<std::string, std::string> weight_map;
  for (size_t s = 0; s < plan.size(); ++s) {
    const std::string name = shard_file_name(stem, s, plan.size());
    NamedTensors shard;
    for (size_t k : plan[s]) {
      shard.push_back(tensors[order[k]]);
      weight_map[tensors[order[k]].first] = name;
    }
    save_safetensors(dir + "/" + name, shard, metadata, cast, /*checksum=*/false);
    result.files.push_back(name);
  }
  write_safetensors_index(dir, stem, weight_map, result.total_bytes);  // last: never names a missing shard
  std::remove(fmt::format("{}/{}.safetensors", dir, stem).c_str());
  return result;
}

}  // namespace owl2
