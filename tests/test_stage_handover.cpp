// Stage hand-over through `owl2 train`: the final weights of a stage-1 run at the small image size start a
// stage-2 run at twice the size through its `init:` section; the ViT position table is interpolated
// (checked against torch's bicubic F.interpolate, scripts/reference/interpolate_positions.py) and the
// abstractor's 2D position grid is rebuilt for the new patch grid.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "owl2/io/safetensors.h"
#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_stage_handover {

using Catch::Matchers::Contains;
using owl2::test::run_owl2;
using owl2::test::source_path;

TEST_CASE("a stage-1 run at 16 px starts a 32 px stage-2 run through init with interpolated ViT positions",
          "[train][cli][checkpoint]") {
  const std::string root = owl2::test::temp_dir("owl2_handover");
  REQUIRE(run_owl2("data synth --out " + root + "/data --train 24 --heldout 2 --train-text 8 --heldout-text 2").rc == 0);
  REQUIRE(run_owl2("tokenizer train --text " + root + "/data/corpus.txt --vocab-size 256 --out " + root + "/tok").rc == 0);
  const std::string common = "optim: {lr: 2.0e-3, warmup_steps: 1}\n"
                             "data: {tokenizer: " + root + "/tok.model, sources: [{path: " + root +
                             "/data/llava_train.json}], num_workers: 1}\n";
  // Stage 1 (the paper's freezing, spec §4.1): 16 px images, a 4x4 patch grid; the ViT learns its positions.
  std::ofstream(root + "/stage1.yaml")
      << "include: " << source_path("configs/model/tiny.yaml") << "\n"
      << "model: {vision: {image_size: 16}, abstractor: {grid_size: 4}}\n" << common
      << "train: {steps: 2, global_batch_size: 4, micro_batch_size: 4, max_length: 256, out_dir: " << root << "/s1}\n"
      << "freeze:\n"
      << "  - {pattern: 'model.vision_model.*', trainable: true}\n"
      << "  - {pattern: 'model.visual_abstractor.*', trainable: true}\n"
      << "  - {pattern: 'model.layers.*.multiway.1.*', trainable: true}\n"
      << "  - {pattern: '*', trainable: false}\n";
  auto s1 = run_owl2("train --config " + root + "/stage1.yaml");
  INFO(s1.out);
  REQUIRE(s1.rc == 0);
  const std::string key = "model.vision_model.embeddings.position_embedding";
  const auto pos16 = owl2::SafetensorsFile(root + "/s1/final/model.safetensors").get_copy(key);
  REQUIRE(pos16.sizes() == torch::IntArrayRef({1, 17, 64}));

  // Stage 2: 32 px (8x8 grid), everything trainable except the position table, which therefore still holds
  // exactly what init loaded when the run ends.
  std::ofstream(root + "/stage2.yaml")
      << "include: " << source_path("configs/model/tiny.yaml") << "\n" << common
      << "init: {from: " << root << "/s1/final}\n"
      << "train: {steps: 2, global_batch_size: 4, micro_batch_size: 4, max_length: 256, out_dir: " << root << "/s2}\n"
      << "freeze:\n"
      << "  - {pattern: 'model.vision_model.embeddings.position_embedding', trainable: false}\n"
      << "  - {pattern: '*', trainable: true}\n";
  auto s2 = run_owl2("train --config " + root + "/stage2.yaml");
  INFO(s2.out);
  REQUIRE(s2.rc == 0);
  CHECK_THAT(s2.out, Contains("ViT positions interpolated from a 4x4 to a 8x8 grid"));
  std::ifstream metrics(root + "/s2/metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(metrics, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    CHECK(std::isfinite(j.at("loss").get<double>()));  // the 8x8 abstractor grid ran forward and backward
    CHECK_FALSE(j.at("skipped_step").get<bool>());
    ++steps;
  }
  CHECK(steps == 2);

  // The loaded table against torch's bicubic interpolation of the stage-1 table.
  const auto pos32 = owl2::SafetensorsFile(root + "/s2/final/model.safetensors").get_copy(key);
  REQUIRE(pos32.sizes() == torch::IntArrayRef({1, 65, 64}));
  const std::string cmd = std::string(OWL2_PYTHON) + " " + source_path("scripts/reference/interpolate_positions.py") +
                          " " + root + "/s1/final/model.safetensors " + key + " 8 " + root + "/expected.safetensors";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto expected = owl2::SafetensorsFile(root + "/expected.safetensors").get_copy("expected");
  CHECK((pos32 - expected).abs().max().item<double>() < 1e-6);
  CHECK(torch::equal(pos32.select(1, 0), pos16.select(1, 0)));  // the class row is kept as is
  // Not a nearest-neighbour copy: interpolation creates new values.
  CHECK_FALSE(torch::equal(pos32.slice(1, 1, 2), pos16.slice(1, 1, 2)));
}

}  // namespace owl2_test_stage_handover
