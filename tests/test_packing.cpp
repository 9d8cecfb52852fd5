// Sequence packing: a packed row computes exactly what its samples compute alone (logits, loss, gradients in
// float64), the best-fit packer's plan (deterministic, every sample once, within the budget, rank sharding,
// modality grouping), the loader's packed batches and their exact resume, and planned lengths equal to the
// examples' own.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <tuple>

#include <torch/cuda.h>

#include "data/example.h"
#include "data/loader.h"
#include "data/template.h"
#include "owl2/model/decoder.h"
#include "owl2/model/model.h"
#include "tests/golden_io.h"
#include "tests/helpers.h"
#include "tests/tokenizer_fixture.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_packing {

using namespace owl2;
using owl2::data::LoaderOptions;
using test::max_abs_diff;

namespace {

// A templated conversation of the tiny tokenizer as an Example, with `images` taken from `pool` in turn.
Example conversation(const std::vector<Turn>& turns, const torch::Tensor& pool, int64_t& next_image) {
  const auto conv = tokenize_conversation(test::tiny_tokenizer(), chat_template(TemplateKind::kMplugOwl2), turns);
  REQUIRE_FALSE(conv.mismatch);
  // The golden model's vocabulary is smaller than the tokenizer's: ids fold into it (the layout stays).
  const int64_t vocab = test::tiny_golden_config().decoder.vocab_size;
  const auto fold = [vocab](int64_t id) { return id >= 0 ? id % vocab : id; };
  Example e;
  for (int64_t id : conv.input_ids) e.input_ids.push_back(fold(id));
  for (int64_t id : conv.labels) e.labels.push_back(fold(id));
  for (int64_t i = 0; i < conv.num_images; ++i) e.images.push_back(pool[next_image++ % pool.size(0)]);
  return e;
}

// Image, two-image, text-only, system-turn and multi-round samples, as the chat template builds them.
std::vector<Example> mixed_examples() {
  const auto pool = test::read_golden("tests/golden/model_tiny.safetensors").at("in.images").to(torch::kFloat64);
  int64_t next = 0;
  const auto H = Role::kHuman, G = Role::kGpt, S = Role::kSystem;
  std::vector<Example> v;
  v.push_back(conversation({{H, "<|image|>What is this?"}, {G, "a red circle"}}, pool, next));
  v.push_back(conversation({{H, "<|image|><|image|>Which is bigger?"}, {G, "the second"}}, pool, next));
  v.push_back(conversation({{H, "Say hello."}, {G, "hello there"}}, pool, next));
  v.push_back(conversation({{S, "You are brief."}, {H, "Name a colour."}, {G, "blue"}}, pool, next));
  v.push_back(conversation({{H, "<|image|>Count them."}, {G, "3"}, {H, "And now?"}, {G, "4 shapes"}}, pool, next));
  return v;
}

Batch single(const Example& e) { return collate(std::vector<Example>{e}); }

ModelInputs inputs_of(const Batch& b) {
  ModelInputs in{b.input_ids, b.attention_mask, b.images, b.labels};
  in.segment_ids = b.segment_ids;
  return in;
}

std::map<std::string, torch::Tensor> grads_of(MPLUGOwl2ForCausalLM& model) {
  std::map<std::string, torch::Tensor> g;
  for (const auto& p : model->named_parameters()) {
    if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
  }
  return g;
}

}  // namespace

