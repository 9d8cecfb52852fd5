// Real public files from shared/data/real/ (beside the checkout, as in CI): the CC12M shard through the WebDataset
// reader and the CLIP preprocessing against PIL (tests/fixtures/real/cc12m_golden.json, made by
// scripts/make_real_data_golden.py), and a few training steps of the tiny model on it.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "data/image.h"
#include "tests/helpers.h"

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::run_owl2;
using owl2::test::source_path;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// shared/data/real/<name>. shared/ sits beside the checkout here and in CI: a missing file fails the test.
std::string real_data(const std::string& name) {
  const fs::path p = fs::path(OWL2_SOURCE_DIR).parent_path() / "shared" / "data" / "real" / name;
  if (!fs::exists(p)) FAIL(p.string() << " is missing: these tests read the public files of shared/data/real/, "
                                          "which sits beside the checkout");
  return p.string();
}

const json& golden() {
  static const json g = json::parse(read_text(source_path("tests/fixtures/real/cc12m_golden.json")));
  return g;
}

std::shared_ptr<owl2::data::Dataset> cc12m(std::shared_ptr<owl2::data::BadInputLog> log) {
  owl2::data::ReadOptions o;
  o.log = std::move(log);
  o.max_bad_fraction = 0;  // a single skipped pair is an error
  return owl2::data::open_tar_shards(real_data("cc12m-train-0000.tar"), o);
}

// The make_real_data_golden.py checksum of a uint8 tensor (CHW order).
uint64_t checksum(const torch::Tensor& u8) {
  const auto c = u8.contiguous();
  const uint8_t* p = c.data_ptr<uint8_t>();
  uint64_t sum = 0;
  for (uint64_t i = 0; i < static_cast<uint64_t>(c.numel()); ++i) sum += p[i] * ((i * 0x9E3779B97F4A7C15ull) | 1);
  return sum;
}

// A tiny-model run on the CC12M shard (the fixture tokenizer, so the decoder has its 1,000-piece vocabulary).
std::string write_cc12m_run(const std::string& root, const std::string& train) {
  fs::create_directories(root);
  const std::string path = root + "/run.yaml";
  std::ofstream(path) << "include: " << source_path("configs/model/tiny.yaml") << "\n"
                      << "model: {decoder: {vocab_size: 1000}}\n"
                      << "optim: {lr: 1.0e-3, warmup_steps: 1}\n"
                      << "train: {" << train << ", max_length: 256, out_dir: " << root << "/run}\n"
                      << "data: {tokenizer: " << source_path("tests/fixtures/tokenizer/tiny_llama.model")
                      << ", sources: [{path: " << real_data("cc12m-train-0000.tar") << "}], num_workers: 1}\n";
  return path;
}

}  // namespace

TEST_CASE("the CC12M shard through the WebDataset reader: 32 pairs with the captions of the txt members",
          "[real][dataset]") {
  auto log = std::make_shared<owl2::data::BadInputLog>();
  const auto ds = cc12m(log);
  const json& samples = golden()["samples"];
  REQUIRE(samples.size() == 32);
  REQUIRE(ds->size() == 32);
  CHECK(log->total() == 0);
  for (size_t i = 0; i < ds->size(); ++i) {
    const json& g = samples[i];
    const auto s = ds->get(i);
    INFO(g["key"]);
    CHECK(s.id == g["key"].get<std::string>());  // archive order, as Python's tarfile lists it
    CHECK(s.caption == g["caption"].get<std::string>());
    CHECK(s.turns.empty());
    REQUIRE(s.images.size() == 1);
    CHECK_THAT(s.image_paths[0], Contains("cc12m-train-0000.tar:" + g["key"].get<std::string>() + ".jpg"));
    CHECK(ds->info(i).num_images == 1);
    CHECK(ds->info(i).text_chars == static_cast<int64_t>(s.caption.size()));
    if (!owl2::image_decoding_available()) continue;
    const auto rgb = owl2::decode_image(s.images[0], s.image_paths[0]);
    CHECK(rgb.size(0) == g["height"].get<int64_t>());
    CHECK(rgb.size(1) == g["width"].get<int64_t>());
  }
}

