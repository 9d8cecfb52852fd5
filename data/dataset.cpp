// Dataset readers (tar shards, JSONL, LLaVA JSON), mixtures, bad-input accounting and verification.
#include "data/dataset.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <sstream>
#include <stdexcept>

#include "data/rng.h"
#include "data/tar.h"
#include "data/video.h"

namespace owl2::data {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Bad input

BadInputLog::BadInputLog(std::ostream* out, int messages_per_reason)
    : out_(out), messages_per_reason_(messages_per_reason) {}

void BadInputLog::report(const std::string& reason, const std::string& file, const std::string& where,
                         const std::string& detail) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = ++counts_[reason];
  ++per_file_[file];
  if (!out_) return;
  // Rate limit: the first few of each reason, then every 1000th with the running count.
  if (n <= static_cast<size_t>(messages_per_reason_)) {
    *out_ << fmt::format("owl2: skipped ({}) {}: {}\n", reason, where, detail);
    if (n == static_cast<size_t>(messages_per_reason_))
      *out_ << fmt::format("owl2: further '{}' messages are shown every 1000th only\n", reason);
  } else if (n % 1000 == 0) {
    *out_ << fmt::format("owl2: skipped ({}) {}: {} [{} so far]\n", reason, where, detail, n);
  }
}

size_t BadInputLog::total() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t t = 0;
  for (const auto& [_, n] : counts_) t += n;
  return t;
}

std::map<std::string, size_t> BadInputLog::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

std::vector<std::pair<std::string, size_t>> BadInputLog::worst_files(size_t k) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, size_t>> v(per_file_.begin(), per_file_.end());
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (v.size() > k) v.resize(k);
  return v;
}

std::string BadInputLog::summary() const {
  std::string s;
  for (const auto& [reason, n] : counts()) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", reason, n);
  return s;
}

void check_bad_fraction(const std::string& dataset, size_t good, size_t bad, double max_fraction,
                        const BadInputLog& log) {
  const size_t total = good + bad;
  if (total == 0 || static_cast<double>(bad) <= max_fraction * static_cast<double>(total)) return;
  std::string worst;
  for (const auto& [file, n] : log.worst_files()) worst += fmt::format("\n  {} ({} bad)", file, n);
  throw std::runtime_error(fmt::format(
      "{}: {} of {} entries are bad ({:.1f}%), over the limit of {:.1f}% (max_bad_fraction {}): {}; worst files:{}",
      dataset, bad, total, 100.0 * static_cast<double>(bad) / static_cast<double>(total), 100.0 * max_fraction,
      max_fraction, log.summary(), worst));
}

int count_image_placeholders(const std::string& text) {
  static const std::string tok = "<|image|>";
  int n = 0;
  for (size_t p = text.find(tok); p != std::string::npos; p = text.find(tok, p + tok.size())) ++n;
  return n;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::shared_ptr<BadInputLog> log_of(const ReadOptions& o) {
  return o.log ? o.log : std::make_shared<BadInputLog>(&std::cerr);
}

std::string read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open", path));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

SampleInfo info_of(size_t num_images, const std::vector<Turn>& turns, const std::string& caption) {
  SampleInfo info;
  info.num_images = static_cast<int>(num_images);
  info.text_chars = static_cast<int64_t>(caption.size());
  for (const auto& t : turns) info.text_chars += static_cast<int64_t>(t.value.size());
  return info;
}

// ---------------------------------------------------------------------------------------------
// Tar shards

}  // namespace

bool is_image_ext(std::string ext) {
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* e : {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"})
    if (ext == e) return true;
  return false;
}

// The shards a JSON shard list names, relative to its folder.
static std::vector<std::string> read_shard_list(const std::string& path) {
  std::ifstream f(path);
  const json j = json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.is_array())
    throw std::runtime_error(fmt::format("{}: a shard list must be a JSON array of shard paths", path));
  const fs::path root = fs::path(path).parent_path();
  std::vector<std::string> shards;
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_string()) throw std::runtime_error(fmt::format("{}: entry {} is not a string (a shard path)", path, i));
    const fs::path p = j[i].get<std::string>();
    shards.push_back((p.is_absolute() ? p : root / p).string());
  }
  return shards;
}