TEST_CASE("a packed row's logits, loss and gradients equal its samples run one by one in float64", "[packing][model]") {
  auto model = test::tiny_golden_model();
  const auto examples = mixed_examples();
  const int64_t V = model->cfg.visual_tokens_per_image();

  // Alone: each sample's logits, and the gradient of the summed per-token losses.
  model->zero_grad();
  std::vector<torch::Tensor> alone_logits;
  double alone_loss_sum = 0;
  int64_t alone_tokens = 0;
  for (const auto& e : examples) {
    const auto out = model->forward(inputs_of(single(e)));
    out.loss_sum.backward();
    alone_logits.push_back(out.logits[0].detach());
    alone_loss_sum += out.loss_sum.item<double>();
    alone_tokens += out.num_label_tokens.item<int64_t>();
  }
  const auto alone_grads = grads_of(model);
  REQUIRE(alone_tokens > 10);

  // Packed: rows {0, 1, 2} and {3, 4}; attention per sample span (the default) and through the block-diagonal
  // mask.
  auto copy = examples;
  const std::vector<size_t> row_of{0, 0, 0, 1, 1};
  const Batch packed = collate_packed(std::move(copy), row_of);
  REQUIRE(packed.input_ids.size(0) == 2);
  REQUIRE(packed.samples == 5);
  auto in = inputs_of(packed);
  const auto spliced = model->splice_inputs(in);
  REQUIRE(spliced.spans != nullptr);
  REQUIRE(spliced.segment_ids_BS.defined());
  in.padding_attention = GENERATE(PaddingAttention::kCausalWhenExact, PaddingAttention::kExplicitMask);
  INFO((in.padding_attention == PaddingAttention::kExplicitMask ? "block-diagonal mask" : "per-span attention"));
  model->zero_grad();
  const auto out = model->forward(in);
  out.loss_sum.backward();
  const auto packed_grads = grads_of(model);

  CHECK(out.num_label_tokens.item<int64_t>() == alone_tokens);
  CHECK(std::abs(out.loss_sum.item<double>() - alone_loss_sum) <= 1e-10 * std::abs(alone_loss_sum));
  // Each sample's logits and positions at its place in its row.
  std::vector<int64_t> offset(2, 0);
  for (size_t k = 0; k < examples.size(); ++k) {
    INFO("sample " << k);
    const int64_t r = static_cast<int64_t>(row_of[k]), len = spliced_length(examples[k], V);
    REQUIRE(alone_logits[k].size(0) == len);
    CHECK(max_abs_diff(out.logits[r].slice(0, offset[r], offset[r] + len), alone_logits[k]) < 1e-10);
    CHECK(torch::equal(out.position_ids[r].slice(0, offset[r], offset[r] + len).cpu(), torch::arange(len)));
    offset[static_cast<size_t>(r)] += len;
  }
  // Every parameter's gradient (the rows hold text and image tokens).
  REQUIRE(packed_grads.size() == alone_grads.size());
  REQUIRE(packed_grads.size() == model->parameters().size());
  for (const auto& [name, g] : alone_grads) {
    INFO(name);
    const double scale = g.abs().max().item<double>();
    CHECK(max_abs_diff(packed_grads.at(name), g) <= 1e-10 * std::max(scale, 1e-3));
  }
}

TEST_CASE("without segment ids the same row mixes its samples: the mask is what keeps them apart", "[packing][model]") {
  auto model = test::tiny_golden_model();
  auto examples = mixed_examples();
  const Batch packed = collate_packed(std::move(examples), {0, 0, 0, 1, 1});
  torch::NoGradGuard no_grad;
  auto in = inputs_of(packed);
  const double with = model->forward(in).loss_sum.item<double>();
  in.segment_ids = torch::Tensor();
  const double without = model->forward(in).loss_sum.item<double>();
  CHECK(std::abs(with - without) > 1e-3 * std::abs(with));
}

TEST_CASE("collate_packed: segments, labels and padding of packed rows, empty rows dropped", "[packing][data]") {
  std::vector<Example> v(4);
  v[0].input_ids = {1, 5, 6};
  v[0].labels = {-100, 5, 6};
  v[1].input_ids = {1, 7};
  v[1].labels = {9, 7};  // a supervised first token is ignored in a packed row
  v[2].input_ids = {1, 8, 9, 10};
  v[2].labels = {-100, -100, 9, 10};
  v[2].masked = true;
  v[3].input_ids = {1, 11};
  v[3].labels = {-100, 11};
  const Batch b = collate_packed(std::move(v), {0, 0, 2, 5});  // rows 1, 3 and 4 are empty
  REQUIRE(b.input_ids.sizes() == torch::IntArrayRef({3, 5}));
  CHECK(torch::equal(b.input_ids, torch::tensor({1, 5, 6, 1, 7, 1, 8, 9, 10, 0, 1, 11, 0, 0, 0}).view({3, 5})));
  CHECK(torch::equal(b.segment_ids, torch::tensor({0, 0, 0, 1, 1, 0, 0, 0, 0, -1, 0, 0, -1, -1, -1}).view({3, 5})));
  CHECK(torch::equal(b.labels,
                     torch::tensor({-100, 5, 6, -100, 7, -100, -100, -100, -100, -100, -100, 11, -100, -100, -100}).view({3, 5})));
  CHECK(torch::equal(b.attention_mask, b.segment_ids.ge(0).to(torch::kLong)));
  CHECK(b.samples == 4);
  CHECK_THROWS_WITH(collate_packed(std::vector<Example>(2), {1, 0}), Catch::Matchers::Contains("must not decrease"));
}