TEST_CASE("CC12M JPEGs preprocess within 1e-6 of PIL + CLIPImageProcessor in all three modes", "[real][image]") {
  if (!owl2::image_decoding_available()) return;
  // One intra-op thread: the tensors are small, and under CTest's parallel load a pool is 3x slower (measured).
  struct OneThread {
    int before = torch::get_num_threads();
    OneThread() { torch::set_num_threads(1); }
    ~OneThread() { torch::set_num_threads(before); }
  } one_thread;
  const auto ds = cc12m(nullptr);
  const json& g = golden();
  std::vector<float> lut_values;
  for (const auto& row : g["lut"])
    for (const auto& v : row) lut_values.push_back(v.get<float>());
  REQUIRE(lut_values.size() == 3 * 256);
  const auto lut = torch::tensor(lut_values).view({3, 256});
  const auto mean = torch::tensor(g["mean"].get<std::vector<double>>(), torch::kDouble).view({3, 1, 1});
  const auto stdev = torch::tensor(g["std"].get<std::vector<double>>(), torch::kDouble).view({3, 1, 1});
  const auto channel = torch::arange(3).view({3, 1, 1});
  owl2::ImageConfig cfg;
  cfg.size = g["size"].get<int64_t>();
  double worst_lut = 0, worst_sample = 0;
  int cases = 0;
  for (size_t i = 0; i < ds->size(); ++i) {
    const json& sample = g["samples"][i];
    const auto rgb = owl2::decode_image(ds->get(i).images[0], sample["key"].get<std::string>());
    for (const auto& [mode, want] : sample["modes"].items()) {
      INFO(sample["key"] << " " << mode << " (" << rgb.size(1) << "x" << rgb.size(0) << ")");
      cfg.mode = owl2::parse_image_mode(mode);
      const auto ours = owl2::preprocess_image(rgb, cfg);
      REQUIRE(ours.sizes() == torch::IntArrayRef({3, cfg.size, cfg.size}));
      // The uint8 image ours normalised, and the processor's value for each of its pixels.
      const auto u8 = ((ours.to(torch::kDouble) * stdev + mean) * 255).round().clamp(0, 255).to(torch::kUInt8);
      const double off_lut = (ours - lut.index({channel, u8.to(torch::kLong)})).abs().max().item<double>();
      CHECK(off_lut < 1e-6);
      CHECK(fmt::format("{:016x}", checksum(u8)) == want["checksum"].get<std::string>());
      CHECK(u8.to(torch::kLong).sum({1, 2}).equal(torch::tensor(want["channel_sums"].get<std::vector<int64_t>>())));
      for (const auto& v : want["values"]) {
        const double d = std::abs(ours[v[0].get<int64_t>()][v[1].get<int64_t>()][v[2].get<int64_t>()].item<double>() -
                                  v[3].get<double>());
        CHECK(d < 1e-6);
        worst_sample = std::max(worst_sample, d);
      }
      worst_lut = std::max(worst_lut, off_lut);
      ++cases;
    }
  }
  CHECK(cases == 96);
  WARN("max |ours - processor value of the same uint8| " << worst_lut << ", at the sampled elements " << worst_sample);
}

TEST_CASE("owl2 train runs the tiny model on the CC12M shard: every pair and caption token of one epoch",
          "[real][train][cli]") {
  setenv("OMP_NUM_THREADS", "1", 1);  // one intra-op thread per process under CTest's parallel load
  const std::string root = "build/test_real_train";
  fs::remove_all(root);
  // 4 steps of 8 = the 32 pairs once.
  const std::string config = write_cc12m_run(root, "steps: 4, global_batch_size: 8, micro_batch_size: 4");
  const auto r = run_owl2("train --config " + config);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(fs::exists(root + "/run/final/model.safetensors"));
  int64_t caption_tokens = 0;  // supervised: the caption's pieces and EOS (BOS and the image are not)
  for (const auto& s : golden()["samples"]) caption_tokens += s["tokens"].get<int64_t>() + 1;
  std::ifstream f(root + "/run/metrics.jsonl");
  int64_t steps = 0, tokens = 0;
  for (std::string line; std::getline(f, line); ++steps) {
    const json j = json::parse(line);
    INFO(line);
    CHECK(j["step"] == steps);
    CHECK(j["samples"] == 8);
    CHECK(j["skipped_samples"] == 0);
    CHECK(j["skipped_step"] == false);
    REQUIRE(j["loss"].is_number());
    CHECK(std::isfinite(j["loss"].get<double>()));
    if (steps == 0) CHECK(j["loss"].get<double>() == Approx(std::log(1000.0)).margin(0.5));  // near uniform at init
    tokens += j["tokens"].get<int64_t>();
  }
  CHECK(steps == 4);
  CHECK(tokens == caption_tokens);
}
