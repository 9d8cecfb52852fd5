// Checkpoint I/O: safetensors reader/writer and sharding, torch.save .bin reading, the malformed-file
// corpus, and name-for-name state-dict load/save. Fixtures: scripts/make_checkpoint_fixtures.py.
#include <catch2/catch.hpp>

#include <stdlib.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "owl2/io/safetensors.h"
#include "owl2/io/state_dict.h"
#include "owl2/io/torch_bin.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_checkpoint_io {

using namespace std::string_literals;

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::source_path;

namespace {

std::string fixture(const std::string& rel) { return source_path("tests/fixtures/checkpoint/" + rel); }

// Temporary directories, removed when the test process exits (forked children _exit and leave them alone).
std::string temp_dir() { return owl2::test::temp_dir("owl2_ckpt_io"); }

bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

owl2::NamedTensors all_dtypes() {
  torch::manual_seed(0);
  return {
      {"f64", torch::randn({3}, torch::kFloat64)},
      {"f32.weight", torch::randn({2, 3})},
      {"f16", torch::randn({5}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"i64", torch::tensor({-(int64_t{1} << 40), int64_t{3}})},
      {"i32", torch::tensor({-7, 1 << 30}, torch::kInt32)},
      {"i16", torch::tensor({-300, 300}, torch::kInt16)},
      {"i8", torch::tensor({-128, 127}, torch::kInt8)},
      {"u8", torch::tensor({0, 1, 255}, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(2.5)},
      {"empty", torch::zeros({0, 3})},
      {"transposed", torch::arange(6, torch::kFloat32).reshape({2, 3}).t()},
  };
}

struct Tiny : torch::nn::Module {
  torch::nn::Linear proj{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::Tensor inv_freq, counter;
  explicit Tiny(int64_t in = 4, int64_t out = 3) {
    proj = register_module("proj", torch::nn::Linear(in, out));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({out})));
    auto rot = register_module("rotary_emb", std::make_shared<torch::nn::Module>());
    inv_freq = rot->register_buffer("inv_freq", torch::arange(2, torch::kFloat32));
    counter = register_buffer("counter", torch::tensor({7}, torch::kInt64));
  }
};

}  // namespace

TEST_CASE("safetensors round trip is bitwise for every dtype with scalars and empty tensors", "[checkpoint]") {
  const auto dir = temp_dir();
  const auto tensors = all_dtypes();
  owl2::save_safetensors(dir + "/a.safetensors", tensors, {{"format", "pt"}, {"step", "12"}});
  owl2::SafetensorsFile f(dir + "/a.safetensors");
  CHECK(f.names().size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    CHECK(bitwise_equal(f.get(name), t));
    CHECK(f.meta(name).shape == t.sizes().vec());
    // Data is laid out aligned to the element size, so every tensor is a zero-copy view.
    CHECK(reinterpret_cast<uintptr_t>(f.get(name).data_ptr()) % t.element_size() == 0);
  }
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}});

  // Header: little-endian u64 length, JSON padded with spaces so the data starts 8-byte aligned.
  const std::string bytes = read_text(dir + "/a.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  CHECK((8 + n) % 8 == 0);
  CHECK(bytes[8] == '{');
  const std::string header = bytes.substr(8, n);
  CHECK(header.find_last_not_of(' ') + 1 >= header.size() - 7);
  CHECK(nlohmann::json::parse(header)["i8"]["dtype"] == "I8");
}

