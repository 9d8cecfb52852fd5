// Image preprocessing against PIL + CLIPImageProcessor goldens (scripts/make_image_golden.py), decoding
// details (EXIF, alpha, 16-bit, grey, WebP), errors that name the file, and the seeded augmentation.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/image.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_image {

using Catch::Matchers::Contains;
using owl2::ImageConfig;
using owl2::ImageMode;
using owl2::test::read_text;
using owl2::test::source_path;
using torch::indexing::Slice;

namespace {
std::string fixture(const std::string& name) { return source_path("tests/fixtures/image/" + name); }

// Max |ours - golden| per case, ours subsampled like the golden ([:, ::stride, ::stride]).
std::vector<std::pair<std::string, double>> golden_diffs() {
  const auto index = nlohmann::json::parse(read_text(fixture("goldens.json")));
  const std::string blob = read_text(fixture("goldens.bin"));
  std::vector<std::pair<std::string, double>> out;
  for (const auto& c : index["cases"]) {
    const auto shape = c["shape"].get<std::vector<int64_t>>();
    const auto offset = c["offset"].get<size_t>();
    const int64_t stride = c["stride"].get<int64_t>();
    REQUIRE(offset + 4 * shape[0] * shape[1] * shape[2] <= blob.size());
    const torch::Tensor golden =
        torch::from_blob(const_cast<char*>(blob.data() + offset), shape, torch::kFloat).clone();
    ImageConfig cfg;
    cfg.size = c["size"].get<int64_t>();
    cfg.mode = owl2::parse_image_mode(c["mode"].get<std::string>());
    const torch::Tensor img = owl2::load_image(fixture(c["file"].get<std::string>()));
    const auto in_size = c["input_size"].get<std::vector<int64_t>>();  // PIL's (W, H)
    CHECK(img.size(1) == in_size[0]);
    CHECK(img.size(0) == in_size[1]);
    const torch::Tensor ours = owl2::preprocess_image(img, cfg);
    REQUIRE(ours.sizes() == torch::IntArrayRef({3, cfg.size, cfg.size}));
    const torch::Tensor sub = ours.index({Slice(), Slice(0, torch::indexing::None, stride), Slice(0, torch::indexing::None, stride)});
    REQUIRE(sub.sizes() == golden.sizes());
    out.emplace_back(c["file"].get<std::string>() + " " + c["mode"].get<std::string>(),
                     (sub - golden).abs().max().item<double>());
  }
  return out;
}
}  // namespace

TEST_CASE("preprocessing matches PIL + CLIPImageProcessor in all three modes", "[image]") {
  if (!owl2::image_decoding_available()) return;
  const auto diffs = golden_diffs();
  REQUIRE(diffs.size() == 12);
  for (const auto& [name, diff] : diffs) {
    INFO(name << ": max abs diff " << diff);
    // One uint8 step is 1/255/std ~ 0.015; the resampler is bit-exact, so only float rounding remains.
    CHECK(diff < 1e-5);
  }
}

TEST_CASE("decoding: EXIF orientation ignored, alpha dropped, 16-bit and grey as PIL converts them", "[image]") {
  if (!owl2::image_decoding_available()) return;
  // Stored landscape with orientation 6; PIL (and the reference) keep it landscape.
  const auto exif = owl2::load_image(fixture("exif_rotate90.jpg"));
  CHECK(exif.sizes() == torch::IntArrayRef({150, 200, 3}));
  const auto logo = owl2::load_image(fixture("logo2.png"));  // RGBA
  CHECK(logo.sizes() == torch::IntArrayRef({130, 542, 3}));
  // gray16.png holds (3x + 2y) % 400; PIL's I;16 -> RGB clips at 255 and replicates grey.
  const auto g16 = owl2::load_image(fixture("gray16.png"));
  REQUIRE(g16.sizes() == torch::IntArrayRef({80, 100, 3}));
  CHECK(g16[0][10][0].item<int>() == 30);
  CHECK(g16[1][10][1].item<int>() == 32);
  CHECK(g16[0][90][2].item<int>() == 255);  // 270 clipped
  // rgb16.png: R = 540x + 100, G = 720y + 37, B = (6xy) % 65536; PIL keeps the high byte.
  const auto c16 = owl2::load_image(fixture("rgb16.png"));
  CHECK(c16[5][7][0].item<int>() == (540 * 7 + 100) >> 8);
  CHECK(c16[5][7][1].item<int>() == (720 * 5 + 37) >> 8);
  CHECK(c16[5][7][2].item<int>() == ((6 * 5 * 7) % 65536) >> 8);
  // grey + alpha: grey replicated into three equal channels, alpha (37y % 256) ignored.
  const auto la = owl2::load_image(fixture("gray_alpha.png"));
  CHECK(la[3][20][0].item<int>() == 40);
  CHECK(la[3][20][2].item<int>() == 40);
  const auto grey = owl2::load_image(fixture("gray.jpg"));
  CHECK((grey.select(2, 0) == grey.select(2, 1)).all().item<bool>());
}

