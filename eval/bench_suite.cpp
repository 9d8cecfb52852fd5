// The machinery around the benchmark table (eval/bench_table.cpp): lookup, --limit, scoring, the prediction
// cache, MMBench's rotation and small format helpers; see bench_suite.h and docs/eval.md.
#include "eval/bench_suite.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "eval/bench_io.h"

namespace owl2::eval {

const char* const kShortAnswerInstruction = "Answer the question using a single word or phrase.";
const char* const kOptionInstruction = "Answer with the option\xE2\x80\x99s letter from the given choices directly.";
const char* const kOptionInstructionAscii = "Answer with the option's letter from the given choices directly.";
const char* const kCaptionInstruction = "Provide a one-sentence caption for the provided image.";

std::string owl2_eval_prompt(const std::string& body, size_t num_images) {
  std::string p = "USER: ";
  for (size_t i = 0; i < num_images; ++i) p += "<|image|>";
  return p + body + " ASSISTANT: ";
}

using namespace bench_io;

const BenchDef& find_bench(const std::string& name) {
  std::string names;
  for (const auto& d : bench_defs()) {
    if (d.name == name) return d;
    names += (names.empty() ? "" : ", ") + d.name;
  }
  throw std::invalid_argument(fmt::format("unknown benchmark '{}': expected one of {}", name, names));
}

std::vector<BenchItem> limit_groups(const std::vector<BenchItem>& items, int64_t limit) {
  if (limit <= 0) return items;
  std::set<std::string> groups;
  for (const auto& it : items) {
    if (static_cast<int64_t>(groups.size()) == limit) break;
    groups.insert(it.group);
  }
  std::vector<BenchItem> out;
  for (const auto& it : items)
    if (groups.count(it.group)) out.push_back(it);
  return out;
}

BenchScore score_bench(const BenchDef& def, const std::string& data_dir, const std::vector<BenchItem>& items,
                       const std::vector<std::string>& raw, const std::string& out_dir) {
  if (raw.size() != items.size())
    throw std::invalid_argument(fmt::format("{}: {} predictions for {} questions", def.name, raw.size(), items.size()));
  std::vector<std::string> post;
  for (const auto& r : raw) post.push_back(def.postprocess(r));
  fs::create_directories(out_dir);
  return def.score(data_dir, items, post, out_dir);
}

// ---- prediction cache ----

std::vector<size_t> shard_indices(size_t n, int64_t rank, int64_t world) {
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument(fmt::format("shard_indices: rank {} of world size {}", rank, world));
  std::vector<size_t> out;
  for (size_t i = static_cast<size_t>(rank); i < n; i += static_cast<size_t>(world)) out.push_back(i);
  return out;
}

std::string rank_cache_path(const std::string& dir, int64_t rank) {
  return (fs::path(dir) / fmt::format("predictions.rank{}.jsonl", rank)).string();
}
std::string merged_cache_path(const std::string& dir) { return (fs::path(dir) / "predictions.cache.jsonl").string(); }

namespace {

void read_cache_file(const std::string& path, std::map<std::string, std::string>& out,
                     std::map<std::string, std::string>& where) {
  const std::string text = read_text(path);
  size_t pos = 0;
  for (size_t n = 1; pos < text.size(); ++n) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;  // an interrupted write: that answer is generated again
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string at = fmt::format("{}: line {}", path, n);
    json r;
    try {
      r = json::parse(line);
    } catch (const json::parse_error& e) {
      throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", at, e.what()));
    }
    const std::string id = need_str(path, fmt::format("line {}", n), r, "id");
    const std::string pred = need_str(path, fmt::format("line {}", n), r, "prediction");
    const auto [it, fresh] = out.emplace(id, pred);
    if (!fresh && it->second != pred)
      throw std::invalid_argument(fmt::format("{}: id {} has a different prediction than at {}", at, id, where[id]));
    if (fresh) where[id] = at;
  }
}

}  // namespace

std::map<std::string, std::string> read_prediction_cache(const std::string& dir) {
  std::map<std::string, std::string> out, where;
  if (!fs::is_directory(dir)) return out;
  std::vector<std::string> files;
  if (fs::exists(merged_cache_path(dir))) files.push_back(merged_cache_path(dir));
  std::vector<std::string> ranks;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("predictions.rank", 0) == 0 && e.path().extension() == ".jsonl") ranks.push_back(e.path().string());
  }
  std::sort(ranks.begin(), ranks.end());
  files.insert(files.end(), ranks.begin(), ranks.end());
  for (const auto& f : files) read_cache_file(f, out, where);
  return out;
}