TEST_CASE("safetensors tensors view the mapping with copy on write and outlive the file object", "[checkpoint]") {
  const auto dir = temp_dir();
  owl2::save_safetensors(dir + "/v.safetensors", {{"w", torch::arange(4, torch::kFloat32)}});
  torch::Tensor view;
  {
    owl2::SafetensorsFile f(dir + "/v.safetensors");
    view = f.get("w");
    CHECK(f.get("w").data_ptr() == view.data_ptr());  // same mapped bytes: no copy
    auto copy = f.get_copy("w");
    CHECK(copy.data_ptr() != view.data_ptr());
  }
  CHECK(view[3].item<float>() == 3.0f);  // the mapping outlives the SafetensorsFile
  view.mul_(10);                         // private mapping: the file is untouched
  CHECK(view[3].item<float>() == 30.0f);
  owl2::SafetensorsFile again(dir + "/v.safetensors");
  CHECK(again.get("w")[3].item<float>() == 3.0f);
}

TEST_CASE("safetensors written by owl2 load in the Python package and come back bitwise", "[checkpoint]") {
  const auto dir = temp_dir();
  auto tensors = all_dtypes();
  owl2::save_safetensors(dir + "/cpp.safetensors", tensors, {{"who", "owl2"}});
  const std::string cmd = std::string(OWL2_PYTHON) +
                          " -c \"import sys; from safetensors.torch import load_file, save_file; "
                          "from safetensors import safe_open; "
                          "t = load_file(sys.argv[1]); m = safe_open(sys.argv[1], 'pt').metadata(); "
                          "assert m == {'who': 'owl2'}, m; save_file(t, sys.argv[2], metadata=m)\" " +
                          dir + "/cpp.safetensors " + dir + "/py.safetensors";
  REQUIRE(std::system(cmd.c_str()) == 0);
  owl2::SafetensorsFile py(dir + "/py.safetensors");
  for (const auto& [name, t] : tensors) {
    INFO(name);
    CHECK(bitwise_equal(py.get(name), t));
  }
}

TEST_CASE("sharded safetensors split by size and resolve through the index", "[checkpoint]") {
  const auto dir = temp_dir();
  owl2::NamedTensors tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("layer." + std::to_string(i), torch::full({10}, float(i)));
  const auto res = owl2::save_safetensors_sharded(dir, tensors, 100);  // 40 bytes each: 2 per shard
  REQUIRE(res.files.size() == 3);
  CHECK(res.files[0] == "model-00001-of-00003.safetensors");
  CHECK(res.total_bytes == 200);
  const auto index = nlohmann::json::parse(read_text(dir + "/model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"] == 200);
  CHECK(index["weight_map"]["layer.4"] == "model-00003-of-00003.safetensors");
  auto src = owl2::open_tensor_source(dir);
  CHECK(src->names().size() == 5);
  for (const auto& [name, t] : tensors) CHECK(bitwise_equal(src->get(name), t));
  CHECK(src->where("layer.2") == dir + "/model-00002-of-00003.safetensors");

  // Everything in one shard: model.safetensors and no index (a stale one is removed).
  const auto one = owl2::save_safetensors_sharded(dir, tensors, 1000);
  CHECK(one.files == std::vector<std::string>{"model.safetensors"});
  struct stat st {};
  CHECK(::stat((dir + "/model.safetensors.index.json").c_str(), &st) != 0);
  CHECK(owl2::open_tensor_source(dir)->names().size() == 5);
}

TEST_CASE("the safetensors writer rejects duplicate and reserved and unsupported entries", "[checkpoint]") {
  const auto dir = temp_dir();
  const auto t = torch::ones({2});
  REQUIRE_THROWS_WITH(owl2::save_safetensors(dir + "/d.safetensors", {{"a", t}, {"a", t}}),
                      Contains("d.safetensors") && Contains("duplicate tensor name 'a'"));
  REQUIRE_THROWS_WITH(owl2::save_safetensors(dir + "/d.safetensors", {{"__metadata__", t}}), Contains("reserved"));
  REQUIRE_THROWS_WITH(owl2::save_safetensors(dir + "/d.safetensors", {{"c", torch::ones({2}, torch::kComplexFloat)}}),
                      Contains("cannot be stored in safetensors"));
  struct stat st {};
  CHECK(::stat((dir + "/d.safetensors").c_str(), &st) != 0);  // nothing half-written left behind
}

