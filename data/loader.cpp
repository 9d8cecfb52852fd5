// The loader's epoch plan (order, modality grouping, rank sharding) and its resumable state.
#include "data/loader.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/rng.h"

namespace owl2::data {

std::string state_to_json(const LoaderState& s) {
  return nlohmann::json{{"seed", s.seed}, {"epoch", s.epoch}, {"position", s.position}}.dump();
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

}  // namespace

std::vector<std::vector<size_t>> plan_epoch(const Dataset& dataset, const LoaderOptions& o, int64_t epoch) {
  const size_t n = dataset.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  if (o.shuffle) {
    Rng rng(mix_seed(o.seed, static_cast<uint64_t>(epoch), 1));
    order = permutation(n, rng);
  }

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
    if (o.shuffle) {
      Rng rng(mix_seed(o.seed, static_cast<uint64_t>(epoch), 2));
      const auto perm = permutation(batches.size(), rng);
      std::vector<std::vector<size_t>> shuffled;
      shuffled.reserve(batches.size());
      for (size_t k : perm) shuffled.push_back(std::move(batches[k]));
      batches = std::move(shuffled);
    }
  }

  // Rank r takes batches r, r + W, ...; every rank gets the same number.
  const size_t world = static_cast<size_t>(o.world_size), per_rank = batches.size() / world;
  std::vector<std::vector<size_t>> mine;
  mine.reserve(per_rank);
  for (size_t k = 0; k < per_rank; ++k) mine.push_back(std::move(batches[static_cast<size_t>(o.rank) + k * world]));
  return mine;
}

}  // namespace owl2::data