std::vector<std::string> resolve_shards(const std::string& path, bool check_exist) {
  std::vector<std::string> shards;
  if (path.find('{') != std::string::npos || is_shard_list(path)) {
    shards = path.find('{') != std::string::npos ? expand_shard_pattern(path) : read_shard_list(path);
    if (shards.empty()) throw std::runtime_error(fmt::format("{}: the shard list names no shards", path));
    if (check_exist) {
      for (const auto& s : shards) {
        if (!fs::is_regular_file(s))
          throw std::runtime_error(fmt::format("{}: shard {} does not exist ({} shards named)", path, s, shards.size()));
      }
    }
  } else if (fs::is_directory(path)) {
    for (const auto& e : fs::directory_iterator(path)) {
      const std::string n = e.path().filename().string();
      if (e.is_regular_file() && (ends_with(n, ".tar") || ends_with(n, ".tar.gz") || ends_with(n, ".tgz")))
        shards.push_back(e.path().string());
    }
    std::sort(shards.begin(), shards.end());
    if (shards.empty()) throw std::runtime_error(fmt::format("{}: no .tar shards in this folder", path));
  } else {
    if (!fs::exists(path)) throw std::runtime_error(fmt::format("{}: no such tar file or folder", path));
    shards.push_back(path);
  }
  return shards;
}

bool pair_caption(const std::string* txt, const std::string* json_text, const std::string& shard,
                  const std::string& where, BadInputLog& log, std::string& caption) {
  if (txt) {
    caption = *txt;
    return true;
  }
  if (!json_text) {
    log.report(bad::kMissingCaption, shard, where, "neither .txt nor .json member for this key");
    return false;
  }
  const json j = json::parse(*json_text, nullptr, false);
  if (j.is_discarded()) {
    log.report(bad::kMalformedJson, shard, where + ".json", "not valid JSON");
    return false;
  }
  if (!j.is_object() || !j.contains("caption") || !j["caption"].is_string()) {
    log.report(bad::kMissingCaption, shard, where + ".json", "no string \"caption\" field");
    return false;
  }
  caption = j["caption"].get<std::string>();
  return true;
}

namespace {

class TarShards : public Dataset {
 public:
  TarShards(const std::string& path, const ReadOptions& options) : name_(path) {
    auto log = log_of(options);
    shards_ = resolve_shards(path, true);
    size_t bad = 0;
    for (uint32_t s = 0; s < shards_.size(); ++s) bad += index_shard(s, *log);
    check_bad_fraction(name_, items_.size(), bad, options.max_bad_fraction, *log);
  }

  size_t size() const override { return items_.size(); }
  const std::string& name() const override { return name_; }
  SampleInfo info(size_t i) const override { return info_of(items_.at(i).images.size(), {}, items_.at(i).caption); }

  RawSample get(size_t i) const override { return read(i, true); }
  RawSample text(size_t i) const override { return read(i, false); }

  RawSample read(size_t i, bool with_images) const {
    const Item& it = items_.at(i);
    const std::string& shard = shards_[it.shard];
    RawSample r;
    r.source = name_;
    r.id = it.key;
    r.caption = it.caption;
    for (const auto& m : it.images) {
      if (with_images) r.images.push_back(read_tar_member(shard, m));
      r.image_paths.push_back(shard + ":" + m.name);
    }
    return r;
  }

 private:
  struct Item {
    uint32_t shard = 0;
    std::string key;
    std::vector<TarMember> images;
    std::string caption;
  };

