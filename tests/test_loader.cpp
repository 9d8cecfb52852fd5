// The loader: deterministic order, rank sharding, exact resume, ordered multi-threaded prefetch,
// modality grouping, bad-input and length-validation counts.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "data/loader.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_loader {

using namespace owl2::data;

namespace {

// n samples; sample i has id "i", an image when i % 3 == 0, and (i * 37) % 50 characters of text.
class Toy : public Dataset {
 public:
  explicit Toy(size_t n) : n_(n) {}
  size_t size() const override { return n_; }
  const std::string& name() const override { return name_; }
  SampleInfo info(size_t i) const override { return {i % 3 == 0 ? 1 : 0, static_cast<int64_t>((i * 37) % 50)}; }
  RawSample get(size_t i) const override {
    RawSample r;
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

struct Ex {
  size_t index;
  int64_t length;
  bool image;
};
using Batch = std::vector<Ex>;
using ToyLoader = Loader<Ex, Batch>;

Ex to_ex(RawSample&& s) {
  return {std::stoul(s.id), static_cast<int64_t>(s.caption.size()), !s.images.empty()};
}
Batch collate(std::vector<Ex>&& v) { return std::move(v); }

std::vector<size_t> flatten(const std::vector<Batch>& batches) {
  std::vector<size_t> out;
  for (const auto& b : batches)
    for (const auto& e : b) out.push_back(e.index);
  return out;
}

std::vector<Batch> drain(ToyLoader& l, int64_t max_batches = -1) {
  std::vector<Batch> out;
  while (max_batches < 0 || static_cast<int64_t>(out.size()) < max_batches) {
    auto b = l.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

LoaderOptions opts(size_t batch, uint64_t seed, int workers = 2) {
  LoaderOptions o;
  o.batch_size = batch;
  o.seed = seed;
  o.num_workers = workers;
  o.prefetch = 8;
  return o;
}

}  // namespace

TEST_CASE("loader: same seed and epoch give the same order, epoch and seed change it", "[data][loader]") {
  auto ds = std::make_shared<Toy>(50);
  ToyLoader a(ds, opts(4, 1), to_ex, collate), b(ds, opts(4, 1), to_ex, collate), c(ds, opts(4, 2), to_ex, collate);
  const auto sa = flatten(drain(a)), sb = flatten(drain(b)), sc = flatten(drain(c));
  CHECK(sa == sb);
  CHECK(sa != sc);
  // Every sample exactly once, and not in dataset order.
  std::vector<size_t> sorted = sa;
  std::sort(sorted.begin(), sorted.end());
  std::vector<size_t> all(50);
  for (size_t i = 0; i < 50; ++i) all[i] = i;
  CHECK(sorted == all);
  CHECK(sa != all);
  CHECK(a.num_batches() == 13);  // 12 full + 1 partial
  a.set_epoch(1);
  const auto e1 = flatten(drain(a));
  CHECK(e1 != sa);
  CHECK(e1.size() == 50);
  // Without shuffling the order is the dataset's.
  auto o = opts(4, 1);
  o.shuffle = false;
  ToyLoader plain(ds, o, to_ex, collate);
  CHECK(flatten(drain(plain)) == all);
  o.drop_last = true;
  CHECK(ToyLoader(ds, o, to_ex, collate).num_batches() == 12);

  // Move-only examples work (e.g. owning buffers).
  Loader<std::unique_ptr<size_t>, size_t> owning(
      ds, opts(7, 1), [](RawSample&& s) { return std::make_unique<size_t>(std::stoul(s.id)); },
      [](std::vector<std::unique_ptr<size_t>>&& v) {
        size_t sum = 0;
        for (const auto& p : v) sum += *p;
        return sum;
      });
  size_t total = 0;
  while (auto b = owning.next()) total += *b;
  CHECK(total == 49 * 50 / 2);
}

TEST_CASE("loader: ranks get disjoint, equally many batches of the global plan", "[data][loader]") {
  auto ds = std::make_shared<Toy>(103);
  for (bool grouped : {false, true}) {
    auto o = opts(4, 5);
    o.group_by_modality = grouped;
    const auto global = plan_epoch(*ds, o, 3);  // world size 1: the global batch list
    std::set<size_t> seen;
    size_t total = 0;
    for (int r = 0; r < 3; ++r) {
      auto ro = o;
      ro.rank = r;
      ro.world_size = 3;
      ToyLoader l(ds, ro, to_ex, collate);
      l.set_epoch(3);
      const auto batches = drain(l);
      CHECK(batches.size() == global.size() / 3);
      for (size_t k = 0; k < batches.size(); ++k) {
        std::vector<size_t> idx;
        for (const auto& e : batches[k]) idx.push_back(e.index);
        CHECK(idx == global[static_cast<size_t>(r) + 3 * k]);
        for (size_t i : idx) CHECK(seen.insert(i).second);  // disjoint
        total += idx.size();
      }
    }
    // Coverage: everything except the last global.size() % 3 batches.
    size_t expected = 0;
    for (size_t k = 0; k < global.size() / 3 * 3; ++k) expected += global[k].size();
    CHECK(total == expected);
    CHECK(seen.size() == expected);
    CHECK(expected >= 103 - 3 * 4 - 2 * 3);
  }
  CHECK_THROWS_WITH(ToyLoader(ds, [] { auto o = opts(4, 0); o.rank = 3; o.world_size = 3; return o; }(), to_ex, collate),
                    Catch::Contains("rank 3 is outside world size 3"));
}

TEST_CASE("loader: resuming from a JSON state mid-epoch continues the uninterrupted stream", "[data][loader]") {
  auto ds = std::make_shared<Toy>(90);
  auto o = opts(4, 11, 3);
  o.group_by_modality = true;
  o.group_window = 2;
  ToyLoader full(ds, o, to_ex, collate);
  auto expected = flatten(drain(full));
  full.set_epoch(1);
  const auto epoch1 = flatten(drain(full));
  expected.insert(expected.end(), epoch1.begin(), epoch1.end());

  std::vector<size_t> got;
  std::string saved;
  {
    ToyLoader l(ds, o, to_ex, collate);
    got = flatten(drain(l, 5));
    saved = state_to_json(l.state());
  }  // destroyed with prefetched examples in flight
  CHECK(saved == R"({"epoch":0,"position":5,"seed":11})");
  {
    auto other = o;
    other.seed = 999;  // the state's seed wins
    ToyLoader l(ds, other, to_ex, collate);
    l.load_state(state_from_json(saved));
    const auto rest = flatten(drain(l));
    got.insert(got.end(), rest.begin(), rest.end());
    l.set_epoch(l.state().epoch + 1);
    const auto part = flatten(drain(l, 3));
    got.insert(got.end(), part.begin(), part.end());
    saved = state_to_json(l.state());
  }
  {
    ToyLoader m(ds, o, to_ex, collate);  // options other than the seed must match the interrupted run
    m.load_state(state_from_json(saved));
    const auto rest = flatten(drain(m));
    got.insert(got.end(), rest.begin(), rest.end());
  }
  CHECK(got == expected);
  CHECK_THROWS_WITH(state_from_json(R"({"seed": 1, "position": 2})"), Catch::Contains("'epoch'"));
  ToyLoader l(ds, o, to_ex, collate);
  CHECK_THROWS_WITH(l.load_state({11, 0, 1000}), Catch::Contains("position 1000 is outside epoch 0"));
}

TEST_CASE("loader: several threads with uneven transform times keep the order, prefetch stays bounded",
          "[data][loader]") {
  auto ds = std::make_shared<Toy>(120);
  ToyLoader serial(ds, opts(5, 3, 0), to_ex, collate);
  const auto expected = flatten(drain(serial));

  std::atomic<int64_t> started{0}, collated{0}, max_ahead{0};
  auto o = opts(5, 3, 4);
  o.prefetch = 6;
  ToyLoader threaded(
      ds, o,
      [&](RawSample&& s) {
        const int64_t ahead = ++started - collated.load();
        int64_t m = max_ahead.load();
        while (ahead > m && !max_ahead.compare_exchange_weak(m, ahead)) {
        }
        // Later samples often finish first.
        std::this_thread::sleep_for(std::chrono::microseconds(std::stoul(s.id) * 7919 % 1500));
        return to_ex(std::move(s));
      },
      [&](std::vector<Ex>&& v) {
        collated += static_cast<int64_t>(v.size());
        return std::move(v);
      });
  CHECK(flatten(drain(threaded)) == expected);
  CHECK(max_ahead.load() <= static_cast<int64_t>(o.prefetch + o.batch_size));
  CHECK(max_ahead.load() >= 2);  // the workers did run ahead
}

TEST_CASE("loader: modality grouping gives one-modality batches, sorted by length within a window",
          "[data][loader]") {
  auto ds = std::make_shared<Toy>(100);
  auto o = opts(4, 8);
  o.group_by_modality = true;
  o.group_window = 1000;  // one window per modality: batches are consecutive runs of one length order
  ToyLoader l(ds, o, to_ex, collate);
  const auto batches = drain(l);
  std::set<size_t> seen;
  int image_batches = 0, partial = 0;
  for (const auto& b : batches) {
    for (const auto& e : b) {
      CHECK(e.image == b.front().image);
      seen.insert(e.index);
    }
    for (size_t k = 1; k < b.size(); ++k) CHECK(b[k - 1].length >= b[k].length);
    image_batches += b.front().image;
    partial += b.size() < 4;
  }
  CHECK(seen.size() == 100);
  CHECK(image_batches == 9);  // 34 image samples: 8 full + 1 partial
  CHECK(partial == 2);        // one per modality (66 text samples: 16 full + 1 partial)
  // Batch order is shuffled: image and text batches are interleaved, not in two runs.
  int switches = 0;
  for (size_t k = 1; k < batches.size(); ++k) switches += batches[k].front().image != batches[k - 1].front().image;
  CHECK(switches > 2);
}

TEST_CASE("loader: failing transforms and over-long examples are skipped or truncated and counted",
          "[data][loader]") {
  auto ds = std::make_shared<Toy>(60);
  const auto throwing = [](RawSample&& s) {
    if (std::stoul(s.id) % 10 == 7) throw std::runtime_error("cannot decode");
    return to_ex(std::move(s));
  };
  ToyLoader::LengthHooks hooks;
  hooks.length = [](const Ex& e) { return e.length; };
  hooks.truncate = [](Ex& e, int64_t max) { e.length = max; };
  size_t too_long = 0;
  for (size_t i = 0; i < 60; ++i) too_long += i % 10 != 7 && (i * 37) % 50 > 40;
  REQUIRE(too_long > 0);

  auto o = opts(3, 4);
  o.max_length = 40;
  auto log = std::make_shared<BadInputLog>();
  ToyLoader drop(ds, o, throwing, collate, hooks, log);
  const auto kept = flatten(drain(drop));
  CHECK(drop.counters().transform_errors == 6);
  CHECK(log->counts().at(bad::kTransformError) == 6);
  CHECK(static_cast<size_t>(drop.counters().dropped_too_long) == too_long);
  CHECK(kept.size() == 60 - 6 - too_long);
  CHECK(drop.counters().examples == static_cast<int64_t>(kept.size()));
  for (size_t i : kept) CHECK((i % 10 != 7 && (i * 37) % 50 <= 40));

  o.length_policy = LengthPolicy::kTruncate;
  ToyLoader trunc(ds, o, throwing, collate, hooks, std::make_shared<BadInputLog>());
  const auto batches = drain(trunc);
  CHECK(static_cast<size_t>(trunc.counters().truncated) == too_long);
  CHECK(flatten(batches).size() == 54);
  for (const auto& b : batches)
    for (const auto& e : b) CHECK(e.length <= 40);

  // Batch size 1: a dropped example leaves an empty batch, which is skipped but still advances.
  auto o1 = opts(1, 4, 0);
  o1.max_length = 40;
  ToyLoader single(ds, o1, throwing, collate, hooks, std::make_shared<BadInputLog>());
  CHECK(drain(single).size() == 60 - 6 - too_long);
  CHECK(static_cast<size_t>(single.counters().empty_batches) == 6 + too_long);
  CHECK(single.state().position == 60);

  // Too many failures: an error naming the dataset, the counts and the worst file.
  auto big = std::make_shared<Toy>(400);
  auto ob = opts(8, 4);
  ob.max_bad_fraction = 0.05;
  ToyLoader failing(big, ob, throwing, collate, {}, std::make_shared<BadInputLog>());
  CHECK_THROWS_WITH(drain(failing), Catch::Contains("toy (loader): 2") && Catch::Contains("transform_error") &&
                                        Catch::Contains("worst files:\n  toy (") && Catch::Contains("over the limit of 5.0%"));
  CHECK(failing.counters().taken >= 200);
  CHECK(failing.counters().taken < 216);  // checked at the first batch boundary past 200
  ob.max_bad_fraction = 0.2;
  ToyLoader tolerant(big, ob, throwing, collate, {}, std::make_shared<BadInputLog>());
  CHECK(flatten(drain(tolerant)).size() == 360);

  o.length_policy = LengthPolicy::kTruncate;
  CHECK_THROWS_WITH(ToyLoader(ds, o, to_ex, collate, {[](const Ex& e) { return e.length; }, nullptr}),
                    Catch::Contains("needs a truncate hook"));
}

}  // namespace owl2_test_loader
