// A restricted unpickler for torch.save state dicts: a stack machine over the opcodes a state dict uses,
// with an allow-list of four globals; the zip container is read by LibTorch's own PyTorchStreamReader.
#include "owl2/io/torch_bin.h"

#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace owl2 {
namespace {

constexpr size_t kMaxPickleBytes = size_t{256} << 20;  // a 7B shard's data.pkl is a few kB

struct Obj;
using ObjP = std::shared_ptr<Obj>;

// A Python value as far as a state dict needs one. Globals are names; callables are applied in REDUCE.
struct Obj {
  enum Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor } kind = None;
  int64_t i = 0;
  double f = 0;
  std::string s;                              // Str, Global ("module.name")
  std::vector<ObjP> items;                    // Tuple, List
  std::vector<std::pair<ObjP, ObjP>> entries; // Dict (insertion order)
  PickledTensor tensor;                       // Storage (dtype, key, numel) and Tensor
};

const char* kind_name(Obj::Kind k) {
  static const char* names[] = {"None", "bool", "int", "float", "str", "tuple", "list", "dict", "global", "storage", "tensor"};
  return names[k];
}

bool storage_dtype(const std::string& global, torch::Dtype* out) {
  static const std::pair<const char*, torch::Dtype> table[] = {
      {"torch.DoubleStorage", torch::kFloat64}, {"torch.FloatStorage", torch::kFloat32},
      {"torch.HalfStorage", torch::kFloat16},   {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kInt64},     {"torch.IntStorage", torch::kInt32},
      {"torch.ShortStorage", torch::kInt16},    {"torch.CharStorage", torch::kInt8},
      {"torch.ByteStorage", torch::kUInt8},     {"torch.BoolStorage", torch::kBool},
  };
  for (const auto& [name, dt] : table)
    if (global == name) {
      *out = dt;
      return true;
    }
  return false;
}

class Unpickler {
 public:
  Unpickler(const std::string& data, const std::string& file) : d_(data), file_(file) {}

  ~Unpickler() {
    // Cut every edge first, so that releasing a deeply nested or cyclic structure never recurses.
    for (auto& o : arena_) {
      o->items.clear();
      o->entries.clear();
    }
  }

  ObjP run() {
    for (;;) {
      const size_t at = pos_;
      const uint8_t op = u8();
      switch (op) {
        case 0x80: u8(); break;     // PROTO
        case 0x95: bytes(8); break; // FRAME
        case '.':                   // STOP
          if (stack_.size() != 1 || !marks_.empty()) fail(at, "STOP with a malformed stack");
          return stack_.back();
        case '(': marks_.push_back(stack_.size()); break;
        case '}': push(make(Obj::Dict)); break;
        case ']': push(make(Obj::List)); break;
        case ')': push(make(Obj::Tuple)); break;
        case 't': push(tuple(pop_mark(at))); break;
        case 0x85: case 0x86: case 0x87: {
          const size_t n = op - 0x84u;
          if (stack_.size() < n + base()) fail(at, "TUPLE with too few items");
          std::vector<ObjP> items(stack_.end() - n, stack_.end());
          stack_.resize(stack_.size() - n);
          push(tuple(std::move(items)));
          break;
        }
        case 'N': push(make(Obj::None)); break;
        case 0x88: case 0x89: { auto o = make(Obj::Bool); o->i = op == 0x88; push(o); break; }
        case 'J': { int32_t v; std::memcpy(&v, bytes(4), 4); push(integer(v)); break; }
        case 'K': push(integer(u8())); break;
        case 'M': { uint16_t v; std::memcpy(&v, bytes(2), 2); push(integer(v)); break; }
        case 0x8a: {  // LONG1: little-endian two's complement
          const size_t n = u8();
          if (n > 8) fail(at, fmt::format("LONG1 of {} bytes is out of range", n));
          const uint8_t* p = bytes(n);
          uint64_t v = 0;
          for (size_t k = 0; k < n; ++k) v |= uint64_t{p[k]} << (8 * k);
          if (n > 0 && n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);
          push(integer(static_cast<int64_t>(v)));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian double
          const uint8_t* p = bytes(8);
          uint64_t v = 0;
          for (int k = 0; k < 8; ++k) v = (v << 8) | p[k];
          auto o = make(Obj::Float);
          std::memcpy(&o->f, &v, 8);
          push(o);
          break;
        }
        case 'X': { uint32_t n; std::memcpy(&n, bytes(4), 4); push(str(n)); break; }
        case 0x8c: push(str(u8())); break;
        case 0x8d: { uint64_t n; std::memcpy(&n, bytes(8), 8); push(str(n)); break; }
        case 'q': memo_[u8()] = top(at); break;
        case 'r': { uint32_t k; std::memcpy(&k, bytes(4), 4); memo_[k] = top(at); break; }
        case 0x94: memo_[static_cast<uint32_t>(memo_.size())] = top(at); break;
        case 'h': push(memo_get(u8(), at)); break;
        case 'j': { uint32_t k; std::memcpy(&k, bytes(4), 4); push(memo_get(k, at)); break; }
        case 'c': {
          const std::string module = line(at), name = line(at);
          push(global(module + "." + name, at));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop(at), module = pop(at);
          if (module->kind != Obj::Str || name->kind != Obj::Str) fail(at, "STACK_GLOBAL needs two strings");
          push(global(module->s + "." + name->s, at));
          break;
        }
        case 'Q': push(persistent(pop(at), at)); break;
        case 'R': {
          auto args = pop(at), fn = pop(at);
          push(reduce(fn, args, at));
          break;
        }
        case 'b': {  // BUILD: only an OrderedDict's attribute dict (state_dict()._metadata), which we drop
          auto state = pop(at);
          auto target = top(at);
          if (target->kind != Obj::Dict || state->kind != Obj::Dict)
            fail(at, fmt::format("BUILD of a {} with a {} state is not part of a state dict", kind_name(target->kind),
                                 kind_name(state->kind)));
          break;
        }
        case 's': {
          auto v = pop(at), k = pop(at);
          set_item(top(at), k, v, at);
          break;
        }
        case 'u': {
          auto items = pop_mark(at);
          if (items.size() % 2) fail(at, "SETITEMS with an odd number of items");
          auto d = top(at);
          for (size_t k = 0; k < items.size(); k += 2) set_item(d, items[k], items[k + 1], at);
          break;
        }
        case 'a': {
          auto v = pop(at);
          append(top(at), {v}, at);
          break;
        }
        case 'e': {
          auto items = pop_mark(at);
          append(top(at), items, at);
          break;
        }
        default:
          fail(at, fmt::format("unsupported pickle opcode 0x{:02x}", op));
      }
    }
  }

