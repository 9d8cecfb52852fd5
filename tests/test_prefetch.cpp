// The device prefetcher: the loader's batches in the loader's order across epochs, exact resume through its
// state() although it reads one global batch ahead, host token counts, and the Trainer step that uses them.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "data/example.h"
#include "trainers/prefetch.h"
#include "trainers/trainer.h"
#include "tests/toy_lm.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_prefetch {

using Catch::Matchers::Contains;
using namespace owl2;

namespace {

constexpr int64_t kVisual = 5;  // visual tokens per image

// n samples; sample i has an image when i % 3 == 0 and 3 + (7 i) % 11 characters of caption.
class Toy : public data::Dataset {
 public:
  explicit Toy(size_t n) : n_(n) {}
  size_t size() const override { return n_; }
  const std::string& name() const override { return name_; }
  data::SampleInfo info(size_t i) const override { return {i % 3 == 0 ? 1 : 0, static_cast<int64_t>(3 + (7 * i) % 11)}; }
  data::RawSample get(size_t i) const override {
    data::RawSample r;
    r.source = name_;
    r.id = std::to_string(i);
    if (i % 3 == 0) r.images.push_back("img");
    r.caption = std::string(static_cast<size_t>(info(i).text_chars), 'x');
    return r;
  }

 private:
  size_t n_;
  std::string name_ = "toy";
};

// An Example that identifies its sample: ids from the sample number, the first half of the tokens unsupervised,
// an image filled with the sample number after the first token of image samples.
Example to_example(data::RawSample&& s) {
  const int64_t i = std::stoll(s.id);
  Example e;
  const auto n = static_cast<int64_t>(s.caption.size());
  for (int64_t k = 0; k < n; ++k) {
    e.input_ids.push_back(1 + (i * 5 + k) % 13);
    e.labels.push_back(k < n / 2 ? -100 : e.input_ids.back());
  }
  if (!s.images.empty()) {
    e.input_ids.insert(e.input_ids.begin() + 1, -200);
    e.labels.insert(e.labels.begin() + 1, -100);
    e.images.push_back(torch::full({3, 4, 4}, double(i)));
  }
  return e;
}

std::unique_ptr<ExampleLoader> make_toy_loader(size_t samples = 10, int64_t max_length = 0) {
  data::LoaderOptions o;
  o.batch_size = 2;
  o.seed = 7;
  o.num_workers = 2;
  o.prefetch = 8;
  o.max_length = max_length;
  ExampleLoader::LengthHooks hooks;
  hooks.length = [](const Example& e) { return spliced_length(e, kVisual); };
  return std::make_unique<ExampleLoader>(std::make_shared<Toy>(samples), o, to_example,
                                         [](std::vector<Example>&& ex) { return collate(std::move(ex)); }, hooks);
}

// `count` micro-batches read directly, the next epoch whenever the loader runs dry.
std::vector<Batch> direct(ExampleLoader& loader, size_t count) {
  std::vector<Batch> out;
  while (out.size() < count) {
    auto b = loader.next();
    if (!b) {
      loader.set_epoch(loader.state().epoch + 1);
      continue;
    }
    out.push_back(std::move(*b));
  }
  return out;
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  return !a.defined() || (a.device() == b.device() && torch::equal(a, b));
}

void check_same(const Batch& a, const Batch& b) {
  CHECK(same(a.input_ids, b.input_ids));
  CHECK(same(a.attention_mask, b.attention_mask));
  CHECK(same(a.labels, b.labels));
  CHECK(same(a.images, b.images));
  CHECK(a.samples == b.samples);
}

// The micro-batches of `steps` global batches of `accum` from the prefetcher.
std::vector<Batch> through(DevicePrefetcher& p, int64_t steps) {
  std::vector<Batch> out;
  for (int64_t s = 0; s < steps; ++s) {
    auto g = p.next();
    REQUIRE(static_cast<int64_t>(g.micro.size()) == 2);
    for (auto& b : g.micro) out.push_back(std::move(b));
  }
  return out;
}

}  // namespace

TEST_CASE("prefetcher: the loader's micro-batches in the loader's order over several epochs", "[prefetch]") {
  auto ref_loader = make_toy_loader();
  REQUIRE(ref_loader->num_batches() == 5);  // odd: a global batch of 2 straddles each epoch boundary
  const auto ref = direct(*ref_loader, 14);  // 2.8 epochs
  auto loader = make_toy_loader();
  DevicePrefetcher p(*loader, /*accum=*/2, kVisual, torch::kCPU);
  const auto got = through(p, 7);
  REQUIRE(got.size() == ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    INFO("micro-batch " << i);
    check_same(got[i], ref[i]);
  }
  // An epoch's batches differ from the next epoch's (the comparison above would not see a repeated epoch).
  const bool repeated = torch::equal(ref[0].input_ids, ref[5].input_ids) && torch::equal(ref[1].input_ids, ref[6].input_ids);
  CHECK_FALSE(repeated);
}

