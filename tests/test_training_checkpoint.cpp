// Training checkpoints: round trip, pruning, skipping corrupt ones, SIGKILL at every stage and at random
// times during saves, several ranks writing one checkpoint, RNG restore, and AdamW resume equal to an uninterrupted run.
#include <catch2/catch.hpp>

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "owl2/io/fileio.h"
#include "tests/helpers.h"
#include "trainers/checkpoint.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_training_checkpoint {

using Catch::Matchers::Contains;
using owl2::CheckpointManager;
using owl2::TrainingCheckpoint;

namespace {

// Temporary directories, removed when the test process exits (forked children _exit and leave them alone).
std::string temp_dir() { return owl2::test::temp_dir("owl2_train_ckpt"); }

// Everything in the checkpoint of step s is a function of s, so a resumed one can be checked for consistency.
TrainingCheckpoint make_checkpoint(int64_t s) {
  TrainingCheckpoint ck;
  ck.step = s;
  ck.tensors["model"] = {{"w", torch::full({4096}, float(s))}, {"count", torch::full({3}, s, torch::kInt64)}};
  ck.tensors["optimizer"] = {{"w.exp_avg", torch::full({4096}, float(2 * s))}};
  ck.tensors["rng"] = owl2::capture_rng_states();
  ck.scheduler = {{"step", s}, {"lr", 0.5 * double(s)}};
  ck.data_position = {{"epoch", 0}, {"index", 10 * s}};
  ck.config_text = "train:\n  seed: 1\n";
  return ck;
}

void check_consistent(const TrainingCheckpoint& ck) {
  const int64_t s = ck.step;
  INFO("step " << s);
  REQUIRE(ck.tensors.count("model"));
  const auto& model = ck.tensors.at("model");
  REQUIRE(model.size() == 2);
  CHECK(model[0].first == "count");
  CHECK(torch::equal(model[0].second, torch::full({3}, s, torch::kInt64)));
  CHECK(torch::equal(model[1].second, torch::full({4096}, float(s))));
  CHECK(torch::equal(ck.tensors.at("optimizer")[0].second, torch::full({4096}, float(2 * s))));
  CHECK(ck.scheduler["step"] == s);
  CHECK(ck.data_position["index"] == 10 * s);
  CHECK(ck.config_text == "train:\n  seed: 1\n");
}

// A barrier for writer threads that stands in for the ranks' collective; a rank that leaves (abandon) or
// a 5 s wait breaks it for everyone, as a collective timeout would.
struct ThreadBarrier {
  explicit ThreadBarrier(int n) : n(n) {}
  void wait(const std::string& what) {
    std::unique_lock<std::mutex> lock(m);
    const int g = generation;
    if (++count == n) {
      count = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    if (!cv.wait_for(lock, std::chrono::seconds(5), [&] { return generation != g || broken; }) || broken) {
      broken = true;
      cv.notify_all();
      throw std::runtime_error("barrier '" + what + "' broken: a rank is gone");
    }
  }
  void abandon() {
    std::lock_guard<std::mutex> lock(m);
    broken = true;
    cv.notify_all();
  }
  std::mutex m;
  std::condition_variable cv;
  int n, count = 0, generation = 0;
  bool broken = false;
};

// Two writer threads save step s together: rank 0 the shared groups, each rank its optimizer shard (all
// values r + s). Returns what each rank's save threw ("" if nothing). `rank1_stage`: rank 1 throws there.
std::vector<std::string> save_two_ranks(const std::string& root, int64_t s, const std::string& rank1_stage = "") {
  ThreadBarrier barrier(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int64_t r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      CheckpointManager mgr(root, 2);
      if (r == 1 && !rank1_stage.empty()) {
        mgr.on_stage = [&](const std::string& st) {
          if (st == rank1_stage) throw std::runtime_error("rank 1 dies at " + st);
        };
      }
      TrainingCheckpoint ck = r == 0 ? make_checkpoint(s) : TrainingCheckpoint{};
      ck.step = s;
      ck.rank_tensors[fmt::format("optimizer.rank-{:05d}", r)] = {{"exp_avg", torch::full({100}, float(r + s))}};
      try {
        mgr.save(ck, owl2::SaveGroup{r, 2, [&](const std::string& what) { barrier.wait(what); }});
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
        barrier.abandon();
      }
    });
  }
  for (auto& t : ranks) t.join();
  return errors;
}