TEST_CASE("pack_rows: best fit over the look-ahead window, a hand-worked case", "[packing][data]") {
  // Lengths by index; order 0..6, budget 10, window 3.
  const std::vector<int64_t> len{6, 5, 3, 4, 7, 2, 9};
  const std::vector<size_t> order{0, 1, 2, 3, 4, 5, 6};
  // Row 1: 0 (6); window {1:5, 2:3, 3:4} -> 3 fits best (4), left 0.         -> {0, 3}
  // Row 2: 1 (5); window {2:3, 4:7, 5:2} -> 2 (3), left 2; window {4, 5, 6} -> 5 (2). -> {1, 2, 5}
  // Row 3: 4 (7); window {6:9} -> nothing fits.                              -> {4}
  // Row 4: 6 (9).                                                            -> {6}
  const auto rows = data::pack_rows(order, len, 10, 3);
  CHECK(rows == std::vector<std::vector<size_t>>{{0, 3}, {1, 2, 5}, {4}, {6}});
  // A window of 1 is first-fit in stream order, one row per sample that does not fit the last.
  CHECK(data::pack_rows(order, len, 10, 1) == std::vector<std::vector<size_t>>{{0}, {1, 2}, {3}, {4, 5}, {6}});
  CHECK_THROWS_WITH(data::pack_rows(order, len, 8, 3), Catch::Matchers::Contains("sample 6 has 9 tokens"));
}

namespace {

// n samples; sample i has an image when i % 3 == 0, and length 20 + (i * 37) % 90.
class Lengths : public data::Dataset {
 public:
  explicit Lengths(size_t n) : n_(n) {}
  size_t size() const override { return n_; }
  const std::string& name() const override { return name_; }
  data::SampleInfo info(size_t i) const override { return {i % 3 == 0 ? 1 : 0, length(i)}; }
  data::RawSample get(size_t i) const override {
    data::RawSample r;
    r.source = name_;
    r.id = std::to_string(i);
    if (i % 3 == 0) r.images.push_back("img");
    return r;
  }
  static int64_t length(size_t i) { return 20 + static_cast<int64_t>((i * 37) % 90); }

 private:
  size_t n_;
  std::string name_ = "lengths";
};

struct Item {
  size_t index;
  bool image;
};
struct Rows {
  std::vector<std::vector<size_t>> rows;
  std::vector<std::vector<bool>> images;
};
using PackLoader = data::Loader<Item, Rows>;

PackLoader make_pack_loader(size_t n, LoaderOptions o) {
  PackLoader::LengthHooks hooks;
  hooks.length = [](const Item& it) { return Lengths::length(it.index); };
  hooks.planned_length = [](size_t i) { return Lengths::length(i); };
  hooks.packed_collate = [](std::vector<Item>&& items, const std::vector<size_t>& row_of) {
    Rows r;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k == 0 || row_of[k] != row_of[k - 1]) {
        r.rows.emplace_back();
        r.images.emplace_back();
      }
      r.rows.back().push_back(items[k].index);
      r.images.back().push_back(items[k].image);
    }
    return r;
  };
  return PackLoader(
      std::make_shared<Lengths>(n), o,
      [](data::RawSample&& s) { return Item{std::stoul(s.id), !s.images.empty()}; },
      [](std::vector<Item>&&) -> Rows { throw std::logic_error("unpacked collate called"); }, hooks);
}