TEST_CASE("prefetcher: state() is the position of the batches handed out and a resume through it is exact",
          "[prefetch]") {
  std::vector<Batch> uninterrupted;
  {
    auto loader = make_toy_loader();
    DevicePrefetcher p(*loader, 2, kVisual, torch::kCPU);
    uninterrupted = through(p, 7);
  }
  auto loader = make_toy_loader();
  DevicePrefetcher p(*loader, 2, kVisual, torch::kCPU);
  CHECK(p.state().epoch == 0);
  CHECK(p.state().position == 0);
  through(p, 3);  // 6 micro-batches: all 5 of epoch 0, then 1 of epoch 1 (the loader reads 2 more meanwhile)
  const data::LoaderState saved = p.state();
  CHECK(saved.epoch == 1);
  CHECK(saved.position == 1);

  auto fresh_loader = make_toy_loader();
  DevicePrefetcher resumed(*fresh_loader, 2, kVisual, torch::kCPU);
  resumed.load_state(saved);
  const auto rest = through(resumed, 4);
  for (size_t i = 0; i < rest.size(); ++i) {
    INFO("micro-batch " << 6 + i);
    check_same(rest[i], uninterrupted[6 + i]);
  }

  // load_state on a prefetcher with a staged batch drops it: back to the saved position.
  through(p, 2);
  p.load_state(saved);
  const auto again = through(p, 4);
  for (size_t i = 0; i < again.size(); ++i) {
    INFO("micro-batch " << 6 + i << " after load_state");
    check_same(again[i], uninterrupted[6 + i]);
  }
}

TEST_CASE("prefetcher: token counts are taken on the host and equal the batch's own", "[prefetch]") {
  auto ref_loader = make_toy_loader();
  const auto ref = direct(*ref_loader, 10);
  auto loader = make_toy_loader();
  DevicePrefetcher p(*loader, 2, kVisual, torch::kCPU);
  int64_t images = 0;
  for (size_t s = 0; s < 5; ++s) {
    const auto g = p.next();
    REQUIRE(g.label_tokens.size() == 2);
    int64_t input_tokens = 0;
    for (size_t k = 0; k < 2; ++k) {
      const Batch& b = ref[2 * s + k];
      CHECK(g.label_tokens[k] == b.label_tokens());
      const int64_t n_images = b.images.defined() ? b.images.size(0) : 0;
      images += n_images;
      input_tokens += b.attention_mask.sum().item<int64_t>() + n_images * (kVisual - 1);
    }
    CHECK(g.input_tokens == input_tokens);
  }
  CHECK(images > 0);  // the visual-token term was exercised
}

TEST_CASE("prefetcher: an epoch that yields no batch is an error and not an endless loop", "[prefetch]") {
  auto loader = make_toy_loader(10, /*max_length=*/1);  // every sample is longer: all dropped
  DevicePrefetcher p(*loader, 2, kVisual, torch::kCPU);
  CHECK_THROWS_WITH(p.next(), Contains("the loader gave no batch in all of epoch 1") && Contains("5 batches planned"));
}

TEST_CASE("Trainer::step with host-counted supervised tokens equals the step that counts them", "[prefetch][train]") {
  auto m1 = std::make_shared<test::ToyLM>(/*dropout=*/0.0);
  auto m2 = std::make_shared<test::ToyLM>(/*dropout=*/0.0);
  const auto cfg = test::toy_config();
  Trainer t1(*m1, [&](const Batch& b) { return m1->loss_sum(b); }, cfg);
  Trainer t2(*m2, [&](const Batch& b) { return m2->loss_sum(b); }, cfg);
  for (int s = 0; s < 3; ++s) {
    const std::vector<Batch> micro = {test::make_batch(2, 6, 10 * s + 1, /*masked=*/3), test::make_batch(2, 6, 10 * s + 2)};
    const auto counted = t1.step(micro);
    const auto given = t2.step(micro, {micro[0].label_tokens(), micro[1].label_tokens()});
    CHECK(given.tokens == 2 * 3 + 2 * 5);
    CHECK(given.tokens == counted.tokens);
    CHECK(given.loss == counted.loss);
    CHECK(given.grad_norm == counted.grad_norm);
  }
  CHECK_THROWS_WITH(t2.step({test::make_batch(2, 6, 1)}, {}), Contains("0 supervised-token counts for 1 micro-batches"));
}

TEST_CASE("prefetcher on CUDA yields the CPU batches on the device", "[prefetch][gpu]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: nothing to check (CTest leaves [gpu] out of CPU builds)");
    return;
  }
  auto cpu_loader = make_toy_loader();
  DevicePrefetcher cpu(*cpu_loader, 2, kVisual, torch::kCPU);
  auto cuda_loader = make_toy_loader();
  DevicePrefetcher cuda(*cuda_loader, 2, kVisual, torch::Device(torch::kCUDA, 0));
  for (int s = 0; s < 7; ++s) {
    const auto want = cpu.next();
    const auto got = cuda.next();
    CHECK(got.label_tokens == want.label_tokens);
    CHECK(got.input_tokens == want.input_tokens);
    REQUIRE(got.micro.size() == want.micro.size());
    for (size_t k = 0; k < want.micro.size(); ++k) {
      CHECK(got.micro[k].input_ids.is_cuda());
      CHECK(torch::equal(got.micro[k].input_ids.cpu(), want.micro[k].input_ids));
      CHECK(torch::equal(got.micro[k].labels.cpu(), want.micro[k].labels));
      CHECK(torch::equal(got.micro[k].attention_mask.cpu(), want.micro[k].attention_mask));
      CHECK(got.micro[k].images.defined() == want.micro[k].images.defined());
      if (want.micro[k].images.defined()) CHECK(torch::equal(got.micro[k].images.cpu(), want.micro[k].images));
    }
  }
  CHECK(cuda.state().position == cpu.state().position);
}

}  // namespace owl2_test_prefetch