// Runs `body` in a child process; returns its wait status.
template <typename F>
int run_child(F body, std::function<void(pid_t)> while_running = {}) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    try {
      body();
    } catch (...) {
      _exit(3);
    }
    _exit(0);
  }
  if (while_running) while_running(pid);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

void flip_byte(const std::string& path, long at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c;
  f.read(&c, 1);
  c = char(c ^ 0x5A);
  f.seekp(at);
  f.write(&c, 1);
}

}  // namespace

TEST_CASE("training checkpoints round trip and keep the last K with latest naming the newest", "[checkpoint]") {
  const auto root = temp_dir();
  CheckpointManager mgr(root, 2);
  for (int64_t s = 1; s <= 5; ++s) mgr.save(make_checkpoint(s));
  CHECK(mgr.complete_checkpoints() == std::vector<std::string>{"step-000000004", "step-000000005"});
  CHECK(mgr.latest() == "step-000000005");
  const auto r = mgr.resume();
  REQUIRE(r.checkpoint);
  CHECK(r.checkpoint->step == 5);
  CHECK(r.skipped.empty());
  check_consistent(*r.checkpoint);
  CHECK(r.dir == root + "/step-000000005");
  CHECK_THAT(r.summary(), Contains("resuming from " + root + "/step-000000005 (step 5)"));

  // Saving an existing step again replaces it.
  mgr.save(make_checkpoint(5));
  CHECK(mgr.resume().checkpoint->step == 5);
  REQUIRE_THROWS_WITH(CheckpointManager(root, 0), Contains("keep_last must be >= 1"));
}

TEST_CASE("resume skips corrupt and incomplete checkpoints and says why", "[checkpoint]") {
  const auto root = temp_dir();
  CheckpointManager mgr(root, 10);
  for (int64_t s = 1; s <= 4; ++s) mgr.save(make_checkpoint(s));
  flip_byte(root + "/step-000000004/model.safetensors", 200);          // bit rot in the data
  ::unlink((root + "/step-000000003/state.json").c_str());             // killed before the manifest
  {
    std::ofstream f(root + "/step-000000002/state.json");
    f << R"({"format_version": 99, "step": 2, "files": {}})";
  }
  ::mkdir((root + "/.tmp-step-000000005-1").c_str(), 0755);             // killed mid-save
  const auto r = mgr.resume();
  REQUIRE(r.checkpoint);
  CHECK(r.checkpoint->step == 1);
  check_consistent(*r.checkpoint);
  REQUIRE(r.skipped.size() == 4);
  CHECK(r.skipped[0].reason == "incomplete save (temporary directory)");
  CHECK_THAT(r.skipped[1].reason, Contains("model.safetensors checksum mismatch"));
  CHECK(r.skipped[1].dir == root + "/step-000000004");
  CHECK_THAT(r.skipped[2].reason, Contains("missing state.json"));
  CHECK_THAT(r.skipped[3].reason, Contains("format_version 99 is not the supported 1"));
  CHECK_THAT(r.summary(), Contains("skipped " + root + "/step-000000003: missing state.json"));

  // A truncated file is caught by its size even without checksums.
  ::truncate((root + "/step-000000004/model.safetensors").c_str(), 100);
  const auto fast = mgr.resume(false);
  REQUIRE(fast.checkpoint);
  CHECK(fast.checkpoint->step == 1);
  CHECK_THAT(fast.skipped[1].reason, Contains("model.safetensors has 100 bytes, the manifest says"));
}

TEST_CASE("SIGKILL at every stage of a save leaves the newest completed checkpoint resumable", "[checkpoint]") {
  const std::vector<std::string> stages = {"begin", "file:model", "file:optimizer", "file:rng", "state.json",
                                           "synced", "renamed", "latest", "pruned"};
  const int per_save = int(stages.size()), saves = 3;
  for (int kill_at = 1; kill_at <= per_save * saves; ++kill_at) {
    INFO("killed at hook " << kill_at << " (" << stages[(kill_at - 1) % per_save] << " of save "
                           << (kill_at - 1) / per_save + 1 << ")");
    const auto root = temp_dir();
    const int status = run_child([&] {
      CheckpointManager mgr(root, 2);
      int count = 0;
      mgr.on_stage = [&](const std::string&) {
        if (++count == kill_at) raise(SIGKILL);
      };
      for (int64_t s = 1; s <= saves; ++s) mgr.save(make_checkpoint(s));
    });
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGKILL);
    // The checkpoint of save s is durable once its rename ran (hook 7 of that save).
    const int64_t expected = (kill_at + per_save - 7) / per_save;
    CheckpointManager mgr(root, 2);
    const auto r = mgr.resume();
    if (expected == 0) {
      CHECK_FALSE(r.checkpoint);
    } else {
      REQUIRE(r.checkpoint);
      CHECK(r.checkpoint->step == expected);
      check_consistent(*r.checkpoint);
    }
    if (!mgr.latest().empty()) CHECK(CheckpointManager::validate(root + "/" + mgr.latest()).empty());
    // The next run cleans up and carries on.
    mgr.save(make_checkpoint(expected + 1));
    CHECK(mgr.resume().checkpoint->step == expected + 1);
  }
}