TEST_CASE("malformed safetensors give errors naming the file and the problem", "[checkpoint]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated_length", "truncated: 3 bytes"},
      {"huge_header", "header length 200000000 exceeds the 100000000-byte limit"},
      {"header_past_eof", "truncated: header length 1000"},
      {"not_json", "header is not valid JSON"},
      {"not_object", "header does not start with '{'"},
      {"unknown_dtype", "unsupported dtype 'F7'"},
      {"wrong_dtype_size", "tensor 'w': F64 [2] needs 16 bytes but data_offsets [0, 8] span 8 bytes"},
      {"shape_mismatch", "F32 [3] needs 12 bytes"},
      {"overlap", "tensors 'a' and 'b' overlap"},
      {"hole", "bytes [4, 8) at the end belong to no tensor"},
      {"gap", "hole in the data buffer: bytes [0, 4) belong to no tensor (before 'a')"},
      {"offsets_past_end", "extend past the 8-byte data buffer"},
      {"end_before_begin", "end before begin"},
      {"duplicate_names", "duplicate key 'w'"},
      {"metadata_not_string", "__metadata__ 'step': expected a string, got 3"},
      {"negative_dim", "shape: expected a non-negative integer, got -2"},
      {"missing_offsets", "tensor 'w': missing field 'data_offsets'"},
      {"too_deep", "nested deeper"},
      {"overflow_shape", "more than 2^64"},
      {"truncated_data", "extend past the 5-byte data buffer"},
  };
  for (const auto& [name, message] : cases) {
    const std::string path = fixture("malformed/" + name + ".safetensors");
    INFO(path);
    REQUIRE_THROWS_WITH(owl2::SafetensorsFile(path), Contains(path + ": ") && Contains(message));
  }
  owl2::SafetensorsFile valid(fixture("malformed/valid.safetensors"));
  CHECK(valid.get("w")[1].item<float>() == 2.0f);
}

TEST_CASE("randomly corrupted safetensors either parse or throw and never crash", "[checkpoint]") {
  const auto dir = temp_dir();
  owl2::save_safetensors(dir + "/s.safetensors", all_dtypes());
  const std::string good = read_text(dir + "/s.safetensors");
  std::mt19937 rng(1234);
  int rejected = 0, accepted = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      const size_t at = rng() % std::min<size_t>(bytes.size(), 8 + 400);  // mostly the header
      switch (rng() % 3) {
        case 0: bytes[at] = char(rng()); break;
        case 1: bytes.erase(at, 1 + rng() % 8); break;
        default: bytes.resize(rng() % bytes.size()); break;
      }
    }
    try {
      const auto h = owl2::parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "fuzz");
      for (const auto& kv : h.tensors) REQUIRE(h.data_start + kv.second.end <= bytes.size());
      ++accepted;
    } catch (const std::runtime_error& e) {
      REQUIRE(std::string(e.what()).rfind("fuzz: ", 0) == 0);
      ++rejected;
    }
  }
  CHECK(rejected > 2500);
  CHECK(accepted + rejected == 3000);
}

TEST_CASE("torch.save .bin files read the same values the Python package reads", "[checkpoint]") {
  for (const std::string stem : {"plain", "ordered"}) {
    owl2::TorchBinFile bin(fixture("bin/" + stem + ".bin"));
    owl2::SafetensorsFile expected(fixture("bin/" + stem + "_expected.safetensors"));
    CHECK(bin.names() == expected.names());
    for (const auto& name : expected.names()) {
      INFO(stem << " " << name);
      CHECK(bitwise_equal(bin.get(name), expected.get(name)));
      CHECK(bin.meta(name).shape == expected.meta(name).shape);
    }
  }
  owl2::TorchBinFile plain(fixture("bin/plain.bin"));
  CHECK(plain.get("f32")[1][2].item<float>() == 5.0f);
  CHECK(plain.get("i64")[0].item<int64_t>() == -(int64_t{1} << 40));
  CHECK(torch::equal(plain.get("view"), torch::arange(3, 9, torch::kFloat32).reshape({2, 3})));
  CHECK(plain.get("view_t").sizes() == c10::IntArrayRef({4, 3}));
  CHECK(plain.get("view_t")[3][0].item<float>() == 3.0f);
  CHECK(plain.get("scalar").dim() == 0);
}

