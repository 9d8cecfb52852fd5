// The loader's epoch plan (order, modality grouping, rank sharding) and its resumable state.
#include "data/loader.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/rng.h"

namespace owl2::data {

std::string state_to_json(const LoaderState& s) {
  nlohmann::json j{{"seed", s.seed}, {"epoch", s.epoch}, {"position", s.position}};
  if (s.streaming()) {
    j["shard"] = s.shard;
    j["sample"] = s.sample;
    if (s.shards > 0) j["shards"] = s.shards;
    const auto pairs = [](const std::vector<ShardStart>& plan) {
      auto out = nlohmann::json::array();
      for (const auto& e : plan) out.push_back({e.shard, e.sample});
      return out;
    };
    if (!s.plan.empty()) j["plan"] = pairs(s.plan);
    if (s.then_epoch >= 0) {
      j["then_epoch"] = s.then_epoch;
      if (!s.then_plan.empty()) j["then_plan"] = pairs(s.then_plan);
    }
  }
  return j.dump();
}

LoaderState state_from_json(const std::string& text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw std::invalid_argument(fmt::format("loader state: expected a JSON object, found '{}'", text));
  LoaderState s;
  const auto field = [&](const char* key, auto& out) {
    if (!j.contains(key) || !j[key].is_number_integer())
      throw std::invalid_argument(fmt::format("loader state: field '{}' must be an integer in '{}'", key, text));
    out = j[key].get<std::decay_t<decltype(out)>>();
  };
  field("seed", s.seed);
  field("epoch", s.epoch);
  field("position", s.position);
  if (j.contains("shard")) {
    field("shard", s.shard);
    field("sample", s.sample);
    if (s.shard < 0 || s.sample < 0)
      throw std::invalid_argument(fmt::format("loader state: 'shard' and 'sample' must be >= 0 in '{}'", text));
    if (j.contains("shards")) field("shards", s.shards);
    const auto read_plan = [&](const char* key, std::vector<ShardStart>& out) {
      if (!j.contains(key)) return;
      const auto& plan = j[key];
      const auto bad = [&] {
        return std::invalid_argument(
            fmt::format("loader state: '{}' must be a list of [shard, sample] pairs of integers >= 0 in '{}'", key, text));
      };
      if (!plan.is_array()) throw bad();
      for (const auto& e : plan) {
        if (!e.is_array() || e.size() != 2 || !e[0].is_number_integer() || !e[1].is_number_integer()) throw bad();
        out.push_back({e[0].get<int64_t>(), e[1].get<int64_t>()});
        if (out.back().shard < 0 || out.back().sample < 0) throw bad();
      }
    };
    read_plan("plan", s.plan);
    if (j.contains("then_epoch")) {
      field("then_epoch", s.then_epoch);
      if (s.then_epoch <= s.epoch)
        throw std::invalid_argument(fmt::format("loader state: 'then_epoch' must come after 'epoch' in '{}'", text));
      read_plan("then_plan", s.then_plan);
    }
  }
  return s;
}

namespace {

// Appends the chunks of `indices` (batch_size each; a partial last one unless drop_last) to `out`.
void chunk(const std::vector<size_t>& indices, const LoaderOptions& o, std::vector<std::vector<size_t>>& out) {
  for (size_t b = 0; b < indices.size(); b += o.batch_size) {
    const size_t e = std::min(indices.size(), b + o.batch_size);
    if (e - b < o.batch_size && o.drop_last) break;
    out.emplace_back(indices.begin() + static_cast<std::ptrdiff_t>(b), indices.begin() + static_cast<std::ptrdiff_t>(e));
  }
}

// Rank r's share: entries r, r + W, ...; every rank gets the same number.
template <class T>
std::vector<T> take_rank(std::vector<T>&& all, const LoaderOptions& o) {
  const size_t world = static_cast<size_t>(o.world_size), per_rank = all.size() / world;
  std::vector<T> mine;
  mine.reserve(per_rank);
  for (size_t k = 0; k < per_rank; ++k) mine.push_back(std::move(all[static_cast<size_t>(o.rank) + k * world]));
  return mine;
}

template <class T>
void shuffle_in_place(std::vector<T>& items, uint64_t seed, int64_t epoch) {
  Rng rng(mix_seed(seed, static_cast<uint64_t>(epoch), 2));
  const auto perm = permutation(items.size(), rng);
  std::vector<T> shuffled;
  shuffled.reserve(items.size());
  for (size_t k : perm) shuffled.push_back(std::move(items[k]));
  items = std::move(shuffled);
}

std::vector<size_t> epoch_order(size_t n, const LoaderOptions& o, int64_t epoch) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  if (o.shuffle) {
    Rng rng(mix_seed(o.seed, static_cast<uint64_t>(epoch), 1));
    order = permutation(n, rng);
  }
  return order;
}

}  // namespace