TEST_CASE("SIGKILL at random moments of a slow writer never loses the last complete checkpoint", "[checkpoint]") {
  const auto root = temp_dir();
  // Kill times spread over a few save durations, measured here (fsync speed varies by disk).
  const auto t0 = std::chrono::steady_clock::now();
  {
    CheckpointManager probe(temp_dir(), 1);
    probe.on_stage = [](const std::string&) { std::this_thread::sleep_for(std::chrono::microseconds(700)); };
    for (int64_t s = 1; s <= 3; ++s) probe.save(make_checkpoint(s));
  }
  const int save_us = int(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count() / 3);
  std::mt19937 rng(7);
  int64_t last = 0;
  int resumed_nonzero = 0;
  for (int round = 0; round < 30; ++round) {
    const int delay_us = 500 + int(rng() % (4 * save_us + 2000));
    const int status = run_child(
        [&] {
          CheckpointManager mgr(root, 3);
          mgr.on_stage = [](const std::string&) { std::this_thread::sleep_for(std::chrono::microseconds(700)); };
          const auto r = mgr.resume();
          for (int64_t s = r.checkpoint ? r.checkpoint->step + 1 : 1;; ++s) mgr.save(make_checkpoint(s));
        },
        [&](pid_t pid) {
          std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
          kill(pid, SIGKILL);
        });
    INFO("round " << round << ", killed after " << delay_us << " us");
    REQUIRE(WIFSIGNALED(status));
    CheckpointManager mgr(root, 3);
    const auto r = mgr.resume();
    for (const auto& k : r.skipped) CHECK_THAT(k.reason, Contains("incomplete save") || Contains("missing state.json"));
    if (r.checkpoint) {
      check_consistent(*r.checkpoint);
      CHECK(r.checkpoint->step >= last);  // progress is never lost
      last = r.checkpoint->step;
      ++resumed_nonzero;
    } else {
      CHECK(last == 0);
    }
    if (!mgr.latest().empty()) CHECK(CheckpointManager::validate(root + "/" + mgr.latest()).empty());
  }
  CHECK(resumed_nonzero > 20);
  CHECK(last > 10);
}

TEST_CASE("restored RNG states replay the same random numbers", "[checkpoint]") {
  torch::manual_seed(11);
  torch::randn({3});
  const auto states = owl2::capture_rng_states();
  const auto a = torch::randn({5});
  torch::randn({100});
  owl2::restore_rng_states(states);
  CHECK(torch::equal(torch::randn({5}), a));
  REQUIRE_THROWS_WITH(owl2::restore_rng_states({{"tpu.0", states[0].second}}), Contains("unknown RNG state 'tpu.0'"));
}