LoaderOptions pack_opts(size_t rows_per_batch, int64_t tokens, size_t buffer) {
  LoaderOptions o;
  o.batch_size = rows_per_batch;
  o.seed = 7;
  o.num_workers = 2;
  o.prefetch = 8;
  o.pack_tokens = tokens;
  o.pack_buffer = buffer;
  o.max_length = 4096;
  return o;
}

std::vector<Rows> drain_rows(PackLoader& l, int64_t max_batches = -1) {
  std::vector<Rows> out;
  while (max_batches < 0 || static_cast<int64_t>(out.size()) < max_batches) {
    auto b = l.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

}  // namespace

TEST_CASE("packed loader: every sample once per epoch, rows within the budget, deterministic per seed and epoch",
          "[packing][data]") {
  const size_t n = 301;
  auto l = make_pack_loader(n, pack_opts(4, 256, 16));
  const auto epoch0 = drain_rows(l);
  std::vector<size_t> seen;
  int64_t used = 0, rows = 0;
  for (const auto& b : epoch0) {
    for (const auto& r : b.rows) {
      int64_t tokens = 0;
      for (size_t i : r) tokens += Lengths::length(i);
      CHECK(tokens <= 256);
      used += tokens;
      ++rows;
      seen.insert(seen.end(), r.begin(), r.end());
    }
  }
  std::sort(seen.begin(), seen.end());
  std::vector<size_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  CHECK(seen == all);
  // Best fit over 16 samples fills the rows: less than 5% of the row budget is left empty.
  CHECK(static_cast<double>(used) / static_cast<double>(rows * 256) > 0.95);

  auto again = make_pack_loader(n, pack_opts(4, 256, 16));
  const auto same = drain_rows(again);
  REQUIRE(same.size() == epoch0.size());
  for (size_t b = 0; b < same.size(); ++b) CHECK(same[b].rows == epoch0[b].rows);
  l.set_epoch(1);
  const auto epoch1 = drain_rows(l);
  CHECK(epoch1.front().rows != epoch0.front().rows);
}

TEST_CASE("packed loader: resuming from a mid-epoch state continues with exactly the same rows", "[packing][data]") {
  auto full = make_pack_loader(200, pack_opts(3, 200, 8));
  const auto uninterrupted = drain_rows(full);
  REQUIRE(uninterrupted.size() > 6);
  auto first = make_pack_loader(200, pack_opts(3, 200, 8));
  drain_rows(first, 5);
  const std::string state = data::state_to_json(first.state());
  auto resumed = make_pack_loader(200, pack_opts(3, 200, 8));
  resumed.load_state(data::state_from_json(state));
  const auto rest = drain_rows(resumed);
  REQUIRE(rest.size() == uninterrupted.size() - 5);
  for (size_t b = 0; b < rest.size(); ++b) CHECK(rest[b].rows == uninterrupted[b + 5].rows);
}

TEST_CASE("packed plan: 2 ranks take alternate batches of the 1-rank plan, grouping keeps rows one modality",
          "[packing][data]") {
  const Lengths ds(250);
  std::vector<int64_t> len(ds.size());
  for (size_t i = 0; i < len.size(); ++i) len[i] = Lengths::length(i);
  auto o = pack_opts(2, 300, 12);
  const auto one = data::plan_packed_epoch(ds, o, 3, len);
  o.world_size = 2;
  for (int r = 0; r < 2; ++r) {
    o.rank = r;
    const auto mine = data::plan_packed_epoch(ds, o, 3, len);
    REQUIRE(mine.size() == one.size() / 2);
    for (size_t k = 0; k < mine.size(); ++k) CHECK(mine[k] == one[2 * k + static_cast<size_t>(r)]);
  }
  o.world_size = 1;
  o.rank = 0;
  o.group_by_modality = true;
  std::set<size_t> seen;
  for (const auto& batch : data::plan_packed_epoch(ds, o, 0, len)) {
    std::set<bool> modalities;
    for (const auto& row : batch)
      for (size_t i : row) {
        modalities.insert(ds.info(i).num_images > 0);
        seen.insert(i);
      }
    CHECK(modalities.size() == 1);
  }
  CHECK(seen.size() == ds.size());
}

TEST_CASE("packed loader: over-long samples follow the length policy, bad options are refused", "[packing][data]") {
  auto o = pack_opts(2, 100, 8);  // lengths run to 109: the longest are dropped
  auto l = make_pack_loader(100, o);
  int64_t kept = 0;
  for (const auto& b : drain_rows(l)) {
    for (const auto& r : b.rows) kept += static_cast<int64_t>(r.size());
  }
  int64_t longer = 0;
  for (size_t i = 0; i < 100; ++i) longer += Lengths::length(i) > 100;
  REQUIRE(longer > 0);
  CHECK(l.counters().dropped_too_long == longer);
  CHECK(kept == 100 - longer);

  PackLoader::LengthHooks none;
  CHECK_THROWS_WITH(PackLoader(std::make_shared<Lengths>(4), o, [](data::RawSample&&) { return Item{}; },
                               [](std::vector<Item>&&) { return Rows{}; }, none),
                    Catch::Matchers::Contains("packing needs the planned_length"));
}

TEST_CASE("planned lengths from the text alone equal the examples' spliced lengths", "[packing][data]") {
  const std::string dir = test::temp_dir("owl2_packing_synth");
  const auto synth = test::run_owl2("data synth --out " + dir + " --train 24 --heldout 2 --train-text 8 --heldout-text 2");
  INFO(synth.out);
  REQUIRE(synth.rc == 0);
  auto tok = std::make_shared<const Tokenizer>(test::source_path("tests/fixtures/tokenizer/tiny_llama.model"));
  ExampleOptions eo;
  eo.image.size = 28;
  const ExampleBuilder builder(tok, eo);
  for (const auto* source : {"/llava_train.json", "/pretrain"}) {
    const auto ds = data::open_dataset(dir + source);
    REQUIRE(ds->size() >= 24);
    for (size_t i = 0; i < ds->size(); ++i) {
      const auto text = ds->text(i);
      CHECK(text.images.empty());
      const int64_t planned = builder.spliced_tokens(text, 65);
      CHECK(planned == spliced_length(builder(ds->get(i)), 65));
    }
  }
}

TEST_CASE("on CUDA a packed row gives each sample the logits it has alone, in float32 and bf16", "[packing][gpu]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: nothing to check (CTest leaves [gpu] out of CPU builds)");
    return;
  }
  auto model = test::tiny_golden_model();
  const auto examples = mixed_examples();
  const int64_t V = model->cfg.visual_tokens_per_image();
  auto copy = examples;
  const std::vector<size_t> row_of{0, 0, 0, 1, 1};
  const Batch packed = collate_packed(std::move(copy), row_of);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> alone;  // float64 on the CPU
  for (const auto& e : examples) alone.push_back(model->forward(inputs_of(single(e))).logits[0]);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    INFO(dtype);
    model->to(torch::kCUDA, dtype);
    auto in = inputs_of(packed);
    in.input_ids = in.input_ids.cuda();
    in.attention_mask = in.attention_mask.cuda();
    in.labels = in.labels.cuda();
    in.segment_ids = in.segment_ids.cuda();
    in.images = in.images.to(torch::kCUDA, dtype);
    const auto logits = model->forward(in).logits.to(torch::kCPU, torch::kFloat64);
    std::vector<int64_t> offset(2, 0);
    for (size_t k = 0; k < examples.size(); ++k) {
      const auto r = static_cast<int64_t>(row_of[k]);
      const int64_t len = spliced_length(examples[k], V);
      const double scale = alone[k].abs().max().item<double>();
      CHECK(max_abs_diff(logits[r].slice(0, offset[static_cast<size_t>(r)], offset[static_cast<size_t>(r)] + len), alone[k]) <
            (dtype == torch::kFloat32 ? 1e-4 : 5e-2) * std::max(1.0, scale));
      offset[static_cast<size_t>(r)] += len;
    }
  }
}