TEST_CASE("sharded .bin checkpoints resolve through pytorch_model.bin.index.json", "[checkpoint]") {
  auto src = owl2::open_tensor_source(fixture("bin/sharded"));
  owl2::SafetensorsFile expected(fixture("bin/plain_expected.safetensors"));
  CHECK(src->names() == expected.names());
  for (const auto& name : expected.names()) CHECK(bitwise_equal(src->get(name), expected.get(name)));
  CHECK_THAT(src->where("u8"), Contains("pytorch_model-00002-of-00002.bin"));
}

TEST_CASE("malformed .bin files and foreign globals are rejected without running code", "[checkpoint]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"foreign_global", "refusing global 'posix.system'"},
      {"not_a_dict", "data.pkl holds a list, not a dict of tensors"},
      {"missing_storage", "needs storage record 'data/0', which is missing"},
      {"short_storage", "has 4 bytes, expected 8"},
      {"truncated_pickle", "truncated"},
      {"out_of_bounds", "reaches past its storage '0' of 2 elements"},
      {"truncated", "not a readable torch.save zip archive"},
      {"not_zip", "not a zip archive"},
  };
  for (const auto& [name, message] : cases) {
    const std::string path = fixture("malformed/" + name + ".bin");
    INFO(path);
    REQUIRE_THROWS_WITH(owl2::TorchBinFile(path), Contains(path + ": ") && Contains(message));
  }
}

TEST_CASE("the restricted unpickler survives hostile streams", "[checkpoint]") {
  // 200k nested 1-tuples: released without recursion, then rejected as not a dict.
  std::string deep = "\x80\x02N";
  deep += std::string(200000, '\x85');
  deep += ".";
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict(deep, "deep.pkl"), Contains("deep.pkl: data.pkl holds a tuple"));
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict("\x80\x02h\x05."s, "m.pkl"), Contains("memo key 5 was never stored"));
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict("\x80\x02(i__main__\nX\n.", "i.pkl"),
                      Contains("unsupported pickle opcode 0x69"));
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict("\x80\x02" "cbuiltins\neval\n.", "g.pkl"),
                      Contains("refusing global 'builtins.eval'"));
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict("\x80\x02X\xff\xff\xff\x7f", "s.pkl"), Contains("truncated"));
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict("\x80\x02" "a.", "u.pkl"), Contains("stack underflow"));
  // A cycle (a list appended to itself) is released too.
  REQUIRE_THROWS_WITH(owl2::unpickle_state_dict("\x80\x02]q\x00h\x00" "a."s, "c.pkl"), Contains("holds a list"));
}

TEST_CASE("load_state_dict copies name for name and ignores recomputable buffers", "[checkpoint]") {
  const auto dir = temp_dir();
  torch::manual_seed(3);
  Tiny a;
  owl2::save_state_dict(a, dir);
  torch::manual_seed(4);
  Tiny b;
  REQUIRE_FALSE(torch::equal(a.proj->weight, b.proj->weight));
  b.inv_freq.fill_(-1);
  const auto report = owl2::load_state_dict(b, *owl2::open_tensor_source(dir));
  CHECK(report.loaded.size() == 5);  // proj.weight, proj.bias, norm.weight, norm.bias, counter
  CHECK(report.ignored == std::vector<std::string>{"rotary_emb.inv_freq"});
  CHECK(report.missing.empty());
  CHECK(report.unexpected.empty());
  const auto sa = owl2::module_state(a), sb = owl2::module_state(b);
  REQUIRE(sa.size() == sb.size());
  for (size_t k = 0; k < sa.size(); ++k) {
    INFO(sa[k].first);
    if (sa[k].first != "rotary_emb.inv_freq") CHECK(bitwise_equal(sa[k].second, sb[k].second));
  }
  CHECK(b.inv_freq[0].item<float>() == -1.0f);  // ignored: keeps the module's own value
  CHECK(b.proj->weight.requires_grad());  // copied in place: still a trainable parameter
}

