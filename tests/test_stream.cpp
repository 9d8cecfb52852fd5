// Streaming WebDataset shards (data/stream.h) and the streaming loader: each rank opens only its own shards,
// memory stays flat, every sample is read once per epoch over the ranks, and a mid-shard resume is exact.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/stream.h"
#include "data/tar.h"
#include "tests/helpers.h"
#include "trainers/parallel/distributed.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_stream {

using Catch::Matchers::Contains;
namespace fs = std::filesystem;
namespace data = owl2::data;

namespace {

// `n` shards DIR/shard-00000.tar ... of `per_shard` pairs each; the pair keys are "s<shard>-<k>", the image member
// `image_bytes` bytes (not decoded here) and the caption "caption s<shard>-<k>". Returns the brace pattern.
std::string write_shards(const std::string& dir, int n, int per_shard, size_t image_bytes) {
  for (int s = 0; s < n; ++s) {
    std::vector<data::TarFile> files;
    for (int k = 0; k < per_shard; ++k) {
      const std::string key = fmt::format("s{}-{}", s, k);
      files.push_back({key + ".jpg", std::string(image_bytes, static_cast<char>('a' + k % 26))});
      files.push_back({key + ".txt", "caption " + key});
    }
    data::write_tar(fmt::format("{}/shard-{:05d}.tar", dir, s), files);
  }
  return fmt::format("{}/shard-{{00000..{:05d}}}.tar", dir, n - 1);
}

// The resident set of this process, from /proc/self/statm (pages).
int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * 4096;
}

// Ids of every sample of one epoch of `stream`.
std::vector<std::string> read_epoch(data::ShardStream& stream) {
  std::vector<std::string> ids;
  while (auto s = stream.next()) ids.push_back(s->id);
  return ids;
}

struct Ids {
  std::vector<std::string> ids;
};
using IdLoader = data::Loader<std::string, Ids>;

IdLoader id_loader(std::shared_ptr<data::ShardStream> stream, size_t batch, int workers) {
  data::LoaderOptions o;
  o.batch_size = batch;
  o.num_workers = workers;
  o.prefetch = 5;
  return IdLoader(std::move(stream), o, [](data::RawSample&& s) { return s.id + "|" + s.caption; },
                  [](std::vector<std::string>&& v) { return Ids{std::move(v)}; });
}

}  // namespace

TEST_CASE("streaming 10,000 shards over 2 ranks: start-up opens nothing, each rank opens only its shards, memory "
          "stays flat, and the ranks together read every sample once per epoch",
          "[dataset][stream]") {
  const std::string dir = owl2::test::temp_dir("owl2_stream_many");
  const std::string pattern = write_shards(dir, 10000, 2, 4096);
  data::ReadOptions ro;
  ro.max_bad_fraction = 0;
  std::multiset<std::string> seen;
  std::vector<std::vector<std::string>> order(2);
  for (int rank = 0; rank < 2; ++rank) {
    const int64_t before = data::tar_file_opens();
    data::ShardStream stream(pattern, ro, 7, rank, 2);
    CHECK(data::tar_file_opens() == before);  // start-up reads no shard
    REQUIRE(stream.num_shards() == 10000);
    REQUIRE(stream.epoch_shards().size() == 5000);
    const auto first = stream.next();
    REQUIRE(first);
    CHECK(data::tar_file_opens() == before + 1);
    CHECK(first->caption == "caption " + first->id);
    CHECK(first->images.at(0).size() == 4096);
    CHECK(first->image_paths.at(0) == stream.epoch_shards()[0] + ":" + first->id + ".jpg");
    order[static_cast<size_t>(rank)].push_back(first->id);
    seen.insert(first->id);
    // Memory: nothing read is kept. 10,000 samples of 4 KiB held would be 40 MiB.
    int64_t rss_early = 0;
    int count = 1;
    while (auto s = stream.next()) {
      seen.insert(s->id);
      order[static_cast<size_t>(rank)].push_back(s->id);
      if (++count == 1000) rss_early = resident_bytes();
    }
    CHECK(count == 10000);
    CHECK(resident_bytes() - rss_early < 8 * 1024 * 1024);
    CHECK(data::tar_file_opens() == before + 5000);  // exactly its own shards, once each
    CHECK(stream.position().shard == 5000);
    CHECK(stream.good() == 10000);
    CHECK(stream.bad() == 0);
  }
  // The union over the ranks is the dataset, each sample once.
  REQUIRE(seen.size() == 20000);
  CHECK(std::set<std::string>(seen.begin(), seen.end()).size() == 20000);
  // Within a shard the members keep archive order.
  const auto& r0 = order[0];
  for (size_t i = 0; i + 1 < r0.size(); i += 2) {
    CHECK(r0[i].ends_with("-0"));
    CHECK(r0[i + 1] == r0[i].substr(0, r0[i].size() - 1) + "1");
  }
}