void append_predictions(const std::string& path, const std::vector<std::pair<std::string, std::string>>& preds) {
  fs::create_directories(fs::path(path).parent_path());
  if (fs::exists(path) && fs::file_size(path) > 0) {
    // A killed run may have left half a line: cut it off before appending (only the last byte is read
    // unless that happened).
    char last = '\n';
    {
      std::ifstream f(path, std::ios::binary);
      f.seekg(-1, std::ios::end);
      f.get(last);
    }
    if (last != '\n') {
      const std::string text = read_text(path);
      const size_t keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
      std::ofstream(path, std::ios::binary | std::ios::trunc) << text.substr(0, keep);
    }
  }
  std::ofstream f(path, std::ios::app | std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot append", path));
  std::string text;
  for (const auto& [id, p] : preds) text += json{{"id", id}, {"prediction", p}}.dump() + "\n";
  f << text;
  if (!f.flush()) throw std::runtime_error(fmt::format("{}: write failed", path));
}

std::vector<std::string> merge_prediction_cache(const std::string& dir, const std::vector<BenchItem>& items) {
  const auto cache = read_prediction_cache(dir);
  std::vector<std::string> out;
  std::vector<std::pair<std::string, std::string>> merged;
  for (const auto& it : items) {
    const auto c = cache.find(it.id);
    if (c == cache.end())
      throw std::runtime_error(fmt::format("{}: no prediction for id {} in the cache files", dir, it.id));
    out.push_back(c->second);
  }
  // Everything cached is kept (also answers of questions beyond --limit), evaluated items first.
  std::set<std::string> done;
  for (size_t i = 0; i < items.size(); ++i) {
    merged.emplace_back(items[i].id, out[i]);
    done.insert(items[i].id);
  }
  for (const auto& [id, p] : cache)
    if (!done.count(id)) merged.emplace_back(id, p);
  const std::string tmp = merged_cache_path(dir) + ".tmp";
  fs::remove(tmp);
  append_predictions(tmp, merged);
  fs::rename(tmp, merged_cache_path(dir));
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("predictions.rank", 0) == 0 && e.path().extension() == ".jsonl") fs::remove(e.path());
  }
  return out;
}

// ---- MMBench rotation ----

std::vector<MmbenchTsvRow> mmbench_expand_circular(const std::vector<MmbenchTsvRow>& rows) {
  std::map<int64_t, int> copies;  // main index -> rows in its group
  for (const auto& r : rows) ++copies[r.index % 1000000];
  std::vector<MmbenchTsvRow> out;
  for (const auto& r : rows) {
    out.push_back(r);
    if (r.index >= 1000000 || copies[r.index] != 1 || r.answer.empty()) continue;
    std::vector<std::string> texts;
    for (const auto& kv : r.options) texts.push_back(kv.second);
    const int k = static_cast<int>(texts.size());
    const int answer = static_cast<int>(std::distance(r.options.begin(), r.options.find(r.answer[0])));
    for (int n = 1; n < k; ++n) {
      MmbenchTsvRow c = r;
      c.index = r.index + static_cast<int64_t>(n) * 1000000;
      c.options.clear();
      for (int i = 0; i < k; ++i) c.options[static_cast<char>('A' + i)] = texts[(i + n) % k];
      c.answer = std::string(1, static_cast<char>('A' + ((answer - n) % k + k) % k));
      out.push_back(std::move(c));
    }
  }
  return out;
}

std::string mmbench_prompt_body(const MmbenchTsvRow& row) {
  std::string opts;
  for (const auto& [L, t] : row.options) opts += fmt::format("{}{}. {}", opts.empty() ? "" : "\n", L, t);
  return (row.hint.empty() ? std::string("N/A") : row.hint) + "\n" + row.question + "\n" + opts + "\n" +
         kOptionInstruction;
}

// ---- helpers ----

std::string base64_decode(const std::string& text, const std::string& where) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '=') break;
    if (c == '\n' || c == '\r' || c == ' ') continue;
    const int v = val(c);
    if (v < 0) throw std::invalid_argument(fmt::format("{}: invalid base64 character '{}' at offset {}", where, c, i));
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  const std::string text = read_text(path);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  size_t line = 1, start_line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        field += c;
      }
    } else if (c == '"' && field.empty()) {
      quoted = true;
      start_line = line;
      any = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      any = true;
    } else if (c == '\n') {
      if (any || !field.empty()) {
        row.push_back(std::move(field));
        rows.push_back(std::move(row));
      }
      row.clear();
      field.clear();
      any = false;
      ++line;
    } else if (c != '\r') {
      field += c;
      any = true;
    }
  }
  if (quoted) throw std::invalid_argument(fmt::format("{}: line {}: a quoted field is not closed", path, start_line));
  if (any || !field.empty()) {
    row.push_back(std::move(field));
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace owl2::eval