namespace {
// Causal attention within each span, one SDPA call per span, in float64 on the CPU: the reference of the varlen kernels.
torch::Tensor per_span_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const std::vector<int64_t>& lengths) {
  std::vector<torch::Tensor> out;
  int64_t at = 0;
  for (const int64_t n : lengths) {
    const auto head_major = [&](const torch::Tensor& t) { return t.slice(0, at, at + n).transpose(0, 1).unsqueeze(0); };
    out.push_back(at::scaled_dot_product_attention(head_major(q), head_major(k), head_major(v), {}, 0.0, true)
                      .squeeze(0)
                      .transpose(0, 1));
    at += n;
  }
  return torch::cat(out, 0);
}
}  // namespace

TEST_CASE("varlen attention: no kernel off CUDA, and malformed spans are errors", "[packing]") {
  const auto q = torch::randn({10, 2, 8});
  CHECK(varlen_kernel_for(q) == VarlenKernel::kNone);
  CHECK_THROWS_WITH(varlen_causal_attention(q, q, q, {4, 6}), Catch::Contains("no variable-length kernel for Float on cpu"));
  CHECK_THROWS_WITH(varlen_causal_attention(q, q, q, {4, 5}), Catch::Contains("spans of 9 tokens for 10"));
  CHECK_THROWS_WITH(varlen_causal_attention(q, q, q, {10, 0}), Catch::Contains("a span of 0 tokens"));
}

