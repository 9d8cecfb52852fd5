// TensorBoard event files: CRC32C and TFRecord framing on known vectors, the writer read back by the tensorboard
// package (scripts/reference/read_tensorboard.py), and `owl2 train` logging every metric of metrics.jsonl at
// every step, the config and the held-out table, across a resume.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "tests/helpers.h"
#include "trainers/tensorboard.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_tensorboard {

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::run_owl2;
using owl2::test::source_path;
using owl2::test::temp_dir;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What the tensorboard package reads from `folder`. With `rc`: its exit status, and its stderr is returned.
json read_events(const std::string& folder, int* rc = nullptr) {
  const std::string out = folder + ".read.json", err = folder + ".read.log";
  const std::string cmd = std::string(OWL2_PYTHON) + " " + source_path("scripts/reference/read_tensorboard.py") + " " +
                          folder + " > " + out + " 2> " + err;
  const int status = std::system(cmd.c_str());
  if (rc) {
    *rc = status;
    return read_text(err);
  }
  INFO(read_text(err));
  REQUIRE(status == 0);
  return json::parse(read_text(out));
}

std::vector<std::string> event_files(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// A value as TensorBoard stores it: float32, NaN as null.
json as_float32(const json& v) {
  if (v.is_null()) return nullptr;
  const double d = v.is_boolean() ? (v.get<bool>() ? 1.0 : 0.0) : v.get<double>();
  return static_cast<double>(static_cast<float>(d));
}

}  // namespace

TEST_CASE("CRC32C and the TFRecord mask on known vectors", "[train][tensorboard]") {
  // RFC 3720 B.4 and the usual check value.
  CHECK(owl2::crc32c("123456789") == 0xE3069283u);
  CHECK(owl2::crc32c("") == 0u);
  CHECK(owl2::crc32c(std::string(32, '\0')) == 0x8A9136AAu);
  CHECK(owl2::crc32c(std::string(32, '\xFF')) == 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) {
    up += static_cast<char>(i);
    down += static_cast<char>(31 - i);
  }
  CHECK(owl2::crc32c(up) == 0x46DD794Eu);
  CHECK(owl2::crc32c(down) == 0x113FDB5Cu);
  // Masked values and a whole record as the tensorboard package computes them.
  CHECK(owl2::masked_crc32c("123456789") == 0xC78AB0E5u);
  CHECK(owl2::masked_crc32c("") == 0xA282EAD8u);
  CHECK(owl2::masked_crc32c("brain.Event:2") == 0x7C0601EEu);
  const std::string record = owl2::tfrecord("abc");
  std::string hex;
  for (const unsigned char c : record) hex += fmt::format("{:02x}", c);
  CHECK(hex == "0300000000000000b099490e6162636e57f121");
}

TEST_CASE("TensorBoard writer: scalars and text read back by the tensorboard package and a damaged record found",
          "[train][tensorboard]") {
  const std::string dir = temp_dir("owl2_tb_writer") + "/run";
  fs::create_directories(dir);
  const std::string text = "| a | b |\n|---|---|\n| \xC3\xBC | 1 |\n" + std::string(200000, 'x');  // a 3-byte length
  std::string first;
  {
    owl2::TensorBoardWriter w(dir, 0);
    first = fs::path(w.path()).filename();
    w.scalars({{"loss", 2.5}, {"lr", 0.1}, {"unknown", NAN}}, 0);
    w.scalars({{"loss", 1.25}}, 3000000000LL);  // past 2^31: a 5-byte varint
    w.text("notes", text, 7);
    // A second writer in the same second gets the next name, which sorts after the first.
    owl2::TensorBoardWriter again(dir, 100);
    CHECK(fs::path(again.path()).filename().string() > first);
  }
  CHECK_THAT(first, Contains("events.out.tfevents."));
  CHECK(first.substr(20, 10).find_first_not_of("0123456789") == std::string::npos);  // 10-digit seconds
  json got = read_events(dir);
  REQUIRE(got["files"].size() == 2);
  CHECK(got["files"][0]["name"] == first);
  CHECK(got["files"][0]["records"] == 5);  // file_version, SessionLog START, 2 x scalars, text
  CHECK(got["files"][0]["file_version"] == "brain.Event:2");
  CHECK(got["files"][0]["session_start"] == 0);
  CHECK(got["files"][1]["records"] == 2);
  CHECK(got["files"][1]["session_start"] == 100);
  // The second file's START at step 100 drops the first file's loss at step 3e9, as for a restarted run.
  CHECK(got["scalars"]["loss"] == json::parse("[[0, 2.5]]"));
  CHECK(got["scalars"]["lr"] == json::array({json::array({0, static_cast<double>(0.1f)})}));
  CHECK(got["scalars"]["unknown"] == json::parse("[[0, null]]"));
  CHECK(got["texts"]["notes"] == json::array({json::array({7, text})}));

  // One changed payload byte fails the record's CRC check.
  const std::string path = dir + "/" + first;
  std::string bytes = read_text(path);
  bytes[bytes.size() - 10] ^= 1;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  int rc = 0;
  const json msg = read_events(dir, &rc);
  CHECK(rc != 0);
  CHECK_THAT(msg.get<std::string>(), Contains("crc"));
}