TEST_CASE("bad, truncated and missing images are errors naming the path", "[image]") {
  if (!owl2::image_decoding_available()) {
    CHECK_THROWS_WITH(owl2::load_image(fixture("gray.jpg")), Contains("OWL2_WITH_OPENCV=OFF"));
    return;
  }
  const std::string jpeg = read_text(fixture("grace_hopper.jpg"));
  CHECK_THROWS_WITH(owl2::decode_image(std::string_view(jpeg).substr(0, jpeg.size() / 2), "shard-3.tar:000017.jpg"),
                    Contains("shard-3.tar:000017.jpg") && Contains("truncated JPEG"));
  CHECK_THROWS_WITH(owl2::decode_image("definitely not an image", "x/notes.png"),
                    Contains("x/notes.png") && Contains("cannot decode"));
  CHECK_THROWS_WITH(owl2::decode_image("", "empty.jpg"), Contains("empty.jpg: empty file"));
  const std::string png = read_text(fixture("tiny_upscale.png"));
  CHECK_THROWS_WITH(owl2::decode_image(std::string_view(png).substr(0, png.size() / 2), "cut.png"), Contains("cut.png"));
  CHECK_THROWS_WITH(owl2::load_image("/nonexistent/a.jpg"), Contains("/nonexistent/a.jpg: cannot open file"));
}

TEST_CASE("resize_bicubic: identity at the same size, constant images stay constant", "[image]") {
  const auto img = torch::randint(0, 256, {37, 53, 3}, torch::kUInt8);
  CHECK(owl2::resize_bicubic(img, 37, 53).equal(img));
  const auto flat = torch::full({90, 70, 3}, 77, torch::kUInt8);
  for (auto [h, w] : std::vector<std::pair<int, int>>{{30, 20}, {200, 150}, {90, 33}, {7, 70}}) {
    const auto r = owl2::resize_bicubic(flat, h, w);
    CHECK(r.sizes() == torch::IntArrayRef({h, w, 3}));
    CHECK((r == 77).all().item<bool>());
  }
  CHECK_THROWS_WITH(owl2::resize_bicubic(img.to(torch::kFloat), 4, 4), Contains("expected a uint8 RGB tensor"));
}