  // Indexes one shard; returns the number of bad groups.
  size_t index_shard(uint32_t s, BadInputLog& log) {
    const std::string& shard = shards_[s];
    TarIndex idx;
    try {
      idx = index_tar(shard);
    } catch (const std::exception& e) {
      log.report(bad::kCorruptTar, shard, shard, e.what());
      return 1;
    }
    struct Group {
      std::vector<TarMember> images;
      const TarMember* txt = nullptr;
      const TarMember* js = nullptr;
    };
    std::vector<std::string> order;
    std::map<std::string, Group> groups;
    for (const auto& m : idx.members) {
      const size_t slash = m.name.rfind('/');
      const size_t dot = m.name.find('.', slash == std::string::npos ? 0 : slash + 1);
      if (dot == std::string::npos) continue;
      const std::string key = m.name.substr(0, dot), ext = m.name.substr(dot + 1);
      if (!groups.count(key)) order.push_back(key);
      Group& g = groups[key];
      if (is_image_ext(ext)) g.images.push_back(m);
      else if (ext == "txt") g.txt = &m;
      else if (ext == "json") g.js = &m;
    }
    size_t bad = 0;
    if (!idx.error.empty()) {
      log.report(bad::kCorruptTar, shard, shard, idx.error);
      ++bad;
    }
    for (const auto& key : order) {
      const Group& g = groups[key];
      const std::string where = shard + ":" + key;
      if (g.images.empty()) {
        log.report(bad::kMissingImage, shard, where, "no image member (.jpg/.png/.webp/...) for this key");
        ++bad;
        continue;
      }
      if (std::any_of(g.images.begin(), g.images.end(), [](const TarMember& m) { return m.size == 0; })) {
        log.report(bad::kCorruptTar, shard, where, "empty image member");
        ++bad;
        continue;
      }
      Item item{s, key, g.images, ""};
      try {
        const std::string txt = g.txt ? read_tar_member(shard, *g.txt) : std::string();
        const std::string js = !g.txt && g.js ? read_tar_member(shard, *g.js) : std::string();
        if (!pair_caption(g.txt ? &txt : nullptr, g.js ? &js : nullptr, shard, where, log, item.caption)) {
          ++bad;
          continue;
        }
      } catch (const std::exception& e) {
        log.report(bad::kCorruptTar, shard, where, e.what());
        ++bad;
        continue;
      }
      items_.push_back(std::move(item));
    }
    return bad;
  }

  std::string name_;
  std::vector<std::string> shards_;
  std::vector<Item> items_;
};

// ---------------------------------------------------------------------------------------------
// JSONL and LLaVA JSON

struct Entry {
  std::string id;
  std::vector<std::string> image_paths;  // resolved; for a video, "clip#frame-k-of-N" per frame slot
  std::vector<Turn> turns;
  std::string caption;
  std::string video;                     // resolved clip path: its frames are the images
};

class EntryDataset : public Dataset {
 public:
  EntryDataset(std::string name, std::vector<Entry> entries) : name_(std::move(name)), entries_(std::move(entries)) {}
  size_t size() const override { return entries_.size(); }
  const std::string& name() const override { return name_; }
  SampleInfo info(size_t i) const override {
    const Entry& e = entries_.at(i);
    return info_of(e.image_paths.size(), e.turns, e.caption);
  }
  RawSample get(size_t i) const override {
    RawSample r = text(i);
    const Entry& e = entries_.at(i);
    if (!e.video.empty()) {  // the frames, sampled as video.h says, as lossless images
      for (const auto& f : decode_video(e.video, static_cast<int64_t>(e.image_paths.size())).frames)
        r.images.push_back(encode_frame_bmp(f));
      return r;
    }
    for (const auto& p : r.image_paths) r.images.push_back(read_file_bytes(p));
    return r;
  }
  RawSample text(size_t i) const override {
    const Entry& e = entries_.at(i);
    RawSample r;
    r.source = name_;
    r.id = e.id;
    r.turns = e.turns;
    r.caption = e.caption;
    r.image_paths = e.image_paths;
    return r;
  }

 private:
  std::string name_;
  std::vector<Entry> entries_;
};

// A rejected entry: the reason and what was wrong.
struct Reject {
  const char* reason;
  std::string detail;
};

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
}