 private:
  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: data.pkl byte {}: {}", file_, at, what));
  }
  uint8_t u8() { return *bytes(1); }
  const uint8_t* bytes(size_t n) {
    if (n > d_.size() - pos_) fail(pos_, fmt::format("truncated: {} bytes needed, {} left", n, d_.size() - pos_));
    const auto* p = reinterpret_cast<const uint8_t*>(d_.data()) + pos_;
    pos_ += n;
    return p;
  }
  std::string line(size_t at) {
    const size_t nl = d_.find('\n', pos_);
    if (nl == std::string::npos || nl - pos_ > 256) fail(at, "GLOBAL without a terminated name");
    std::string s = d_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return s;
  }
  ObjP make(Obj::Kind k) {
    auto o = std::make_shared<Obj>();
    o->kind = k;
    arena_.push_back(o);
    return o;
  }
  ObjP integer(int64_t v) {
    auto o = make(Obj::Int);
    o->i = v;
    return o;
  }
  ObjP str(uint64_t n) {
    auto o = make(Obj::Str);
    const auto* p = bytes(n);
    o->s.assign(reinterpret_cast<const char*>(p), n);
    return o;
  }
  ObjP tuple(std::vector<ObjP> items) {
    auto o = make(Obj::Tuple);
    o->items = std::move(items);
    return o;
  }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(ObjP o) { stack_.push_back(std::move(o)); }
  ObjP pop(size_t at) {
    if (stack_.size() <= base()) fail(at, "stack underflow");
    auto o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  ObjP top(size_t at) const {
    if (stack_.size() <= base()) fail(at, "stack underflow");
    return stack_.back();
  }
  std::vector<ObjP> pop_mark(size_t at) {
    if (marks_.empty()) fail(at, "no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ObjP> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  ObjP memo_get(uint32_t k, size_t at) const {
    auto it = memo_.find(k);
    if (it == memo_.end()) fail(at, fmt::format("memo key {} was never stored", k));
    return it->second;
  }
  void set_item(const ObjP& d, const ObjP& k, const ObjP& v, size_t at) {
    if (d->kind != Obj::Dict) fail(at, fmt::format("SETITEM on a {}", kind_name(d->kind)));
    d->entries.emplace_back(k, v);
  }
  void append(const ObjP& l, const std::vector<ObjP>& items, size_t at) {
    if (l->kind != Obj::List) fail(at, fmt::format("APPEND on a {}", kind_name(l->kind)));
    l->items.insert(l->items.end(), items.begin(), items.end());
  }

  ObjP global(const std::string& name, size_t at) {
    torch::Dtype dt;
    if (name != "collections.OrderedDict" && name != "torch._utils._rebuild_tensor_v2" &&
        name != "torch._utils._rebuild_parameter" && !storage_dtype(name, &dt))
      fail(at, fmt::format("refusing global '{}': a tensor state dict needs only collections.OrderedDict, "
                           "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and torch.*Storage",
                           name));
    auto o = make(Obj::Global);
    o->s = name;
    return o;
  }

  int64_t as_int(const ObjP& o, const char* what, size_t at) const {
    if (o->kind != Obj::Int) fail(at, fmt::format("{}: expected an int, got {}", what, kind_name(o->kind)));
    return o->i;
  }

  // ('storage', torch.FloatStorage, '0', 'cpu', numel)
  ObjP persistent(const ObjP& pid, size_t at) {
    if (pid->kind != Obj::Tuple || pid->items.size() != 5 || pid->items[0]->kind != Obj::Str ||
        pid->items[0]->s != "storage")
      fail(at, "persistent id is not ('storage', type, key, location, numel)");
    const auto& type = pid->items[1];
    auto o = make(Obj::Storage);
    if (type->kind != Obj::Global || !storage_dtype(type->s, &o->tensor.dtype))
      fail(at, "persistent id names no known storage type");
    if (pid->items[2]->kind != Obj::Str || pid->items[3]->kind != Obj::Str)
      fail(at, "persistent id key and location must be strings");
    o->tensor.storage_key = pid->items[2]->s;
    o->tensor.storage_numel = as_int(pid->items[4], "storage numel", at);
    if (o->tensor.storage_numel < 0) fail(at, "negative storage size");
    return o;
  }

  std::vector<int64_t> int_tuple(const ObjP& o, const char* what, size_t at) const {
    if (o->kind != Obj::Tuple) fail(at, fmt::format("{}: expected a tuple, got {}", what, kind_name(o->kind)));
    std::vector<int64_t> out;
    for (const auto& x : o->items) {
      out.push_back(as_int(x, what, at));
      if (out.back() < 0) fail(at, fmt::format("{}: negative value {}", what, out.back()));
    }
    return out;
  }

  ObjP reduce(const ObjP& fn, const ObjP& args, size_t at) {
    if (fn->kind != Obj::Global) fail(at, fmt::format("REDUCE of a {}", kind_name(fn->kind)));
    if (args->kind != Obj::Tuple) fail(at, "REDUCE arguments are not a tuple");
    const auto& a = args->items;
    if (fn->s == "collections.OrderedDict") {
      if (!a.empty()) fail(at, "OrderedDict() with arguments");
      return make(Obj::Dict);
    }
    if (fn->s == "torch._utils._rebuild_parameter") {  // (tensor, requires_grad, hooks)
      if (a.size() != 3 || a[0]->kind != Obj::Tensor) fail(at, "_rebuild_parameter arguments are not (tensor, bool, hooks)");
      return a[0];
    }
    if (fn->s == "torch._utils._rebuild_tensor_v2") {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (a.size() != 6 && a.size() != 7) fail(at, fmt::format("_rebuild_tensor_v2 with {} arguments", a.size()));
      if (a[0]->kind != Obj::Storage) fail(at, "_rebuild_tensor_v2: first argument is not a storage");
      if (a[4]->kind != Obj::Bool) fail(at, "_rebuild_tensor_v2: requires_grad is not a bool");
      if (a[5]->kind != Obj::Dict || !a[5]->entries.empty())
        fail(at, "_rebuild_tensor_v2: backward hooks must be an empty OrderedDict");
      auto o = make(Obj::Tensor);
      o->tensor = a[0]->tensor;
      o->tensor.offset = as_int(a[1], "storage offset", at);
      if (o->tensor.offset < 0) fail(at, "negative storage offset");
      o->tensor.size = int_tuple(a[2], "size", at);
      o->tensor.stride = int_tuple(a[3], "stride", at);
      if (o->tensor.size.size() != o->tensor.stride.size())
        fail(at, fmt::format("size has {} dims but stride has {}", o->tensor.size.size(), o->tensor.stride.size()));
      return o;
    }
    fail(at, fmt::format("'{}' is not callable here", fn->s));
  }

  const std::string& d_;
  const std::string& file_;
  size_t pos_ = 0;
  std::vector<ObjP> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, ObjP> memo_;
  std::vector<ObjP> arena_;
};

// The last element a strided view touches must lie inside the storage.
void check_bounds(const std::string& file, const std::string& name, const PickledTensor& t) {
  int64_t last = t.offset;
  bool overflow = false;
  for (size_t k = 0; k < t.size.size(); ++k) {
    if (t.size[k] == 0) return;  // empty: touches nothing
    int64_t span;
    overflow |= __builtin_mul_overflow(t.size[k] - 1, t.stride[k], &span);
    overflow |= __builtin_add_overflow(last, span, &last);
  }
  if (overflow || last >= t.storage_numel)
    throw std::runtime_error(fmt::format("{}: tensor '{}' (offset {}, size [{}], stride [{}]) reaches past its "
                                         "storage '{}' of {} elements",
                                         file, name, t.offset, fmt::join(t.size, ", "), fmt::join(t.stride, ", "),
                                         t.storage_key, t.storage_numel));
}

template <typename F>
auto zip_call(const std::string& path, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    throw std::runtime_error(fmt::format("{}: not a readable torch.save zip archive: {}", path, e.what_without_backtrace()));
  }
}

}  // namespace

