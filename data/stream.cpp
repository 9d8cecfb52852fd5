// Streaming WebDataset shards (see stream.h).
#include "data/stream.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <iostream>
#include <stdexcept>

#include "data/rng.h"
#include "data/tar.h"

namespace owl2::data {

std::vector<size_t> shard_assignment(size_t num_shards, uint64_t seed, int64_t epoch, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw std::invalid_argument(fmt::format("shard assignment: rank {} is outside world size {}", rank, world_size));
  Rng rng(mix_seed(seed, static_cast<uint64_t>(epoch), 3));
  const auto perm = permutation(num_shards, rng);
  std::vector<size_t> mine;
  for (size_t k = static_cast<size_t>(rank); k < perm.size(); k += static_cast<size_t>(world_size)) mine.push_back(perm[k]);
  return mine;
}

namespace {

// The shards rank r of saved.size() reads in epoch e by its saved state, from their starts (a plan's own or 0).
std::vector<ShardStart> saved_share(const std::vector<RankStream>& saved, size_t r, int64_t e, size_t num_shards,
                                    uint64_t seed) {
  const RankStream& s = saved[r];
  const std::vector<ShardStart>* planned = nullptr;
  if (e == s.position.epoch) {
    planned = &s.plan;
  } else if (s.then_epoch >= 0 && e > s.position.epoch) {
    if (e < s.then_epoch) return {};  // an epoch it skips: nothing of it was left for it
    if (e == s.then_epoch) planned = &s.then_plan;
  }
  if (planned && !planned->empty()) return *planned;
  std::vector<ShardStart> out;
  for (size_t k : shard_assignment(num_shards, seed, e, static_cast<int>(r), static_cast<int>(saved.size())))
    out.push_back({static_cast<int64_t>(k), 0});
  return out;
}

// One shard from each saved rank's list in turn, then the next ones, to `world` new ranks.
std::vector<std::vector<ShardStart>> deal(const std::vector<std::vector<ShardStart>>& left, int world) {
  std::vector<std::vector<ShardStart>> out(static_cast<size_t>(world));
  size_t dealt = 0;
  for (size_t round = 0;; ++round) {
    bool any = false;
    for (const auto& l : left) {
      if (round >= l.size()) continue;
      any = true;
      out[dealt++ % out.size()].push_back(l[round]);
    }
    if (!any) break;
  }
  return out;
}

}  // namespace

std::vector<RankStream> reshard_streams(const std::vector<RankStream>& saved, size_t num_shards, uint64_t seed, int world) {
  if (saved.empty()) throw std::invalid_argument("resharding streams: no saved rank positions");
  if (world < 1) throw std::invalid_argument(fmt::format("resharding streams: world size {} is below 1", world));
  int64_t epoch = saved[0].position.epoch, last = epoch;  // the first and last epoch the saved states reach into
  bool straddles = false;
  for (const auto& s : saved) {
    epoch = std::min(epoch, s.position.epoch);
    last = std::max(last, s.position.epoch);
    if (s.then_epoch >= 0) last = std::max(last, s.then_plan.empty() ? s.then_epoch - 1 : s.then_epoch);
    straddles = straddles || s.then_epoch >= 0;
  }
  straddles = straddles || last > epoch;
  if (last > epoch + 1) {
    size_t r = 0;
    while (saved[r].position.epoch != epoch) ++r;
    throw std::invalid_argument(fmt::format(
        "resharding streams: the saved ranks span more than two epochs (rank {} in epoch {}, the states reach into "
        "epoch {}); resume at the world size they were saved at ({} ranks)",
        r, epoch, last, saved.size()));
  }
  // What is left of epoch e by each saved rank.
  auto left_of = [&](int64_t e) {
    std::vector<std::vector<ShardStart>> left(saved.size());
    for (size_t r = 0; r < saved.size(); ++r) {
      const auto& pos = saved[r].position;
      if (e < pos.epoch) continue;  // finished
      const auto list = saved_share(saved, r, e, num_shards, seed);
      const int64_t from = e == pos.epoch ? pos.shard : 0;
      if (from < 0 || pos.sample < 0 || from > static_cast<int64_t>(list.size()))
        throw std::invalid_argument(fmt::format("resharding streams: rank {}'s position (shard {}, sample {}) is "
                                                "outside its {} shards of epoch {}",
                                                r, pos.shard, pos.sample, list.size(), e));
      for (auto k = static_cast<size_t>(from); k < list.size(); ++k) {
        ShardStart st = list[k];
        if (e == pos.epoch && k == static_cast<size_t>(from)) st.sample = std::max(st.sample, pos.sample);
        if (st.shard < 0 || static_cast<size_t>(st.shard) >= num_shards)
          throw std::invalid_argument(fmt::format("resharding streams: rank {}'s plan names shard {} of {}", r, st.shard,
                                                  num_shards));
        left[r].push_back(st);
      }
    }
    return left;
  };
  const auto first = deal(left_of(epoch), world);
  const auto second = straddles ? deal(left_of(epoch + 1), world) : std::vector<std::vector<ShardStart>>{};
  std::vector<RankStream> out(static_cast<size_t>(world));
  for (size_t i = 0; i < out.size(); ++i) {
    auto& o = out[i];
    const std::vector<ShardStart> none;
    const auto& a = first[i];
    const auto& b = straddles ? second[i] : none;
    if (!a.empty()) {
      o.position = {epoch, 0, a.front().sample};
      o.plan = a;
      if (straddles) {  // then its part of epoch + 1, or straight on to epoch + 2 where it has none
        o.then_epoch = b.empty() ? epoch + 2 : epoch + 1;
        o.then_plan = b;
      }
    } else if (!b.empty()) {  // nothing left of this epoch for it
      o.position = {epoch + 1, 0, b.front().sample};
      o.plan = b;
    } else {
      o.position = {epoch + (straddles ? 2 : 1), 0, 0};
    }
  }
  return out;
}

struct ShardStream::Open {
  std::unique_ptr<TarReader> reader;
  std::optional<std::string> header;  // the member read ahead: the first of the next group
  std::exception_ptr damage;          // reading ahead hit damage: the group before it is whole, the next call throws