TEST_CASE("varlen attention on CUDA equals causal attention per span, forward and gradients, flash and "
          "memory-efficient",
          "[packing][gpu]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: nothing to check (CTest leaves [gpu] out of CPU builds)");
    return;
  }
  torch::manual_seed(3);
  const std::vector<int64_t> lengths{5, 17, 1, 40, 9};
  const int64_t T = 72, H = 4, K = 64;
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const auto q = torch::randn({T, H, K}, opts), k = torch::randn({T, H, K}, opts), v = torch::randn({T, H, K}, opts);
  const auto w = torch::randn({T, H, K}, opts);  // the gradients of sum(out * w)
  auto grads_of = [&](const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>& f,
                      torch::Device device, torch::ScalarType dtype) {
    auto qq = q.to(device, dtype).requires_grad_(), kk = k.to(device, dtype).requires_grad_(),
         vv = v.to(device, dtype).requires_grad_();
    const auto out = f(qq, kk, vv);
    (out.to(torch::kFloat64) * w.to(out.device())).sum().backward();
    const auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat64); };
    return std::vector<torch::Tensor>{cpu(out), cpu(qq.grad()), cpu(kk.grad()), cpu(vv.grad())};
  };
  const auto reference = grads_of([&](auto a, auto b, auto c) { return per_span_reference(a, b, c, lengths); },
                                  torch::kCPU, torch::kFloat64);
  const std::vector<std::tuple<VarlenKernel, torch::ScalarType, double>> cases{
      {VarlenKernel::kMemoryEfficient, torch::kFloat32, 1e-4},
      {VarlenKernel::kMemoryEfficient, torch::kBFloat16, 5e-2},
      {VarlenKernel::kFlash, torch::kBFloat16, 5e-2}};
  for (const auto& [kernel, dtype, tol] : cases) {
    INFO("kernel " << static_cast<int>(kernel) << ", " << dtype);
    const auto got = grads_of([&, kernel = kernel](auto a, auto b, auto c) {
      return varlen_causal_attention(a, b, c, lengths, kernel);
    }, torch::kCUDA, dtype);
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("output, dq, dk, dv: " << i);
      const double scale = std::max(1.0, reference[i].abs().max().item<double>());
      CHECK(max_abs_diff(got[i], reference[i]) < tol * scale);
    }
  }
  CHECK(varlen_kernel_for(q.to(torch::kCUDA, torch::kBFloat16)) == VarlenKernel::kFlash);
  CHECK(varlen_kernel_for(q.to(torch::kCUDA, torch::kFloat32)) == VarlenKernel::kMemoryEfficient);
  CHECK(varlen_kernel_for(q.cuda()) == VarlenKernel::kNone);  // float64: the per-span calls
}

}  // namespace owl2_test_packing
