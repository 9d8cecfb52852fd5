// owl2 train end to end on a small synthetic set: exact resume after a stop and after SIGKILL, and the
// errors a user meets first.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "tests/helpers.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_train_cli {

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::run_owl2;
using owl2::test::source_path;
namespace fs = std::filesystem;

namespace {

// Each test case has its own folder: CTest runs them in parallel processes.
std::string kRoot;

// A small dataset and tokenizer under build/test_train_<name>.
void prepare(const std::string& name) {
  kRoot = "build/test_train_" + name;
  fs::remove_all(kRoot);
  auto synth = run_owl2("data synth --out " + kRoot + "/data --train 48 --heldout 4 --train-text 16 --heldout-text 4");
  REQUIRE(synth.rc == 0);
  auto tok = run_owl2("tokenizer train --text " + kRoot + "/data/corpus.txt --vocab-size 256 --out " + kRoot + "/tok");
  INFO(tok.out);
  REQUIRE(tok.rc == 0);
  std::ofstream(kRoot + "/run.yaml") << "include: " << source_path("configs/model/tiny.yaml") << "\n"
                                     << "optim: {lr: 2.0e-3, warmup_steps: 2}\n"
                                     << "train: {steps: 6, global_batch_size: 8, micro_batch_size: 4, max_length: 256,"
                                     << " save_every: 1, keep_last: 2}\n"
                                     << "data: {tokenizer: " << kRoot << "/tok.model, sources: [{path: " << kRoot
                                     << "/data/llava_train.json}], num_workers: 2}\n";
}

std::string train_cmd(const std::string& out, const std::string& extra = "") {
  return "train --config " + kRoot + "/run.yaml --set train.out_dir=" + out + " " + extra;
}

// step -> loss; a re-run step (after a resume) keeps its last value.
std::map<int64_t, double> losses(const std::string& run) {
  std::map<int64_t, double> out;
  std::ifstream f(run + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
  }
  return out;
}

}  // namespace

TEST_CASE("owl2 train resumes bit-identically after a stop and after SIGKILL", "[train][cli][slow]") {
  prepare("resume");
  const auto full_dir = kRoot + "/full";
  fs::remove_all(full_dir);
  auto full = run_owl2(train_cmd(full_dir));
  INFO(full.out);
  REQUIRE(full.rc == 0);
  // train.device: auto trains on the CPU where there is no GPU, in a CPU and in a CUDA build alike.
  if (!torch::cuda::is_available()) CHECK_THAT(full.out, Contains("device: cpu"));
  const auto reference = losses(full_dir);
  REQUIRE(reference.size() == 6);
  REQUIRE(fs::exists(full_dir + "/final/model.safetensors"));

  // Stop after 3 steps, then run again: the rest continues from the checkpoint at step 3.
  const auto stop_dir = kRoot + "/stop";
  fs::remove_all(stop_dir);
  REQUIRE(run_owl2(train_cmd(stop_dir, "--stop-after 3")).rc == 0);
  CHECK(losses(stop_dir).size() == 3);
  auto resumed = run_owl2(train_cmd(stop_dir));
  INFO(resumed.out);
  REQUIRE(resumed.rc == 0);
  CHECK_THAT(resumed.out, Contains("resumed from") && Contains("at step 3"));
  CHECK(losses(stop_dir) == reference);

  // SIGKILL at some moment after the second step, wherever the process is (even inside a save).
  const auto kill_dir = kRoot + "/kill";
  fs::remove_all(kill_dir);
  const std::string cmd = std::string(OWL2_BINARY) + " " + train_cmd(kill_dir) + " > " + kRoot + "/kill.log 2>&1";
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 2000 && losses(kill_dir).size() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  auto after = run_owl2(train_cmd(kill_dir));
  INFO(after.out);
  REQUIRE(after.rc == 0);
  CHECK(losses(kill_dir) == reference);
}

TEST_CASE("owl2 train on the CPU: no mfu in the metrics and checkpoints hold the position of the batches trained on",
          "[train][cli]") {
  prepare("cpu_metrics");
  const auto dir = kRoot + "/run";
  auto one = run_owl2(train_cmd(dir, "--stop-after 1"));
  INFO(one.out);
  REQUIRE(one.rc == 0);
  std::ifstream f(dir + "/metrics.jsonl");
  std::string line;
  REQUIRE(std::getline(f, line));
  const auto j = nlohmann::json::parse(line);
  CHECK(j.contains("step_seconds"));
  CHECK(j.contains("tflops_per_s"));
  CHECK_FALSE(j.contains("mfu"));  // no known peak on the CPU: absent, not 0
  CHECK_FALSE(j.contains("device_peak_memory_bytes"));
  CHECK(j.at("peak_memory_bytes").get<int64_t>() > 0);
  // One step of 2 micro-batches (global 8 = 2 x micro 4): the prefetcher had already loaded the next two.
  const auto state = nlohmann::json::parse(read_text(dir + "/checkpoints/step-000000001/state.json"));
  CHECK(state.at("data_position").at("epoch").get<int64_t>() == 0);
  CHECK(state.at("data_position").at("position").get<int64_t>() == 2);
}