TEST_CASE("shard assignment: a partition per epoch, reshuffled between epochs, even within one shard", "[dataset][stream]") {
  for (int world : {1, 2, 3, 4}) {
    for (int64_t epoch : {0, 1}) {
      std::vector<int> owner(10, -1);
      for (int r = 0; r < world; ++r) {
        const auto mine = data::shard_assignment(10, 5, epoch, r, world);
        CHECK(mine.size() >= 10 / static_cast<size_t>(world));
        CHECK(mine.size() <= (10 + static_cast<size_t>(world) - 1) / static_cast<size_t>(world));
        for (size_t s : mine) {
          REQUIRE(s < 10);
          CHECK(owner[s] == -1);
          owner[s] = r;
        }
      }
      CHECK(std::count(owner.begin(), owner.end(), -1) == 0);
    }
  }
  CHECK(data::shard_assignment(10, 5, 0, 0, 1) != data::shard_assignment(10, 5, 1, 0, 1));
  CHECK(data::shard_assignment(10, 5, 0, 0, 1) == data::shard_assignment(10, 5, 0, 0, 1));
  CHECK(data::shard_assignment(10, 5, 0, 0, 1) != data::shard_assignment(10, 6, 0, 0, 1));
  CHECK_THROWS_WITH(data::shard_assignment(10, 5, 0, 2, 2), Contains("rank 2 is outside world size 2"));
}

TEST_CASE("the streaming loader resumes mid-shard exactly, with workers, into the next epoch", "[dataset][stream][loader]") {
  const std::string dir = owl2::test::temp_dir("owl2_stream_resume");
  const std::string pattern = write_shards(dir, 12, 7, 64);
  data::ReadOptions ro;
  ro.max_bad_fraction = 0;
  for (int workers : {0, 3}) {
    INFO("workers " << workers);
    // Uninterrupted: two epochs of rank 1 of 3 (4 shards, 28 samples) in batches of 3.
    auto stream = std::make_shared<data::ShardStream>(pattern, ro, 11, 1, 3);
    auto loader = id_loader(stream, 3, workers);
    std::vector<std::vector<std::string>> all;
    std::vector<data::LoaderState> states;
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      if (epoch > 0) loader.set_epoch(epoch);
      while (auto b = loader.next()) {
        all.push_back(b->ids);
        states.push_back(loader.state());
      }
    }
    REQUIRE(all.size() == 20);  // 10 batches per epoch: 9 of 3 and a last one of 1
    CHECK(all[9].size() == 1);
    std::set<std::string> epoch0;
    for (size_t b = 0; b < 10; ++b) epoch0.insert(all[b].begin(), all[b].end());
    CHECK(epoch0.size() == 28);
    // After 5 batches (15 samples): the third shard of the rank, one sample into it.
    CHECK(data::state_to_json(states[4]) == R"({"epoch":0,"position":5,"sample":1,"seed":11,"shard":2,"shards":12})");
    // Resume from every state (through its JSON) in a fresh loader: the rest of the run is the same.
    for (size_t k = 0; k < states.size(); ++k) {
      INFO("resumed after batch " << k);
      auto s2 = std::make_shared<data::ShardStream>(pattern, ro, 11, 1, 3);
      auto resumed = id_loader(s2, 3, workers);
      const int64_t opens = data::tar_file_opens();
      resumed.load_state(data::state_from_json(data::state_to_json(states[k])));
      std::vector<std::vector<std::string>> rest;
      int64_t epoch = states[k].epoch;
      for (;;) {
        auto b = resumed.next();
        if (b) {
          rest.push_back(b->ids);
          continue;
        }
        if (++epoch == 2) break;
        resumed.set_epoch(epoch);
      }
      REQUIRE(rest.size() == all.size() - k - 1);
      for (size_t j = 0; j < rest.size(); ++j) CHECK(rest[j] == all[k + 1 + j]);
      if (k == 4) CHECK(data::tar_file_opens() - opens == 4 - 2 + 4);  // from the third shard on, and epoch 1
    }
  }
}