TEST_CASE(
    "owl2 train writes TensorBoard events: every metric at every step plus config and held-out tables across a resume",
    "[train][cli][tensorboard]") {
  setenv("OMP_NUM_THREADS", "1", 1);  // one intra-op thread per process under CTest's parallel load
  const std::string root = "build/test_tensorboard_train";
  fs::remove_all(root);
  const auto synth =
      run_owl2("data synth --out " + root + "/data --train 24 --heldout 4 --train-text 8 --heldout-text 2");
  REQUIRE(synth.rc == 0);
  std::ofstream(root + "/run.yaml") << "include: " << source_path("configs/model/tiny.yaml") << "\n"
                                    << "model: {decoder: {vocab_size: 1000}}\n"
                                    << "optim: {lr: 2.0e-3, warmup_steps: 2}\n"
                                    << "train: {steps: 6, global_batch_size: 8, micro_batch_size: 4, max_length: 256,"
                                    << " save_every: 2, keep_last: 1}\n"
                                    << "data: {tokenizer: " << source_path("tests/fixtures/tokenizer/tiny_llama.model")
                                    << ", sources: [{path: " << root << "/data/llava_train.json}], num_workers: 1}\n"
                                    << "eval: {heldout: " << root << "/data/heldout.jsonl, every: 2, limit: 4,"
                                    << " max_new_tokens: 3, batch_size: 4}\n";
  const auto train_cmd = [&](const std::string& out) {
    return "train --config " + root + "/run.yaml --set train.out_dir=" + out;
  };
  const std::string dir = root + "/run";
  const std::string train = train_cmd(dir);
  // Three steps, a checkpoint after the second; the rerun resumes there and logs step 2 again.
  const auto stopped = run_owl2(train + " --stop-after 3");
  INFO(stopped.out);
  REQUIRE(stopped.rc == 0);
  CHECK_THAT(stopped.out, Contains("tensorboard: " + dir + "/events.out.tfevents."));
  const auto resumed = run_owl2(train);
  INFO(resumed.out);
  REQUIRE(resumed.rc == 0);
  CHECK_THAT(resumed.out, Contains("at step 2"));
  REQUIRE(event_files(dir).size() == 2);

  // metrics.jsonl: every line, and per step the last one written (a re-run step's second line).
  std::map<int64_t, json> last;
  std::vector<int64_t> logged;
  {
    std::ifstream f(dir + "/metrics.jsonl");
    for (std::string line; std::getline(f, line);) {
      const json j = json::parse(line);
      logged.push_back(j.at("step").get<int64_t>());
      last[logged.back()] = j;
    }
  }
  REQUIRE(logged == std::vector<int64_t>{0, 1, 2, 2, 3, 4, 5});

  json got = read_events(dir);
  REQUIRE(got["files"].size() == 2);
  CHECK(got["files"][0]["session_start"] == 0);
  CHECK(got["files"][1]["session_start"] == 2);
  // Every number of every step's line is a scalar of the same name at that step, and there is nothing else.
  std::map<std::string, json> want;
  for (const auto& [step, j] : last)
    for (const auto& [key, v] : j.items()) {
      if (key == "step") continue;
      if (!want.count(key)) want[key] = json::array();
      want[key].push_back({step, as_float32(v)});
    }
  REQUIRE(want.count("loss"));
  REQUIRE(want.count("eval_short_answer_accuracy"));
  CHECK(want["eval_short_answer_accuracy"].size() == 3);  // after steps 2, 4 and 6 (indices 1, 3, 5)
  std::set<std::string> tags;
  for (const auto& [tag, points] : got["scalars"].items()) tags.insert(tag);
  std::set<std::string> keys;
  for (const auto& [key, points] : want) keys.insert(key);
  CHECK(tags == keys);
  for (const auto& [key, points] : want) {
    INFO(key);
    CHECK(got["scalars"][key] == points);
  }
  // The re-run step 2 is there once, with the timing of the resumed run's line.
  CHECK(got["scalars"]["step_seconds"][2] == json::array({2, as_float32(last[2]["step_seconds"])}));

  // The resolved config of each invocation, at the step it started from.
  const std::string config = "```yaml\n" + read_text(dir + "/config.yaml") + "```\n";
  CHECK(got["texts"]["config"] == json::array({json::array({0, config}), json::array({2, config})}));
  // The held-out table at each evaluation step, with the accuracies of that step's line.
  json& tables = got["texts"]["eval/heldout"];
  REQUIRE(tables.size() == 3);
  for (const auto& entry : tables) {
    const int64_t step = entry[0].get<int64_t>();
    const std::string table = entry[1].get<std::string>();
    INFO(table);
    CHECK_THAT(table, Contains("| question type | questions | accuracy |"));
    for (const auto& [key, v] : last.at(step).items()) {
      if (key.rfind("eval_", 0) != 0 || key == "eval_short_answer_accuracy" || key == "eval_caption_cider") continue;
      CHECK_THAT(table, Contains(fmt::format("| {} | ", key.substr(5))) &&
                            Contains(fmt::format(" | {:.1f}% |", 100 * v.get<double>())));
    }
    CHECK_THAT(table, Contains(fmt::format("| short answers | | {:.1f}% |",
                                           100 * last.at(step)["eval_short_answer_accuracy"].get<double>())));
  }

  // train.tensorboard: false writes none.
  const std::string off = root + "/off";
  const auto quiet = run_owl2(train_cmd(off) + " --set train.tensorboard=false --stop-after 1");
  INFO(quiet.out);
  REQUIRE(quiet.rc == 0);
  CHECK(event_files(off).empty());
  CHECK(fs::exists(off + "/metrics.jsonl"));
}

}  // namespace owl2_test_tensorboard