TEST_CASE("load_state_dict lists every shape and dtype and missing and unexpected problem and copies nothing", "[checkpoint]") {
  torch::manual_seed(5);
  Tiny module(4, 3);
  const auto before = module.proj->weight.clone();
  std::map<std::string, torch::Tensor> src{{"proj.weight", torch::zeros({3, 5})},
                                           {"proj.bias", torch::zeros({3}, torch::kFloat64)},
                                           {"norm.weight", torch::zeros({3})},
                                           {"extra.thing", torch::zeros({1})},
                                           {"layers.0.self_attn.rotary_emb.inv_freq", torch::zeros({1})}};
  owl2::MapSource source(src, "ckpt.safetensors");
  REQUIRE_THROWS_WITH(owl2::load_state_dict(module, source),
                      Contains("proj.weight: checkpoint [3, 5] in ckpt.safetensors vs module [3, 4]") &&
                          Contains("proj.bias: checkpoint Double vs module Float") &&
                          Contains("2 missing from the checkpoint:\n  norm.bias\n  counter") &&
                          Contains("1 unexpected in the checkpoint (no such module entry):\n  extra.thing"));
  CHECK(torch::equal(module.proj->weight, before));

  // Report-only mode with dtype conversion.
  src["proj.weight"] = torch::ones({3, 4}, torch::kBFloat16);
  owl2::LoadOptions opts;
  opts.allow_missing = opts.allow_unexpected = opts.convert_dtype = true;
  const auto report = owl2::load_state_dict(module, owl2::MapSource(src), opts);
  CHECK(report.missing == std::vector<std::string>{"norm.bias", "counter"});
  CHECK(report.unexpected == std::vector<std::string>{"extra.thing"});
  CHECK(report.ignored == std::vector<std::string>{"rotary_emb.inv_freq", "layers.0.self_attn.rotary_emb.inv_freq"});
  CHECK(module.proj->weight.scalar_type() == torch::kFloat32);
  CHECK(torch::equal(module.proj->weight, torch::ones({3, 4})));
  CHECK_THAT(report.summary(), Contains("loaded 3 tensors") && Contains("2 missing: norm.bias, counter"));
}

TEST_CASE("save_state_dict casts on request and bf16 round trips are bitwise", "[checkpoint]") {
  const auto dir = temp_dir();
  torch::manual_seed(6);
  Tiny a;
  owl2::SaveOptions opts;
  opts.dtype = torch::kBFloat16;
  opts.max_shard_bytes = 40;  // several shards
  const auto res = owl2::save_state_dict(a, dir, opts);
  CHECK(res.files.size() > 1);
  auto src = owl2::open_tensor_source(dir);
  CHECK(src->meta("proj.weight").dtype == torch::kBFloat16);
  CHECK(src->meta("counter").dtype == torch::kInt64);  // integers are not cast

  Tiny b;
  for (auto* m : {&a, &b})  // parameters only: Module::to(dtype) would cast the integer buffer too
    for (auto& p : m->parameters()) p.set_data(p.data().to(torch::kBFloat16));
  owl2::load_state_dict(b, *src);
  for (const auto& name : {"proj.weight", "proj.bias", "norm.weight", "norm.bias"})
    CHECK(bitwise_equal(src->get(name), b.named_parameters()[name]));
  CHECK(bitwise_equal(a.proj->weight, b.proj->weight));
}