namespace {

// A streaming loader of rank `rank` of `world` (batches of 2, no workers) started from `state` (through its JSON).
struct RankReader {
  std::shared_ptr<data::ShardStream> stream;
  IdLoader loader;
  RankReader(const std::string& pattern, int rank, int world, const data::LoaderState* state)
      : stream(std::make_shared<data::ShardStream>(pattern, data::ReadOptions{}, 5, rank, world)),
        loader(id_loader(stream, 2, 0)) {
    if (state) loader.load_state(data::state_from_json(data::state_to_json(*state)));
  }
  // Up to `batches` batches of the current epoch (all when < 0); appends the sample ids.
  void read(int batches, std::vector<std::string>& ids) {
    for (int b = 0; batches < 0 || b < batches; ++b) {
      auto batch = loader.next();
      if (!batch) return;
      for (const auto& id : batch->ids) ids.push_back(id.substr(0, id.find('|')));
    }
  }
};

// Every id once: `ids` sorted equals s0-0 ... of `shards` shards of `per` samples.
void check_once(std::vector<std::string> ids, int shards, int per) {
  std::vector<std::string> expected;
  for (int s = 0; s < shards; ++s)
    for (int k = 0; k < per; ++k) expected.push_back(fmt::format("s{}-{}", s, k));
  std::sort(ids.begin(), ids.end());
  std::sort(expected.begin(), expected.end());
  CHECK(ids == expected);
}

}  // namespace