TEST_CASE("preprocessing works on decoded tensors: pad colour, layout and normalization", "[image]") {
  // A wide all-white image padded to a square: the top and bottom bands carry the pad colour exactly.
  ImageConfig cfg;
  cfg.size = 64;
  cfg.mode = ImageMode::kPad;
  const auto white = torch::full({20, 80, 3}, 255, torch::kUInt8);
  const auto t = owl2::preprocess_image(white, cfg);
  REQUIRE(t.sizes() == torch::IntArrayRef({3, 64, 64}));
  for (int c = 0; c < 3; ++c) {
    const double pad = (cfg.pad_color[c] / 255.0 - cfg.mean[c]) / cfg.std[c];
    const double wht = (1.0 - cfg.mean[c]) / cfg.std[c];
    CHECK(t[c][0][0].item<double>() == Approx(pad).margin(1e-5));
    CHECK(t[c][32][10].item<double>() == Approx(wht).margin(1e-5));
  }
  // resize mode stretches: the whole output is white.
  cfg.mode = ImageMode::kResize;
  CHECK((owl2::preprocess_image(white, cfg)[1] - (1.0 - cfg.mean[1]) / cfg.std[1]).abs().max().item<double>() < 1e-5);
  // crop mode keeps the centre: a left/right split image keeps both halves at the centre line.
  auto split = torch::zeros({40, 100, 3}, torch::kUInt8);
  split.index_put_({Slice(), Slice(50, 100)}, 200);
  cfg.mode = ImageMode::kCrop;
  const auto c = owl2::preprocess_image(split, cfg);
  CHECK(c[0][20][5].item<double>() < c[0][20][60].item<double>());
  // preprocess_image_into writes into a slot of a batch.
  auto batch = torch::zeros({2, 3, 64, 64});
  owl2::preprocess_image_into(split, cfg, batch[1]);
  CHECK(batch[1].equal(c));
  CHECK((batch[0] == 0).all().item<bool>());
  CHECK_THROWS_WITH(owl2::preprocess_image_into(split, cfg, torch::zeros({3, 32, 32})), Contains("[3, 64, 64]"));
  CHECK_THROWS_WITH(owl2::preprocess_image_into(split, cfg, batch.transpose(2, 3)[0]), Contains("contiguous"));
  CHECK_THROWS_WITH(owl2::parse_image_mode("stretch"), Contains("expected resize|pad|crop, got 'stretch'"));
}

TEST_CASE("augmentation is seeded: same seed same tensor, crops within bounds, flip mirrors", "[image]") {
  ImageConfig cfg;
  cfg.size = 32;
  owl2::AugmentConfig aug;
  const auto img = torch::randint(0, 256, {60, 90, 3}, torch::kUInt8);
  CHECK(owl2::augment_image(img, cfg, aug, 7).equal(owl2::augment_image(img, cfg, aug, 7)));
  auto slots = torch::zeros({2, 3, 32, 32});
  owl2::augment_image_into(img, cfg, aug, 7, slots[0]);
  CHECK(slots[0].equal(owl2::augment_image(img, cfg, aug, 7)));
  CHECK_FALSE(owl2::augment_image(img, cfg, aug, 7).equal(owl2::augment_image(img, cfg, aug, 8)));
  int flips = 0;
  for (uint64_t s = 0; s < 200; ++s) {
    bool flip = false;
    const auto b = owl2::random_resized_crop_box(60, 90, aug, s, &flip);
    flips += flip;
    CHECK(b.top >= 0);
    CHECK(b.left >= 0);
    CHECK(b.top + b.height <= 60);
    CHECK(b.left + b.width <= 90);
    const double frac = static_cast<double>(b.height * b.width) / (60.0 * 90.0);
    CHECK(frac >= 0.5 - 0.03);
    CHECK(frac <= 1.0);
  }
  CHECK(flips > 70);
  CHECK(flips < 130);
  // Whole-image crop with a certain flip equals the mirrored plain resize.
  owl2::AugmentConfig whole{1.0, 1.0, 1.5, 1.5, 1.0};
  const auto b = owl2::random_resized_crop_box(60, 90, whole, 3);
  CHECK((b.height == 60 && b.width == 90));
  cfg.mode = ImageMode::kResize;
  const auto plain = owl2::preprocess_image(owl2::resize_bicubic(img, 32, 32), cfg);
  CHECK(owl2::augment_image(img, cfg, whole, 3).equal(plain.flip({2})));
}

TEST_CASE("owl2 bench data runs end to end and rejects a bad mode", "[image][cli]") {
  const auto bad = owl2::test::run_owl2("bench data --mode stretch --no-python");
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.out, Contains("expected resize|pad|crop, got 'stretch'"));
  if (!owl2::image_decoding_available()) return;
  const auto r = owl2::test::run_owl2("bench data --no-python --images 3 --threads 2 --size 64 --mode crop");
  INFO(r.out);
  CHECK(r.rc == 0);
  CHECK_THAT(r.out, Contains("JPEG 640x480") && Contains("-> float32 [3, 64, 64], mode crop") &&
                        Contains("owl2 img/cpu-s"));
}

}  // namespace owl2_test_image