TEST_CASE("owl2 checkpoint convert turns sharded .bin into safetensors shards with an optional cast", "[checkpoint][cli]") {
  const auto dir = temp_dir();
  const auto r = owl2::test::run_owl2("checkpoint convert --from " + fixture("bin/sharded") + " --to " + dir +
                                      " --shard-size 100B --dtype bf16");
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, Contains(": 14 tensors, 107 bytes in 2 file(s)"));
  auto out = owl2::open_tensor_source(dir);
  owl2::SafetensorsFile expected(fixture("bin/plain_expected.safetensors"));
  REQUIRE(out->names() == expected.names());
  for (const auto& name : expected.names()) {
    INFO(name);
    const auto want = expected.get(name);
    CHECK(bitwise_equal(out->get(name), want.is_floating_point() ? want.to(torch::kBFloat16) : want));
  }
  const auto ls = owl2::test::run_owl2("checkpoint ls " + dir);
  CHECK(ls.rc == 0);
  CHECK_THAT(ls.out, Contains("view_t  BF16  [4, 3]") && Contains("i64  I64  [2]") && Contains("14 tensors, 107 bytes"));
  const auto bad = owl2::test::run_owl2("checkpoint ls " + fixture("malformed/foreign_global.bin"));
  CHECK(bad.rc == 1);
  CHECK_THAT(bad.out, Contains("refusing global 'posix.system'"));
}

TEST_CASE("byte sizes parse with decimal and binary units", "[checkpoint]") {
  CHECK(owl2::parse_byte_size("5GB") == 5'000'000'000ull);
  CHECK(owl2::parse_byte_size("4GiB") == 4ull << 30);
  CHECK(owl2::parse_byte_size("1.5MB") == 1'500'000ull);
  CHECK(owl2::parse_byte_size("123") == 123ull);
  REQUIRE_THROWS_WITH(owl2::parse_byte_size("5XB"), Contains("bad size '5XB'"));
  REQUIRE_THROWS_WITH(owl2::parse_byte_size("-1GB"), Contains("bad size"));
  CHECK(owl2::plan_shards({40, 40, 40, 200, 10}, 100) == std::vector<std::vector<size_t>>{{0, 1}, {2}, {3}, {4}});
}

TEST_CASE("a broken index json names the index and the shard or tensor at fault", "[checkpoint]") {
  const auto dir = temp_dir();
  owl2::NamedTensors tensors{{"a", torch::ones({4})}, {"b", torch::zeros({4})}};
  owl2::save_safetensors_sharded(dir, tensors, 16);  // two shards
  const std::string index = dir + "/model.safetensors.index.json";
  auto write = [&](const std::string& text) {
    std::ofstream f(index);
    f << text;
  };
  write(R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}})");
  auto src = owl2::open_tensor_source(dir);
  REQUIRE_THROWS_WITH(src->get("a"), Contains(index) && Contains("weight_map puts 'b' in model-00001-of-00002.safetensors, which does not hold it"));
  write(R"({"weight_map": {"a": "gone.safetensors"}})");
  REQUIRE_THROWS_WITH(owl2::open_tensor_source(dir), Contains("shard 'gone.safetensors' named in weight_map does not exist"));
  write(R"({"weight_map": {"a": "../etc/passwd"}})");
  REQUIRE_THROWS_WITH(owl2::open_tensor_source(dir), Contains("is not a file in the index's directory"));
  write(R"({"weight_map": [1]})");
  REQUIRE_THROWS_WITH(owl2::open_tensor_source(dir), Contains("expected an object with a 'weight_map' object"));
  write("{oops");
  REQUIRE_THROWS_WITH(owl2::open_tensor_source(dir), Contains(index + ": not valid JSON"));
  REQUIRE_THROWS_WITH(owl2::open_tensor_source(dir + "/nothing"), Contains("no such file or directory"));
}

}  // namespace owl2_test_checkpoint_io