TEST_CASE("streaming positions reshard to another world size: the rest of the epoch is read exactly once, the next "
          "epoch too",
          "[dataset][stream][loader]") {
  const std::string dir = owl2::test::temp_dir("owl2_stream_reshard");
  const int shards = 13, per = 5;
  const std::string pattern = write_shards(dir, shards, per, 16);
  // Three ranks read different amounts of their shards (rank 2 stops mid-shard, rank 1 has finished its second).
  std::vector<std::string> before;
  std::vector<data::LoaderState> saved;
  for (int r = 0; r < 3; ++r) {
    RankReader reader(pattern, r, 3, nullptr);
    reader.read(std::vector<int>{4, 5, 1}[static_cast<size_t>(r)], before);
    saved.push_back(reader.loader.state());
  }
  REQUIRE(saved[2].sample == 2);
  for (int world : {1, 2, 3, 12}) {  // 12: fewer shards are left, so some ranks get none
    INFO("resumed at " << world << " ranks");
    std::vector<std::string> epoch0 = before, epoch1;
    std::vector<data::LoaderState> again;  // world 2: the states after one more batch each, resharded again below
    std::vector<std::string> before_again = before;
    int next_epoch_ranks = 0;
    for (int r = 0; r < world; ++r) {
      const auto state = owl2::reshard_stream_states(saved, r, world);
      RankReader reader(pattern, r, world, &state);
      if (state.epoch == 1) {  // nothing left of epoch 0 for this rank: it starts its share of epoch 1
        ++next_epoch_ranks;
        reader.read(-1, epoch1);
        continue;
      }
      CHECK(state.plan.empty() == (world == 3));  // the same world size: the states as saved
      if (world == 2) {
        std::vector<std::string> one_batch;
        reader.read(1, one_batch);
        before_again.insert(before_again.end(), one_batch.begin(), one_batch.end());
        epoch0.insert(epoch0.end(), one_batch.begin(), one_batch.end());
        again.push_back(reader.loader.state());
        CHECK((again.back().plan == state.plan));  // the plan travels in the state until the epoch ends
      }
      reader.read(-1, epoch0);
      reader.loader.next_epoch();
      reader.read(-1, epoch1);
    }
    {
      INFO("epoch 0");
      check_once(epoch0, shards, per);
    }
    {
      INFO("epoch 1");
      check_once(epoch1, shards, per);
    }
    // A rank gets nothing of epoch 0 only where fewer shards are left than ranks.
    const auto left = static_cast<int>(owl2::reshard_stream_states(saved, 0, 1).plan.size());
    REQUIRE(left < 12);
    CHECK(next_epoch_ranks == std::max(0, world - left));
    if (world == 2) {  // a resharded epoch reshards again (its plans, mid-plan) from 2 ranks to 3
      std::vector<std::string> rest = before_again;
      for (int r = 0; r < 3; ++r) {
        const auto state = owl2::reshard_stream_states(again, r, 3);
        RankReader reader(pattern, r, 3, &state);
        reader.read(-1, rest);
      }
      INFO("resharded again to 3 ranks");
      check_once(rest, shards, per);
    }
  }
  // Saved at the same world size: the states as they were.
  CHECK(owl2::reshard_stream_states(saved, 1, 3).sample == saved[1].sample);
  // Ranks that span more than two epochs, and states without the shard count, are refused with the reason.
  auto split = saved;
  split[1].epoch = 2;
  split[1].shard = 0;
  CHECK_THROWS_WITH(owl2::reshard_stream_states(split, 0, 2),
                    Contains("the saved ranks span more than two epochs (rank 0 in epoch 0, the states reach into "
                             "epoch 2)"));
  auto old = saved;
  old[0].shards = 0;
  CHECK_THROWS_WITH(owl2::reshard_stream_states(old, 0, 2), Contains("does not record the stream's shard count"));
  auto wrong = saved[0];
  wrong.shards = 12;
  RankReader other(pattern, 0, 3, nullptr);
  CHECK_THROWS_WITH(other.loader.load_state(wrong), Contains("the state was saved over 12 shards") && Contains("names 13"));
  CHECK_THROWS_WITH(data::state_from_json(R"({"seed":1,"epoch":0,"position":0,"shard":0,"sample":0,"plan":[[1]]})"),
                    Contains("'plan' must be a list of [shard, sample] pairs"));
}

// Reads on until the loader stands in `past` (each epoch's ids under its number), moving on at each epoch's end.
void read_epochs(RankReader& reader, int64_t past, std::map<int64_t, std::vector<std::string>>& by_epoch) {
  while (reader.loader.state().epoch < past) {
    const int64_t epoch = reader.loader.state().epoch;
    auto batch = reader.loader.next();
    if (!batch) {
      reader.loader.next_epoch();
      continue;
    }
    for (const auto& id : batch->ids) by_epoch[epoch].push_back(id.substr(0, id.find('|')));
  }
}