TEST_CASE("owl2 train: a freeze rule that matches nothing and a resume with another model shape are named", "[train][cli]") {
  prepare("errors");
  auto bad_rule = run_owl2(train_cmd(kRoot + "/rule", "--no-resume --set 'freeze=[{pattern: \"model.nothing.*\"}, {pattern: \"*\"}]'"));
  CHECK(bad_rule.rc == 2);
  CHECK_THAT(bad_rule.out, Contains("freeze[0]: pattern 'model.nothing.*' matches no parameter"));

  const auto dir = kRoot + "/shape";
  fs::remove_all(dir);
  REQUIRE(run_owl2(train_cmd(dir, "--stop-after 1")).rc == 0);
  auto other = run_owl2(train_cmd(dir, "--set model.decoder.intermediate_size=320"));
  CHECK(other.rc == 1);
  CHECK_THAT(other.out, Contains("cannot resume from") && Contains("does not match this config") &&
                            Contains("model.layers.0.mlp.gate_proj.weight"));

  auto no_tok = run_owl2(train_cmd(kRoot + "/notok", "--no-resume --set data.tokenizer=" + kRoot + "/missing.model"));
  CHECK(no_tok.rc == 1);
  CHECK_THAT(no_tok.out, Contains("missing.model"));
  auto fp16 = run_owl2(train_cmd(kRoot + "/fp16", "--no-resume --set train.precision=fp16"));
  CHECK(fp16.rc == 2);
  CHECK_THAT(fp16.out, Contains("train.precision: expected one of fp32|bf16|bf16-autocast, got 'fp16'"));
  auto tpu = run_owl2(train_cmd(kRoot + "/tpu", "--no-resume --set train.device=tpu"));
  CHECK(tpu.rc == 2);
  CHECK_THAT(tpu.out, Contains("train.device: expected one of auto|cpu|cuda, got 'tpu'"));
  if (!torch::cuda::is_available()) {  // a machine without a GPU (any build): cuda is refused before any work
    auto cuda = run_owl2(train_cmd(kRoot + "/cuda", "--no-resume --set train.device=cuda"));
    CHECK(cuda.rc == 2);
    CHECK_THAT(cuda.out, Contains("train.device: cuda was asked for, but"));
    CHECK_FALSE(fs::exists(kRoot + "/cuda/metrics.jsonl"));
  }
}