  void advance() {
    try {
      header = reader->next_header();
    } catch (...) {
      damage = std::current_exception();
      header.reset();
    }
  }

  static std::string key_of(const std::string& name, std::string* ext) {
    const size_t slash = name.rfind('/');
    const size_t dot = name.find('.', slash == std::string::npos ? 0 : slash + 1);
    if (dot == std::string::npos) return {};
    if (ext) *ext = name.substr(dot + 1);
    return name.substr(0, dot);
  }

  struct Member {
    std::string name, ext, data;
  };
  // The next group of adjacent members that share a key (members without a key are passed over); nullopt at
  // the end of the shard. With `with_data` false, the bytes are skipped unread.
  std::optional<std::pair<std::string, std::vector<Member>>> next_group(bool with_data) {
    while (header && key_of(*header, nullptr).empty()) advance();
    if (!header) {
      if (damage) std::rethrow_exception(damage);
      return std::nullopt;
    }
    std::string ext;
    const std::string key = key_of(*header, &ext);
    std::vector<Member> members;
    while (header) {
      std::string e;
      if (key_of(*header, &e) != key) break;
      members.push_back({*header, e, with_data ? reader->read_data() : std::string()});
      advance();
    }
    return std::make_pair(key, std::move(members));
  }
};

ShardStream::ShardStream(const std::string& path, const ReadOptions& options, uint64_t seed, int rank, int world_size)
    : name_(path),
      shards_(resolve_shards(path, false)),
      options_(options),
      log_(options.log ? options.log : std::make_shared<BadInputLog>(&std::cerr)),
      seed_(seed),
      rank_(rank),
      world_size_(world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw std::invalid_argument(fmt::format("{}: rank {} is outside world size {}", path, rank, world_size));
  if (shards_.size() < static_cast<size_t>(world_size))
    throw std::runtime_error(fmt::format("{}: {} shards cannot stream to {} ranks: each rank reads whole shards, so "
                                         "it needs at least one (split the data into more shards)",
                                         path, shards_.size(), world_size));
  seek({});
}

ShardStream::~ShardStream() = default;

void ShardStream::seek(const StreamPosition& p, std::vector<ShardStart> plan) {
  if (plan.empty()) {
    mine_ = shard_assignment(shards_.size(), seed_, p.epoch, rank_, world_size_);
  } else {
    mine_.clear();
    for (size_t i = 0; i < plan.size(); ++i) {
      if (plan[i].shard < 0 || static_cast<size_t>(plan[i].shard) >= shards_.size() || plan[i].sample < 0)
        throw std::invalid_argument(fmt::format("{}: stream plan entry {} (shard {}, sample {}) is outside the {} shards",
                                                name_, i, plan[i].shard, plan[i].sample, shards_.size()));
      mine_.push_back(static_cast<size_t>(plan[i].shard));
    }
  }
  plan_ = std::move(plan);
  if (p.epoch < 0 || p.shard < 0 || p.sample < 0 || p.shard > static_cast<int64_t>(mine_.size()))
    throw std::invalid_argument(fmt::format("{}: stream position (epoch {}, shard {}, sample {}) is outside rank {}'s "
                                            "{} shards of that epoch",
                                            name_, p.epoch, p.shard, p.sample, rank_, mine_.size()));
  pos_ = p;
  open_.reset();
}

StreamPosition ShardStream::position() const { return pos_; }

int64_t ShardStream::start_sample(int64_t shard) const {
  return shard < static_cast<int64_t>(plan_.size()) ? plan_[static_cast<size_t>(shard)].sample : 0;
}

std::vector<std::string> ShardStream::epoch_shards() const {
  std::vector<std::string> out;
  for (size_t k : mine_) out.push_back(shards_[k]);
  return out;
}

// Opens the current shard and skips the groups already read; false (reported) if it cannot be read.
bool ShardStream::open_current() {
  const std::string& shard = shards_[mine_[static_cast<size_t>(pos_.shard)]];
  try {
    auto o = std::make_unique<Open>();
    o->reader = std::make_unique<TarReader>(shard);
    o->advance();
    for (int64_t k = 0; k < pos_.sample; ++k) {
      if (!o->next_group(false))
        throw std::runtime_error(fmt::format("has only {} sample groups, but the position is sample {}", k, pos_.sample));
    }
    open_ = std::move(o);
    return true;
  } catch (const std::exception& e) {
    log_->report(bad::kCorruptTar, shard, shard, e.what());
    ++bad_;
    return false;
  }
}

std::optional<RawSample> ShardStream::next() {
  while (pos_.shard < static_cast<int64_t>(mine_.size())) {
    const std::string& shard = shards_[mine_[static_cast<size_t>(pos_.shard)]];
    if (!open_ && !open_current()) {
      ++pos_.shard;
      pos_.sample = start_sample(pos_.shard);
      continue;
    }
    std::optional<std::pair<std::string, std::vector<Open::Member>>> group;
    try {
      group = open_->next_group(true);
    } catch (const std::exception& e) {
      log_->report(bad::kCorruptTar, shard, shard, e.what());
      ++bad_;
      group.reset();
    }
    if (!group) {  // the end of the shard (or the damage that ends it)
      open_.reset();
      ++pos_.shard;
      pos_.sample = start_sample(pos_.shard);
      continue;
    }
    ++pos_.sample;
    const auto& [key, members] = *group;
    const std::string where = shard + ":" + key;
    RawSample r;
    r.source = name_;
    r.id = key;
    const std::string *txt = nullptr, *js = nullptr;
    bool empty_image = false;
    for (const auto& m : members) {
      if (is_image_ext(m.ext)) {
        empty_image = empty_image || m.data.empty();
        r.images.push_back(m.data);
        r.image_paths.push_back(shard + ":" + m.name);
      } else if (m.ext == "txt") {
        txt = &m.data;
      } else if (m.ext == "json") {
        js = &m.data;
      }
    }
    bool ok = true;
    if (r.images.empty()) {
      log_->report(bad::kMissingImage, shard, where, "no image member (.jpg/.png/.webp/...) for this key");
      ok = false;
    } else if (empty_image) {
      log_->report(bad::kCorruptTar, shard, where, "empty image member");
      ok = false;
    } else {
      ok = pair_caption(txt, js, shard, where, *log_, r.caption);
    }
    if (!ok) {
      ++bad_;
      if (good_ + bad_ >= 200) check_bad_fraction(name_, good_, bad_, options_.max_bad_fraction, *log_);
      continue;
    }
    ++good_;
    return r;
  }
  return std::nullopt;
}

}  // namespace owl2::data