std::vector<std::vector<size_t>> pack_rows(const std::vector<size_t>& order, const std::vector<int64_t>& lengths,
                                           int64_t budget, size_t buffer) {
  if (budget < 1) throw std::invalid_argument("pack_rows: the token budget must be >= 1");
  buffer = std::max<size_t>(1, buffer);
  std::vector<std::vector<size_t>> rows;
  std::vector<size_t> window;  // in stream order
  size_t next = 0;
  const auto refill = [&] {
    while (window.size() < buffer && next < order.size()) window.push_back(order[next++]);
  };
  const auto len = [&](size_t index) {
    const int64_t l = lengths.at(index);
    if (l > budget)
      throw std::invalid_argument(fmt::format("pack_rows: sample {} has {} tokens, more than the row's {}", index, l, budget));
    return std::max<int64_t>(l, 0);
  };
  refill();
  while (!window.empty()) {
    std::vector<size_t> row{window.front()};
    int64_t left = budget - len(window.front());
    window.erase(window.begin());
    for (;;) {
      refill();
      size_t best = window.size();
      for (size_t k = 0; k < window.size(); ++k) {
        const int64_t l = len(window[k]);
        if (l <= left && (best == window.size() || l > len(window[best]))) best = k;
      }
      if (best == window.size()) break;
      left -= len(window[best]);
      row.push_back(window[best]);
      window.erase(window.begin() + static_cast<std::ptrdiff_t>(best));
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<std::vector<std::vector<size_t>>> plan_packed_epoch(const Dataset& dataset, const LoaderOptions& o,
                                                                int64_t epoch, const std::vector<int64_t>& lengths) {
  if (o.pack_tokens < 1) throw std::invalid_argument("plan_packed_epoch: pack_tokens must be >= 1");
  if (lengths.size() != dataset.size())
    throw std::invalid_argument(fmt::format("plan_packed_epoch: {} lengths for {} samples", lengths.size(), dataset.size()));
  const auto order = epoch_order(dataset.size(), o, epoch);
  std::vector<std::vector<std::vector<size_t>>> batches;
  const auto add = [&](const std::vector<size_t>& samples) {
    auto rows = pack_rows(samples, lengths, o.pack_tokens, o.pack_buffer);
    for (size_t b = 0; b < rows.size(); b += o.batch_size) {
      const size_t e = std::min(rows.size(), b + o.batch_size);
      if (e - b < o.batch_size && o.drop_last) break;
      batches.emplace_back(std::make_move_iterator(rows.begin() + static_cast<std::ptrdiff_t>(b)),
                           std::make_move_iterator(rows.begin() + static_cast<std::ptrdiff_t>(e)));
    }
  };
  if (!o.group_by_modality) {
    add(order);
  } else {
    std::vector<size_t> image, text;
    for (size_t i : order) (dataset.info(i).num_images > 0 ? image : text).push_back(i);
    add(image);
    add(text);
    if (o.shuffle) shuffle_in_place(batches, o.seed, epoch);
  }
  return take_rank(std::move(batches), o);
}

std::vector<std::vector<size_t>> plan_epoch(const Dataset& dataset, const LoaderOptions& o, int64_t epoch) {
  const size_t n = dataset.size();
  const std::vector<size_t> order = epoch_order(n, o, epoch);

  std::vector<std::vector<size_t>> batches;
  if (!o.group_by_modality) {
    chunk(order, o, batches);
  } else {
    // Modality-grouped length batching: image and text-only samples never share a batch (a text-only
    // sample in an image batch would cost a dummy image), and similar lengths pad less.
    std::vector<size_t> image, text;
    std::vector<int64_t> len(n);
    for (size_t i : order) {
      const SampleInfo info = dataset.info(i);
      len[i] = info.text_chars;
      (info.num_images > 0 ? image : text).push_back(i);
    }
    const size_t window = o.batch_size * std::max<size_t>(1, o.group_window);
    for (auto* group : {&image, &text}) {
      for (size_t w = 0; w < group->size(); w += window) {
        const auto first = group->begin() + static_cast<std::ptrdiff_t>(w);
        const auto last = group->begin() + static_cast<std::ptrdiff_t>(std::min(group->size(), w + window));
        std::stable_sort(first, last, [&](size_t a, size_t b) { return len[a] > len[b]; });
      }
      chunk(*group, o, batches);
    }
    if (o.shuffle) shuffle_in_place(batches, o.seed, epoch);
  }
  return take_rank(std::move(batches), o);
}

}  // namespace owl2::data