TEST_CASE("owl2 eval gives the same answers at any batch size, owl2 generate answers one prompt", "[train][cli][generate]") {
  prepare("generate");
  const auto dir = kRoot + "/run";
  auto trained = run_owl2(train_cmd(dir, "--set train.steps=3"));
  INFO(trained.out);
  REQUIRE(trained.rc == 0);
  const std::string model = dir + "/final";
  const std::string heldout = kRoot + "/data/heldout.jsonl";
  auto one = run_owl2("eval --model " + model + " --heldout " + heldout + " --limit 12 --max-new-tokens 4 --batch-size 1 --predictions " + kRoot + "/p1.jsonl");
  auto many = run_owl2("eval --model " + model + " --heldout " + heldout + " --limit 12 --max-new-tokens 4 --batch-size 5 --predictions " + kRoot + "/p5.jsonl");
  INFO(one.out);
  REQUIRE(one.rc == 0);
  REQUIRE(many.rc == 0);
  const auto p1 = read_text(kRoot + "/p1.jsonl");
  CHECK(std::count(p1.begin(), p1.end(), '\n') == 12);
  CHECK(p1 == read_text(kRoot + "/p5.jsonl"));  // left padding gives each question its own positions and mask

  // A held-out image that does not decode: that question is answered as empty (and reported), the others as
  // before. One that is missing is an error before anything runs, naming the file, the line and the image.
  std::vector<nlohmann::json> qs;
  {
    std::ifstream f(heldout);
    for (std::string line; std::getline(f, line) && qs.size() < 12;) qs.push_back(nlohmann::json::parse(line));
  }
  size_t bad = 0;
  while (!qs[bad].contains("image")) ++bad;
  const std::string broken = kRoot + "/data/broken.png";
  std::ofstream(broken) << "not a png";
  auto write_set = [&](const std::string& path, const std::string& image) {
    std::ofstream out(path);
    for (size_t i = 0; i < qs.size(); ++i) {
      auto q = qs[i];
      if (i == bad) q["image"] = image;
      out << q.dump() << "\n";
    }
  };
  write_set(kRoot + "/data/heldout_broken.jsonl", "broken.png");
  auto with_broken = run_owl2("eval --model " + model + " --heldout " + kRoot +
                              "/data/heldout_broken.jsonl --max-new-tokens 4 --batch-size 5 --predictions " + kRoot +
                              "/pb.jsonl");
  INFO(with_broken.out);
  REQUIRE(with_broken.rc == 0);
  CHECK_THAT(with_broken.out, Contains(fmt::format("held-out question {}: unreadable image, answered as empty",
                                                   qs[bad].at("question_id").get<int64_t>())));
  std::istringstream a(p1), b(read_text(kRoot + "/pb.jsonl"));
  std::string la, lb;
  for (size_t i = 0; std::getline(a, la) && std::getline(b, lb); ++i) {
    INFO("question " << i);
    if (i == bad) CHECK(nlohmann::json::parse(lb).at("prediction") == "");
    else CHECK(lb == la);
  }
  write_set(kRoot + "/data/heldout_missing.jsonl", "nowhere.png");
  auto with_missing = run_owl2("eval --model " + model + " --heldout " + kRoot + "/data/heldout_missing.jsonl");
  CHECK(with_missing.rc != 0);
  CHECK_THAT(with_missing.out, Contains(fmt::format("heldout_missing.jsonl:{}: question {}: no image file", bad + 1,
                                                    qs[bad].at("question_id").get<int64_t>())) &&
                                   Contains("nowhere.png"));

  auto gen = run_owl2("generate --model " + model + " --prompt 'What color is the circle?' --max-new-tokens 3 --image " +
                      kRoot + "/data/images/heldout/000000.png");
  INFO(gen.out);
  CHECK(gen.rc == 0);
  auto on_cpu = run_owl2("generate --model " + model + " --prompt 'What color is the circle?' --max-new-tokens 3 --image " +
                         kRoot + "/data/images/heldout/000000.png --device cpu");
  CHECK(on_cpu.rc == 0);
  CHECK(on_cpu.out == gen.out);
  auto bad_device = run_owl2("eval --model " + model + " --heldout " + heldout + " --device tpu");
  CHECK(bad_device.rc == 2);
  CHECK_THAT(bad_device.out, Contains("--device: 'tpu' is not a device"));
  if (!torch::cuda::is_available()) {
    auto cuda = run_owl2("generate --model " + model + " --prompt hi --device cuda:0");
    CHECK(cuda.rc == 2);
    CHECK_THAT(cuda.out, Contains("--device: cuda was asked for, but"));
  }
  auto missing = run_owl2("generate --model " + model + " --prompt hi --image " + kRoot + "/nope.png");
  CHECK(missing.rc == 1);
  CHECK_THAT(missing.out, Contains("nope.png"));
  auto not_model = run_owl2("eval --model " + kRoot + " --heldout " + heldout);
  CHECK(not_model.rc == 2);
  CHECK_THAT(not_model.out, Contains("not a model directory"));
}

TEST_CASE("a trained model folder carries its tokenizer: moved, it generates without reading outside it",
          "[train][cli][generate]") {
  prepare("moved");
  auto trained = run_owl2(train_cmd(kRoot + "/run", "--set train.steps=1"));
  INFO(trained.out);
  REQUIRE(trained.rc == 0);
  const std::string tok = kRoot + "/tok.model";
  CHECK_THAT(read_text(kRoot + "/run/final/config.yaml"), Contains("tokenizer: tokenizer.model"));
  CHECK(read_text(kRoot + "/run/final/tokenizer.model") == read_text(tok));
  // Move the folder and take the original tokenizer away: a read outside the folder would fail.
  fs::create_directories(kRoot + "/shared");
  fs::rename(kRoot + "/run/final", kRoot + "/shared/model");
  fs::rename(tok, kRoot + "/tok.away");
  const std::string model = kRoot + "/shared/model";
  const std::string ask = " --prompt 'What color is the circle?' --max-new-tokens 3 --image " + kRoot +
                          "/data/images/heldout/000000.png";
  auto moved = run_owl2("generate --model " + model + ask);
  INFO(moved.out);
  CHECK(moved.rc == 0);

  // The layout older versions wrote, an absolute data.tokenizer elsewhere: refused by file and key, then allowed.
  fs::rename(kRoot + "/tok.away", tok);
  std::string yaml = read_text(model + "/config.yaml");
  const std::string key = "tokenizer: tokenizer.model";
  yaml.replace(yaml.find(key), key.size(), "tokenizer: " + fs::absolute(tok).string());
  std::ofstream(model + "/config.yaml") << yaml;
  auto refused = run_owl2("generate --model " + model + ask);
  CHECK(refused.rc == 2);
  CHECK_THAT(refused.out, Contains(model + "/config.yaml: data.tokenizer '" + fs::absolute(tok).string() +
                                   "' is outside the model folder " + model) &&
                              Contains("The folder has its own tokenizer.model") &&
                              Contains("--allow-external-tokenizer"));
  auto allowed = run_owl2("generate --model " + model + ask + " --allow-external-tokenizer");
  CHECK(allowed.rc == 0);
  CHECK(allowed.out == moved.out);
}

}  // namespace owl2_test_train_cli