// Parses one LLaVA / JSONL entry into `e`; returns a Reject when it must be skipped.
std::optional<Reject> parse_entry(const json& j, const fs::path& image_root, bool check_files, bool allow_pairs,
                                  int64_t video_frames, VideoLayout video_layout, Entry& e) {
  if (!j.is_object()) return Reject{bad::kBadEntry, fmt::format("expected an object, found {}", j.type_name())};
  if (j.contains("id")) {
    const json& id = j["id"];
    if (id.is_string()) e.id = id.get<std::string>();
    else if (id.is_number_integer()) e.id = std::to_string(id.get<int64_t>());
    else return Reject{bad::kBadEntry, fmt::format("\"id\" must be a string or an integer, found {}", id.type_name())};
  }
  std::vector<std::string> images;
  if (j.contains("image") && !j["image"].is_null()) {
    const json& im = j["image"];
    if (im.is_string()) images.push_back(im.get<std::string>());
    else if (im.is_array()) {
      for (const auto& x : im) {
        if (!x.is_string()) return Reject{bad::kBadEntry, "\"image\" list holds a non-string"};
        images.push_back(x.get<std::string>());
      }
    } else {
      return Reject{bad::kBadEntry, fmt::format("\"image\" must be a string or a list, found {}", im.type_name())};
    }
  }
  // A video: its frames fill `video_frames` image slots, all before the text (docs/datasets.md, "Video").
  std::string video;
  if (j.contains("video") && !j["video"].is_null()) {
    if (!j["video"].is_string()) return Reject{bad::kBadEntry, fmt::format("\"video\" must be a string, found {}", j["video"].type_name())};
    if (!images.empty()) return Reject{bad::kBadEntry, "both \"image\" and \"video\": one sample holds one or the other"};
    video = j["video"].get<std::string>();
  }
  const std::string frame_slots = video.empty() ? std::string() : video_frame_slots(video_frames, video_layout);
  if (j.contains("conversations")) {
    const json& conv = j["conversations"];
    if (!conv.is_array() || conv.empty()) return Reject{bad::kBadEntry, "\"conversations\" must be a non-empty list"};
    if (j.contains("system")) {
      if (!j["system"].is_string()) return Reject{bad::kBadEntry, "\"system\" must be a string"};
      e.turns.push_back({"system", j["system"].get<std::string>()});
    }
    for (size_t t = 0; t < conv.size(); ++t) {
      const json& turn = conv[t];
      if (!turn.is_object() || !turn.contains("from") || !turn.contains("value") || !turn["from"].is_string() ||
          !turn["value"].is_string())
        return Reject{bad::kBadEntry, fmt::format("turn {} needs string \"from\" and \"value\"", t)};
      std::string from = turn["from"].get<std::string>(), value = turn["value"].get<std::string>();
      if (from != "human" && from != "gpt" && from != "system")
        return Reject{bad::kBadEntry, fmt::format("turn {} has from '{}' (expected human, gpt or system)", t, from)};
      replace_all(value, "<image>", "<|image|>");  // LLaVA's placeholder spelling
      if (!video.empty()) {
        if (count_image_placeholders(value) > 0) {
          return Reject{bad::kPlaceholderMismatch, fmt::format("turn {} of a video sample has an image placeholder; "
                                                               "write <video> (or nothing) where the frames go", t)};
        }
        replace_all(value, "<video>\n", frame_slots);
        replace_all(value, "<video>", frame_slots);
      }
      e.turns.push_back({std::move(from), std::move(value)});
    }
    if (!video.empty()) {  // no <video>: the frames go in front of the first human turn
      int placed = 0;
      for (const auto& t : e.turns) placed += count_image_placeholders(t.value);
      if (placed == 0) {
        for (auto& t : e.turns) {
          if (t.from == "human") {
            t.value = frame_slots + t.value;
            break;
          }
        }
      }
    }
    if (std::none_of(e.turns.begin(), e.turns.end(), [](const Turn& t) { return t.from == "gpt"; }))
      return Reject{bad::kBadEntry, "no gpt turn to learn from"};
  } else if (allow_pairs && (j.contains("caption") || j.contains("text"))) {
    const json& c = j.contains("caption") ? j["caption"] : j["text"];
    if (!c.is_string()) return Reject{bad::kBadEntry, "\"caption\" must be a string"};
    if (images.size() != 1)
      return Reject{bad::kMissingImage, fmt::format("an image-text pair needs exactly one image, found {}", images.size())};
    e.caption = c.get<std::string>();
  } else if (allow_pairs && j.contains("question") && j.contains("answer")) {
    const json &q = j.contains("prompt") ? j["prompt"] : j["question"], &a = j["answer"];
    if (!q.is_string() || !a.is_string()) return Reject{bad::kBadEntry, "\"question\" and \"answer\" must be strings"};
    std::string human = frame_slots;
    for (size_t k = 0; k < images.size(); ++k) human += "<|image|>\n";
    e.turns = {{"human", human + q.get<std::string>()}, {"gpt", a.get<std::string>()}};
  } else {
    return Reject{bad::kBadEntry, allow_pairs ? "no \"conversations\", \"caption\" or \"question\"/\"answer\""
                                              : "no \"conversations\""};
  }
  if (!video.empty()) {
    if (e.turns.empty()) return Reject{bad::kBadEntry, "a video sample needs \"conversations\" or \"question\"/\"answer\""};
    int placeholders = 0;
    for (const auto& t : e.turns) placeholders += count_image_placeholders(t.value);
    if (placeholders != video_frames) {
      return Reject{bad::kPlaceholderMismatch, fmt::format("{} image placeholders for the {} frames of the video "
                                                           "(several <video> tags, or none in a human turn)",
                                                           placeholders, video_frames)};
    }
    const fs::path p = fs::path(video).is_absolute() ? fs::path(video) : image_root / video;
    if (check_files && !fs::is_regular_file(p)) return Reject{bad::kMissingImage, fmt::format("no video file {}", p.string())};
    e.video = p.string();
    for (int64_t k = 0; k < video_frames; ++k) e.image_paths.push_back(fmt::format("{}#frame-{}-of-{}", e.video, k, video_frames));
    return std::nullopt;
  }
  if (!e.turns.empty()) {
    int placeholders = 0;
    for (const auto& t : e.turns) placeholders += count_image_placeholders(t.value);
    if (placeholders != static_cast<int>(images.size()))
      return Reject{bad::kPlaceholderMismatch,
                    fmt::format("{} image placeholders, {} images", placeholders, images.size())};
  }
  for (const auto& im : images) {
    const fs::path p = fs::path(im).is_absolute() ? fs::path(im) : image_root / im;
    if (check_files && !fs::is_regular_file(p)) return Reject{bad::kMissingImage, fmt::format("no file {}", p.string())};
    e.image_paths.push_back(p.string());
  }
  return std::nullopt;
}