TEST_CASE("streaming positions saved across an epoch boundary reshard: each epoch is read exactly once",
          "[dataset][stream][loader]") {
  const std::string dir = owl2::test::temp_dir("owl2_stream_straddle");
  const int shards = 13, per = 5;
  const std::string pattern = write_shards(dir, shards, per, 16);
  // Rank 1 has finished its share of epoch 0 and read a batch of epoch 1; ranks 0 and 2 are still in epoch 0 (rank 2
  // mid-shard).
  std::map<int64_t, std::vector<std::string>> before;
  std::vector<data::LoaderState> saved;
  for (int r = 0; r < 3; ++r) {
    RankReader reader(pattern, r, 3, nullptr);
    if (r == 1) {
      read_epochs(reader, 1, before);
      reader.read(1, before[1]);
    } else {
      reader.read(r == 0 ? 3 : 1, before[0]);
    }
    saved.push_back(reader.loader.state());
  }
  REQUIRE(saved[1].epoch == 1);
  REQUIRE(saved[2].sample == 2);
  for (int world : {1, 2, 4, 12}) {
    INFO("resumed at " << world << " ranks");
    auto by_epoch = before;
    std::vector<data::LoaderState> again;  // world 2: after one more batch each, resharded again below
    auto before_again = before;
    for (int r = 0; r < world; ++r) {
      const auto state = owl2::reshard_stream_states(saved, r, world);
      CHECK(state.epoch <= 2);
      RankReader reader(pattern, r, world, &state);
      if (world == 2) {
        const int64_t epoch = reader.loader.state().epoch;
        std::vector<std::string> one;
        reader.read(1, one);
        for (auto* m : {&by_epoch, &before_again}) (*m)[epoch].insert((*m)[epoch].end(), one.begin(), one.end());
        again.push_back(reader.loader.state());
      }
      read_epochs(reader, 3, by_epoch);  // the rest of epochs 0 and 1, then its own share of epoch 2
    }
    for (int64_t epoch : {0, 1, 2}) {
      INFO("epoch " << epoch);
      check_once(by_epoch[epoch], shards, per);
    }
    if (world == 2) {  // states that carry the next epoch's plan reshard again, to 3 ranks
      REQUIRE(again.size() == 2);
      auto rest = before_again;
      for (int r = 0; r < 3; ++r) {
        const auto state = owl2::reshard_stream_states(again, r, 3);
        RankReader reader(pattern, r, 3, &state);
        read_epochs(reader, 2, rest);
      }
      for (int64_t epoch : {0, 1}) {
        INFO("resharded again to 3 ranks, epoch " << epoch);
        check_once(rest[epoch], shards, per);
      }
    }
  }
  // The next epoch's plan travels in the state's JSON.
  const auto state = owl2::reshard_stream_states(saved, 0, 2);
  REQUIRE(state.then_epoch >= 1);
  const auto round = data::state_from_json(data::state_to_json(state));
  CHECK(round.then_epoch == state.then_epoch);
  CHECK((round.then_plan == state.then_plan));
  CHECK_THROWS_WITH(
      data::state_from_json(R"({"seed":1,"epoch":3,"position":0,"shard":0,"sample":0,"then_epoch":3})"),
      Contains("'then_epoch' must come after 'epoch'"));
}

TEST_CASE("streaming: bad pairs and damaged shards are reported and passed over, bad positions and states are refused",
          "[dataset][stream]") {
  const std::string dir = owl2::test::temp_dir("owl2_stream_bad");
  write_shards(dir, 3, 4, 16);
  // Shard 1: a pair without caption and a caption without image; shard 2: cut inside the header of its third member.
  data::write_tar(dir + "/shard-00001.tar", {{"a.jpg", "xx"}, {"a.txt", "ok"}, {"b.jpg", "yy"}, {"c.txt", "no image"},
                                              {"d.jpg", "zz"}, {"d.json", R"({"caption": "from json"})"}});
  const std::string full = owl2::test::read_text(dir + "/shard-00002.tar");
  std::ofstream(dir + "/shard-00002.tar", std::ios::binary) << full.substr(0, 2100);
  auto log = std::make_shared<data::BadInputLog>();
  data::ReadOptions ro;
  ro.log = log;
  ro.max_bad_fraction = 1;
  data::ShardStream stream(dir + "/shard-{00000..00002}.tar", ro, 3, 0, 1);
  std::set<std::string> ids;
  while (auto s = stream.next()) ids.insert(s->id + "=" + s->caption);
  // Shard 0 whole, shard 1's good pairs (d from its .json), and shard 2's first pair (read before the cut).
  CHECK(ids == std::set<std::string>{"s0-0=caption s0-0", "s0-1=caption s0-1", "s0-2=caption s0-2",
                                     "s0-3=caption s0-3", "a=ok", "d=from json", "s2-0=caption s2-0"});
  const auto counts = log->counts();
  CHECK(counts.at(data::bad::kMissingCaption) == 1);
  CHECK(counts.at(data::bad::kMissingImage) == 1);
  CHECK(counts.at(data::bad::kCorruptTar) == 1);
  CHECK(stream.bad() == 3);
  // Over the bad-input limit: an error naming the dataset and the worst file.
  data::ReadOptions strict;
  strict.log = std::make_shared<data::BadInputLog>();
  strict.max_bad_fraction = 0.01;
  // The check starts at 200 groups: 150 shards of two pairs, one bad pair in every third shard.
  const std::string many = owl2::test::temp_dir("owl2_stream_limit");
  write_shards(many, 150, 2, 8);
  for (int s = 0; s < 150; s += 3)
    data::write_tar(fmt::format("{}/shard-{:05d}.tar", many, s), {{"x.jpg", "x"}, {"y.jpg", "y"}, {"y.txt", "ok"}});
  data::ShardStream limited(many + "/shard-{00000..00149}.tar", strict, 1, 0, 1);
  CHECK_THROWS_WITH(read_epoch(limited), Contains("entries are bad") && Contains("missing_caption"));
  // A shard list too short for the ranks, a position outside the epoch, and an indexed loader's state.
  CHECK_THROWS_WITH(data::ShardStream(dir + "/shard-{00000..00002}.tar", ro, 3, 0, 4),
                    Contains("3 shards cannot stream to 4 ranks"));
  CHECK_THROWS_WITH(stream.seek({0, 4, 0}), Contains("(epoch 0, shard 4, sample 0) is outside rank 0's 3 shards"));
  auto s2 = std::make_shared<data::ShardStream>(dir + "/shard-{00000..00002}.tar", ro, 3, 0, 1);
  auto loader = id_loader(s2, 2, 0);
  CHECK_THROWS_WITH(loader.load_state({3, 0, 1}), Contains("a streaming loader needs a stream position"));
  CHECK_THROWS_WITH(loader.load_state({4, 0, 1, 0, 0}), Contains("saved with seed 4, but the stream assigns shards with seed 3"));
  CHECK_THROWS_WITH(data::state_from_json(R"({"seed":1,"epoch":0,"position":0,"shard":-2,"sample":0})"),
                    Contains("'shard' and 'sample' must be >= 0"));
  // A streaming position resumes only at its own world size.
  const data::LoaderState streamed{1, 0, 4, 2, 3};
  CHECK(owl2::reshard_loader_state(streamed, 2, 2).sample == 3);
  CHECK_THROWS_WITH(owl2::reshard_loader_state(streamed, 2, 1),
                    Contains("a streaming position saved at world size 2 cannot be resumed at 1"));
}

