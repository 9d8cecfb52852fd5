// Data parallelism on c10d/Gloo under torchrun: 2 ranks x B equals 1 rank x 2B; a stalled rank is named.
#include <catch2/catch.hpp>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "tests/helpers.h"
#include "tests/toy_lm.h"
#include "trainers/trainer.h"

using Catch::Matchers::Contains;
using namespace owl2;
using namespace owl2::test;

namespace {

constexpr int kSteps = 4;

// Global batch of step s: 4 rows with uneven supervision; rank r of w takes rows [r*4/w, (r+1)*4/w) as one
// micro-batch per row (so accumulation and communication are both exercised).
std::vector<Batch> shard(int64_t step, int64_t rank, int64_t world) {
  Batch global = make_batch(4, 6, 100 + step, /*masked=*/step % 3);
  std::vector<Batch> out;
  for (int64_t row = rank * 4 / world; row < (rank + 1) * 4 / world; ++row) {
    Batch b;
    b.input_ids = global.input_ids.slice(0, row, row + 1);
    b.labels = global.labels.slice(0, row, row + 1).clone();
    if (row == 1) b.labels.fill_(-100).index_put_({0, 2}, 3);  // a nearly unsupervised row
    b.attention_mask = global.attention_mask.slice(0, row, row + 1);
    b.samples = 1;
    out.push_back(b);
  }
  return out;
}

std::vector<torch::Tensor> train(int64_t rank, int64_t world, std::shared_ptr<Comm> comm, int stall_rank = -1) {
  auto m = std::make_shared<ToyLM>(/*dropout=*/0.0);
  if (rank != 0) {  // rank 0's weights must win through the broadcast
    torch::NoGradGuard g;
    for (auto& p : m->parameters()) p.add_(1.0);
  }
  Trainer t(*m, [&](const Batch& b) { return m->loss_sum(b); }, toy_config(), comm);
  for (int s = 0; s < kSteps; ++s) {
    if (rank == stall_rank && s == 2) std::this_thread::sleep_for(std::chrono::seconds(30));
    t.step(shard(s, rank, world));
  }
  std::vector<torch::Tensor> out;
  for (auto& p : m->parameters()) out.push_back(p.detach().clone());
  return out;
}

std::string torchrun() {
  std::string py = OWL2_PYTHON;
  return py.substr(0, py.rfind('/')) + "/torchrun";
}

}  // namespace

// Runs under torchrun (see the tests below); hidden from the default run.
TEST_CASE("dp worker", "[.dp-worker]") {
  const auto env = DistEnv::from_environment();
  const char* timeout = std::getenv("OWL2_TEST_TIMEOUT_S");
  auto comm = std::make_shared<Comm>(env, std::chrono::seconds(timeout ? std::atoi(timeout) : 60), false);
  const char* stall = std::getenv("OWL2_TEST_STALL_RANK");
  const auto params = train(env.rank, env.world_size, comm, stall ? std::atoi(stall) : -1);
  const std::string out = std::string(std::getenv("OWL2_TEST_OUT")) + "." + std::to_string(env.rank);
  const auto bytes = torch::pickle_save(c10::IValue(c10::List<torch::Tensor>(params)));
  std::ofstream(out, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST_CASE("environment: torchrun and Slurm variables, with clear errors", "[dist]") {
  setenv("WORLD_SIZE", "4", 1);
  setenv("RANK", "3", 1);
  setenv("LOCAL_RANK", "1", 1);
  setenv("MASTER_ADDR", "10.1.2.3", 1);
  setenv("MASTER_PORT", "1234", 1);
  auto e = DistEnv::from_environment();
  CHECK(e.rank == 3);
  CHECK(e.world_size == 4);
  CHECK(e.local_rank == 1);
  CHECK(e.master_addr == "10.1.2.3");
  CHECK(e.master_port == 1234);
  setenv("RANK", "4", 1);
  REQUIRE_THROWS_WITH(DistEnv::from_environment(), Contains("RANK 4 is outside [0, WORLD_SIZE = 4)"));
  setenv("RANK", "x", 1);
  REQUIRE_THROWS_WITH(DistEnv::from_environment(), Contains("RANK='x' is not an integer"));
  for (const char* v : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(v);
  setenv("SLURM_NTASKS", "2", 1);
  setenv("SLURM_PROCID", "1", 1);
  setenv("SLURM_LOCALID", "0", 1);
  setenv("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.9", 1);
  e = DistEnv::from_environment();
  CHECK(e.rank == 1);
  CHECK(e.world_size == 2);
  CHECK(e.master_addr == "10.0.0.9");
  for (const char* v : {"SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_LAUNCH_NODE_IPADDR"}) unsetenv(v);
  e = DistEnv::from_environment();
  CHECK(e.world_size == 1);
}

TEST_CASE("2 ranks x batch B under torchrun equal 1 rank x batch 2B", "[dist][slow]") {
  const auto reference = train(0, 1, nullptr);
  const std::string out = "build/test_dp_params";
  const std::string bin = OWL2_BINARY;
  const std::string tests_bin = bin.substr(0, bin.rfind('/')) + "/owl2_tests";
  const std::string run = "OWL2_TEST_OUT=" + out + " " + torchrun() + " --standalone --nproc-per-node 2 --no-python " +
                          tests_bin + " '[.dp-worker]' > " + out + ".log 2>&1";
  INFO(run);
  const int rc = std::system(run.c_str());
  INFO(read_text(out + ".log"));
  REQUIRE(rc == 0);
  for (int r = 0; r < 2; ++r) {
    const std::string data = read_text(out + "." + std::to_string(r));
    auto params = torch::pickle_load(std::vector<char>(data.begin(), data.end())).toTensorList().vec();
    REQUIRE(params.size() == reference.size());
    for (size_t i = 0; i < params.size(); ++i) {
      CHECK((params[i] - reference[i]).abs().max().item<double>() < 1e-10);
    }
  }
}

TEST_CASE("a stalled rank makes the others fail within the timeout, naming it", "[dist][slow]") {
  const std::string bin = OWL2_BINARY;
  const std::string tests_bin = bin.substr(0, bin.rfind('/')) + "/owl2_tests";
  const std::string out = "build/test_dp_stall";
  const std::string run = "OWL2_TEST_OUT=" + out + " OWL2_TEST_STALL_RANK=1 OWL2_TEST_TIMEOUT_S=3 timeout 60 " +
                          torchrun() + " --standalone --nproc-per-node 2 --no-python " + tests_bin +
                          " '[.dp-worker]' > " + out + ".log 2>&1";
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = std::system(run.c_str());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string log = read_text(out + ".log");
  INFO(log);
  CHECK(rc != 0);
  CHECK(secs < 30);  // the stalled rank sleeps 30 s; the failure must come from the 3 s timeout
  CHECK_THAT(log, Contains("rank 0 of 2, step 2: collective") && Contains("rank 1 is behind, at step 1"));
}