fs::path root_of(const std::string& path, const ReadOptions& o) {
  if (!o.image_root.empty()) return o.image_root;
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

}  // namespace

std::vector<std::string> expand_shard_pattern(const std::string& pattern) {
  constexpr size_t kMaxNames = 10'000'000;
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument(fmt::format("shard pattern '{}': {}", pattern, why));
  };
  const size_t open = pattern.find('{');
  if (open == std::string::npos) {
    if (pattern.find('}') != std::string::npos) throw bad("'}' without '{'");
    return {pattern};
  }
  const size_t close = pattern.find('}', open);
  if (close == std::string::npos) throw bad("'{' without '}'");
  const std::string body = pattern.substr(open + 1, close - open - 1);
  if (body.find('{') != std::string::npos) throw bad("nested braces");
  std::vector<std::string> choices;
  if (const size_t dots = body.find(".."); dots != std::string::npos) {
    const std::string a = body.substr(0, dots), b = body.substr(dots + 2);
    const auto digits = [](const std::string& x) {
      return !x.empty() && x.size() <= 18 && std::all_of(x.begin(), x.end(), [](unsigned char c) { return std::isdigit(c); });
    };
    if (!digits(a) || !digits(b)) throw bad(fmt::format("'{{{}}}' is not a range of non-negative integers", body));
    const int64_t lo = std::stoll(a), hi = std::stoll(b);
    if (lo > hi) throw bad(fmt::format("the range {{{}}} decreases", body));
    if (static_cast<uint64_t>(hi - lo) >= kMaxNames) throw bad(fmt::format("more than {} names", kMaxNames));
    const size_t width = (a.size() > 1 && a[0] == '0') || a.size() == b.size() ? a.size() : 0;
    for (int64_t i = lo; i <= hi; ++i) choices.push_back(fmt::format("{:0{}d}", i, width));
  } else {
    size_t from = 0;
    for (size_t comma; (comma = body.find(',', from)) != std::string::npos; from = comma + 1)
      choices.push_back(body.substr(from, comma - from));
    choices.push_back(body.substr(from));
  }
  const auto rest = expand_shard_pattern(pattern.substr(close + 1));
  if (choices.size() * rest.size() > kMaxNames) throw bad(fmt::format("more than {} names", kMaxNames));
  std::vector<std::string> out;
  out.reserve(choices.size() * rest.size());
  const std::string head = pattern.substr(0, open);
  for (const auto& c : choices)
    for (const auto& r : rest) out.push_back(head + c + r);
  return out;
}