TEST_CASE("AdamW resumed from a checkpoint continues exactly like an uninterrupted run", "[checkpoint]") {
  auto make = [] {
    torch::manual_seed(21);
    return torch::nn::Linear(4, 3);
  };
  auto named = [](torch::nn::Linear& m) {
    owl2::NamedTensors out;
    for (const auto& p : m->named_parameters()) out.emplace_back(p.key(), p.value());
    return out;
  };
  const auto x = torch::randn({8, 4});
  auto step = [&](torch::nn::Linear& m, torch::optim::AdamW& opt) {
    opt.zero_grad();
    m->forward(x).pow(2).mean().backward();
    opt.step();
  };
  const auto opts = torch::optim::AdamWOptions(0.05).weight_decay(0.1);

  auto ref = make();
  torch::optim::AdamW ref_opt(ref->parameters(), opts);
  for (int i = 0; i < 5; ++i) step(ref, ref_opt);

  const auto root = temp_dir();
  {
    auto m = make();
    torch::optim::AdamW opt(m->parameters(), opts);
    for (int i = 0; i < 3; ++i) step(m, opt);
    TrainingCheckpoint ck;
    ck.step = 3;
    ck.tensors["model"] = named(m);
    ck.tensors["optimizer"] = owl2::adamw_state_tensors(opt, named(m));
    CHECK(ck.tensors["optimizer"].size() == 6);  // step, exp_avg, exp_avg_sq for weight and bias
    CheckpointManager(root, 1).save(ck);
  }
  torch::manual_seed(99);
  torch::nn::Linear m(4, 3);  // different init: everything must come from the checkpoint
  torch::optim::AdamW opt(m->parameters(), opts);
  const auto r = CheckpointManager(root, 1).resume();
  REQUIRE(r.checkpoint);
  {
    torch::NoGradGuard ng;
    for (auto& [name, t] : r.checkpoint->tensors.at("model")) m->named_parameters()[name].copy_(t);
  }
  owl2::load_adamw_state(opt, named(m), r.checkpoint->tensors.at("optimizer"));
  for (int i = 3; i < 5; ++i) step(m, opt);
  CHECK(torch::equal(m->weight, ref->weight));
  CHECK(torch::equal(m->bias, ref->bias));
  REQUIRE_THROWS_WITH(owl2::load_adamw_state(opt, named(m), {{"nope.step", torch::tensor(1)}}),
                      Contains("optimizer state 'nope.step' names no parameter"));
}

TEST_CASE("owl2 checkpoint resume-info reports the checkpoint a resume takes and the ones it skips", "[checkpoint][cli]") {
  const auto root = temp_dir();
  CheckpointManager mgr(root, 5);
  mgr.save(make_checkpoint(1));
  mgr.save(make_checkpoint(2));
  ::unlink((root + "/step-000000002/state.json").c_str());
  const std::string cmd = std::string(OWL2_BINARY) + " checkpoint resume-info " + root + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  CHECK(WEXITSTATUS(pclose(p)) == 0);
  CHECK_THAT(out, Contains("resuming from " + root + "/step-000000001 (step 1)") &&
                      Contains("skipped " + root + "/step-000000002: missing state.json"));
}

TEST_CASE("several ranks write one checkpoint: every shard is CRC-checked, a dead rank leaves no checkpoint", "[checkpoint][dist]") {
  const auto root = temp_dir();
  REQUIRE(save_two_ranks(root, 4) == std::vector<std::string>{"", ""});
  REQUIRE(save_two_ranks(root, 5) == std::vector<std::string>{"", ""});
  CheckpointManager mgr(root, 2);
  auto r = mgr.resume();
  REQUIRE(r.checkpoint);
  CHECK(r.checkpoint->step == 5);
  check_consistent(*r.checkpoint);
  for (int64_t rank = 0; rank < 2; ++rank) {
    const auto& shard = r.checkpoint->tensors.at(fmt::format("optimizer.rank-{:05d}", rank));
    CHECK(torch::equal(shard.at(0).second, torch::full({100}, float(rank + 5))));
  }
  r.checkpoint.reset();

  // Rank 1 dies after writing its shard, before listing it: rank 0's barrier fails, nothing is committed.
  const auto errors = save_two_ranks(root, 6, "file:optimizer.rank-00001");
  CHECK_THAT(errors[0], Contains("barrier 'barrier after writing checkpoint step 6' broken"));
  CHECK_THAT(errors[1], Contains("rank 1 dies at file:optimizer.rank-00001"));
  r = mgr.resume();
  REQUIRE(r.checkpoint);
  CHECK(r.checkpoint->step == 5);
  REQUIRE(r.skipped.size() == 1);
  CHECK(r.skipped[0].dir == root + "/.tmp-step-000000006-w2");
  CHECK(r.skipped[0].reason == "incomplete save (temporary directory)");
  r.checkpoint.reset();

  // A corrupt shard of rank 1 is caught by the merged manifest: resume falls back to step 4.
  flip_byte(root + "/step-000000005/optimizer.rank-00001.safetensors", 200);
  r = mgr.resume();
  REQUIRE(r.checkpoint);
  CHECK(r.checkpoint->step == 4);
  CHECK_THAT(r.summary(), Contains("optimizer.rank-00001.safetensors checksum mismatch"));
}

}  // namespace owl2_test_training_checkpoint