TEST_CASE("data.streaming: the config check names what it cannot combine with, and a JSON source is refused",
          "[stream][config][cli]") {
  const std::string dir = owl2::test::temp_dir("owl2_stream_config");
  write_shards(dir, 2, 1, 8);
  const auto train = [&](const std::string& data_yaml) {
    std::ofstream(dir + "/run.yaml") << "include: " << owl2::test::source_path("configs/model/tiny.yaml") << "\n"
                                     << "model: {decoder: {vocab_size: 1000}}\n"
                                     << "train: {steps: 1, global_batch_size: 1, micro_batch_size: 1, out_dir: " << dir
                                     << "/run}\n"
                                     << "data: {tokenizer: "
                                     << owl2::test::source_path("tests/fixtures/tokenizer/tiny_llama.model") << ", "
                                     << data_yaml << "}\n";
    return owl2::test::run_owl2("train --config " + dir + "/run.yaml");
  };
  const std::string one = "sources: [{path: '" + dir + "/shard-{00000..00001}.tar'}]";
  const auto two = train("streaming: true, sources: [{path: " + dir + "/shard-00000.tar}, {path: " + dir +
                         "/shard-00001.tar}]");
  CHECK(two.rc != 0);
  CHECK_THAT(two.out, Contains("data.streaming: streams exactly one tar-shard source") && Contains("got 2 sources"));
  const auto packed = train("streaming: true, pack_tokens: 256, " + one);
  CHECK(packed.rc != 0);
  CHECK_THAT(packed.out, Contains("data.streaming: cannot be combined with data.pack_tokens"));
  const auto grouped = train("streaming: true, group_by_modality: true, " + one);
  CHECK(grouped.rc != 0);
  CHECK_THAT(grouped.out, Contains("data.streaming: cannot be combined with data.group_by_modality"));
  std::ofstream(dir + "/llava.json") << R"([{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}])";
  const auto json_source = train("streaming: true, sources: [{path: " + dir + "/llava.json}]");
  CHECK(json_source.rc != 0);
  CHECK_THAT(json_source.out, Contains("llava.json is not tar shards") && Contains("set data.streaming: false"));
}

}  // namespace owl2_test_stream