bool is_shard_list(const std::string& path) {
  if (!ends_with(path, ".json") || !fs::is_regular_file(path)) return false;
  std::ifstream f(path);
  char c = 0;
  bool in_array = false;
  for (int n = 0; n < 4096 && f.get(c); ++n) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (!in_array) {
      if (c != '[') return false;
      in_array = true;
      continue;
    }
    return c == '"';
  }
  return false;
}


std::shared_ptr<Dataset> open_tar_shards(const std::string& path, const ReadOptions& options) {
  return std::make_shared<TarShards>(path, options);
}

std::shared_ptr<Dataset> open_jsonl(const std::string& path, const ReadOptions& options) {
  auto log = log_of(options);
  std::ifstream f(path);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open JSONL file", path));
  const fs::path root = root_of(path, options);
  std::vector<Entry> entries;
  size_t bad = 0, lineno = 0;
  std::string line;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, lineno);
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) {
      log->report(bad::kMalformedJson, path, where, "not valid JSON");
      ++bad;
      continue;
    }
    Entry e;
    if (auto r = parse_entry(j, root, options.check_files, true, options.video_frames, options.video_layout, e)) {
      log->report(r->reason, path, where, r->detail);
      ++bad;
      continue;
    }
    if (e.id.empty()) e.id = std::to_string(lineno);
    entries.push_back(std::move(e));
  }
  check_bad_fraction(path, entries.size(), bad, options.max_bad_fraction, *log);
  return std::make_shared<EntryDataset>(path, std::move(entries));
}

std::shared_ptr<Dataset> open_llava_json(const std::string& path, const ReadOptions& options) {
  auto log = log_of(options);
  json doc;
  try {
    doc = json::parse(read_file_bytes(path));
  } catch (const json::parse_error& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON (byte {}): {}", path, e.byte, e.what()));
  }
  if (!doc.is_array())
    throw std::runtime_error(fmt::format("{}: expected a JSON list of samples, found {}", path, doc.type_name()));
  const fs::path root = root_of(path, options);
  std::vector<Entry> entries;
  size_t bad = 0;
  for (size_t i = 0; i < doc.size(); ++i) {
    Entry e;
    if (auto r = parse_entry(doc[i], root, options.check_files, false, options.video_frames, options.video_layout, e)) {
      std::string where = fmt::format("{}[{}]", path, i);
      if (doc[i].is_object() && doc[i].contains("id")) where += " id " + doc[i]["id"].dump();
      log->report(r->reason, path, where, r->detail);
      ++bad;
      continue;
    }
    if (e.id.empty()) e.id = std::to_string(i);
    entries.push_back(std::move(e));
  }
  check_bad_fraction(path, entries.size(), bad, options.max_bad_fraction, *log);
  return std::make_shared<EntryDataset>(path, std::move(entries));
}

std::shared_ptr<Dataset> open_dataset(const std::string& path, const ReadOptions& options) {
  const auto ends = [&](const char* s) { return ends_with(path, s); };
  if (fs::is_directory(path) || ends(".tar") || ends(".tar.gz") || ends(".tgz") || path.find('{') != std::string::npos ||
      is_shard_list(path))
    return open_tar_shards(path, options);
  if (ends(".jsonl")) return open_jsonl(path, options);
  if (ends(".json")) return open_llava_json(path, options);
  throw std::invalid_argument(fmt::format(
      "{}: unknown dataset kind (expected a folder of tar shards, .tar, .tar.gz, .jsonl or LLaVA .json)", path));
}

// ---------------------------------------------------------------------------------------------
// Mixtures