std::map<std::string, PickledTensor> unpickle_state_dict(const std::string& pickle, const std::string& file) {
  if (pickle.size() > kMaxPickleBytes)
    throw std::runtime_error(fmt::format("{}: data.pkl is {} bytes, over the {}-byte limit", file, pickle.size(), kMaxPickleBytes));
  std::map<std::string, PickledTensor> out;
  Unpickler u(pickle, file);
  const ObjP root = u.run();
  if (root->kind != Obj::Dict)
    throw std::runtime_error(fmt::format("{}: data.pkl holds a {}, not a dict of tensors", file, kind_name(root->kind)));
  for (const auto& [k, v] : root->entries) {
    if (k->kind != Obj::Str)
      throw std::runtime_error(fmt::format("{}: state dict key is a {}, not a str", file, kind_name(k->kind)));
    if (v->kind != Obj::Tensor)
      throw std::runtime_error(fmt::format("{}: entry '{}' is a {}, not a tensor", file, k->s, kind_name(v->kind)));
    if (!out.emplace(k->s, v->tensor).second)
      throw std::runtime_error(fmt::format("{}: duplicate key '{}'", file, k->s));
    check_bounds(file, k->s, v->tensor);
  }
  return out;
}

TorchBinFile::TorchBinFile(const std::string& path) : path_(path) {
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    char magic[4] = {};
    const size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (n < 4 || std::memcmp(magic, "PK\x03\x04", 4) != 0)
      throw std::runtime_error(fmt::format("{}: not a zip archive (only the zip format of torch.save since PyTorch 1.6 "
                                           "is supported; re-save it with torch.save)", path));
  }
  zip_call(path, [&] {
    reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    if (reader_->hasRecord("byteorder")) {
      auto [ptr, n] = reader_->getRecord("byteorder");
      const std::string order(static_cast<const char*>(ptr.get()), n);
      if (order != "little") throw std::runtime_error(fmt::format("{}: byteorder '{}' is not supported", path, order));
    }
    if (!reader_->hasRecord("data.pkl")) throw std::runtime_error(fmt::format("{}: archive has no data.pkl", path));
    auto [ptr, n] = reader_->getRecord("data.pkl");
    tensors_ = unpickle_state_dict(std::string(static_cast<const char*>(ptr.get()), n), path);
    for (const auto& [name, t] : tensors_) {
      const std::string rec = "data/" + t.storage_key;
      if (!reader_->hasRecord(rec))
        throw std::runtime_error(fmt::format("{}: tensor '{}' needs storage record '{}', which is missing", path, name, rec));
      const size_t want = static_cast<size_t>(t.storage_numel) * c10::elementSize(t.dtype);
      const size_t have = reader_->getRecordSize(rec);
      if (have != want)
        throw std::runtime_error(fmt::format("{}: storage '{}' of tensor '{}' has {} bytes, expected {} ({} x {})", path,
                                             rec, name, have, want, t.storage_numel, c10::toString(t.dtype)));
    }
    return 0;
  });
}

TorchBinFile::~TorchBinFile() = default;

std::vector<std::string> TorchBinFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

const PickledTensor& TorchBinFile::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error(fmt::format("{}: no tensor named '{}'", path_, name));
  return it->second;
}

TensorMeta TorchBinFile::meta(const std::string& name) const {
  const auto& t = at(name);
  return {t.dtype, t.size};
}

torch::Tensor TorchBinFile::get(const std::string& name) const {
  const auto& t = at(name);
  auto storage = torch::empty({t.storage_numel}, torch::TensorOptions().dtype(t.dtype));
  zip_call(path_, [&] {
    return reader_->getRecord("data/" + t.storage_key, storage.data_ptr(),
                              static_cast<size_t>(storage.numel()) * storage.element_size());
  });
  auto view = storage.as_strided(t.size, t.stride, t.offset);
  if (view.is_contiguous() && view.numel() == storage.numel()) return view;
  return view.clone(at::MemoryFormat::Contiguous);  // compact: do not keep a shared storage alive
}

}  // namespace owl2