namespace {

class Mixture : public Dataset {
 public:
  Mixture(std::vector<MixtureSource> sources, size_t size, uint64_t seed) : sources_(std::move(sources)) {
    if (sources_.empty()) throw std::invalid_argument("mixture: no sources");
    double wsum = 0;
    size_t nsum = 0;
    for (size_t k = 0; k < sources_.size(); ++k) {
      const auto& s = sources_[k];
      if (!s.dataset) throw std::invalid_argument(fmt::format("mixture: source {} is null", k));
      if (!(s.weight >= 0)) throw std::invalid_argument(fmt::format("mixture: source {} ({}) has weight {}, expected >= 0", k, s.dataset->name(), s.weight));
      if (s.weight > 0 && s.dataset->size() == 0)
        throw std::invalid_argument(fmt::format("mixture: source {} ({}) has weight {} but no samples", k, s.dataset->name(), s.weight));
      wsum += s.weight;
      nsum += s.dataset->size();
      name_ += (name_.empty() ? "mixture(" : ", ") + s.dataset->name() + fmt::format(" x{}", s.weight);
    }
    name_ += ")";
    if (wsum <= 0) throw std::invalid_argument("mixture: all weights are zero");
    const size_t total = size ? size : nsum;
    // Largest-remainder apportionment of `total` over the weights.
    std::vector<size_t> counts(sources_.size());
    std::vector<std::pair<double, size_t>> rem;
    size_t given = 0;
    for (size_t k = 0; k < sources_.size(); ++k) {
      const double exact = static_cast<double>(total) * sources_[k].weight / wsum;
      counts[k] = static_cast<size_t>(exact);
      given += counts[k];
      rem.push_back({exact - static_cast<double>(counts[k]), k});
    }
    std::stable_sort(rem.begin(), rem.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t r = 0; given < total; ++r, ++given) ++counts[rem[r % rem.size()].second];
    for (size_t k = 0; k < sources_.size(); ++k) {
      const size_t n = sources_[k].dataset->size();
      std::vector<size_t> perm;
      for (size_t c = 0, cycle = 0; c < counts[k]; ++c) {
        if (c % n == 0) {
          Rng rng(mix_seed(seed, k, cycle++));
          perm = permutation(n, rng);
        }
        entries_.push_back({static_cast<uint32_t>(k), perm[c % n]});
      }
    }
  }
  size_t size() const override { return entries_.size(); }
  const std::string& name() const override { return name_; }
  RawSample get(size_t i) const override {
    const auto& [k, j] = entries_.at(i);
    return sources_[k].dataset->get(j);
  }
  RawSample text(size_t i) const override {
    const auto& [k, j] = entries_.at(i);
    return sources_[k].dataset->text(j);
  }
  SampleInfo info(size_t i) const override {
    const auto& [k, j] = entries_.at(i);
    return sources_[k].dataset->info(j);
  }

 private:
  std::vector<MixtureSource> sources_;
  std::vector<std::pair<uint32_t, size_t>> entries_;
  std::string name_;
};

}  // namespace

std::shared_ptr<Dataset> make_mixture(const std::vector<MixtureSource>& sources, size_t size, uint64_t seed) {
  return std::make_shared<Mixture>(sources, size, seed);
}

// ---------------------------------------------------------------------------------------------
// Verification

VerifyReport verify_dataset(const std::string& path, double max_bad_fraction, bool decode, std::ostream* messages) {
  ReadOptions o;
  o.log = std::make_shared<BadInputLog>(messages);
  o.max_bad_fraction = 1.0;
  const auto ds = open_dataset(path, o);
  VerifyReport rep;
  for (size_t i = 0; i < ds->size(); ++i) {
    RawSample s;
    try {
      s = ds->get(i);
    } catch (const std::exception& e) {
      o.log->report(bad::kMissingImage, path, fmt::format("{} sample {}", path, i), e.what());
      continue;
    }
    bool ok = true;
    for (size_t k = 0; k < s.images.size() && decode; ++k) {
      const cv::Mat raw(1, static_cast<int>(s.images[k].size()), CV_8UC1, s.images[k].data());
      if (s.images[k].empty() || cv::imdecode(raw, cv::IMREAD_UNCHANGED).empty()) {
        // Count per file: the shard for "shard.tar:member" paths, else the image file itself.
        const std::string& where = s.image_paths[k];
        std::string file = where;
        for (size_t c = where.find(':'); c != std::string::npos; c = where.find(':', c + 1)) {
          const std::string head = where.substr(0, c);
          if (ends_with(head, ".tar") || ends_with(head, ".tar.gz") || ends_with(head, ".tgz")) {
            file = head;
            break;
          }
        }
        o.log->report(bad::kCorruptImage, file, where, "image bytes do not decode");
        ok = false;
      }
    }
    rep.images += s.images.size();
    if (ok) ++rep.samples;
  }
  rep.bad = o.log->total();
  rep.counts = o.log->counts();
  rep.worst_files = o.log->worst_files();
  const size_t total = rep.samples + rep.bad;
  rep.over_limit = total > 0 && static_cast<double>(rep.bad) > max_bad_fraction * static_cast<double>(total);
  return rep;
}

}  // namespace owl2::data
