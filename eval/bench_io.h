// File helpers shared by the benchmark readers (eval/bench_table.cpp) and the machinery around them
// (eval/bench_suite.cpp): reading and writing files, typed JSON access with errors that name the file and entry.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace owl2::eval::bench_io {

namespace fs = std::filesystem;
using nlohmann::json;

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::invalid_argument(fmt::format("{}: cannot open file", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline json read_json(const std::string& path) {
  try {
    return json::parse(read_text(path));
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", path, e.what()));
  }
}

inline void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot write file", path));
  f << text;
  if (!f.flush()) throw std::runtime_error(fmt::format("{}: write failed", path));
}

// The first of `names` that exists under dir; the error lists them all.
inline std::string find_file(const std::string& dir, const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (fs::exists(fs::path(dir) / n)) return (fs::path(dir) / n).string();
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw std::invalid_argument(fmt::format("{}: no annotation file found (expected one of: {})", dir, list));
}

// An image path; a missing .jpg falls back to the same name with .png (the synthetic benchmarks write PNG).
inline std::string image_path(const fs::path& p) {
  if (fs::exists(p) || p.extension() != ".jpg") return p.string();
  fs::path png = p;
  png.replace_extension(".png");
  return fs::exists(png) ? png.string() : p.string();
}

// Typed access with errors naming file, entry and key.
inline const json& need(const std::string& file, const std::string& where, const json& obj, const char* key) {
  if (!obj.is_object())
    throw std::invalid_argument(fmt::format("{}: {}: expected an object, found {}", file, where, obj.type_name()));
  const auto it = obj.find(key);
  if (it == obj.end()) throw std::invalid_argument(fmt::format("{}: {}: missing key '{}'", file, where, key));
  return *it;
}
inline std::string need_str(const std::string& file, const std::string& where, const json& obj, const char* key) {
  const json& v = need(file, where, obj, key);
  if (!v.is_string())
    throw std::invalid_argument(
        fmt::format("{}: {}: '{}' must be a string, found {} {}", file, where, key, v.type_name(), v.dump()));
  return v.get<std::string>();
}
inline int64_t need_int(const std::string& file, const std::string& where, const json& obj, const char* key) {
  const json& v = need(file, where, obj, key);
  if (!v.is_number_integer())
    throw std::invalid_argument(
        fmt::format("{}: {}: '{}' must be an integer, found {} {}", file, where, key, v.type_name(), v.dump()));
  return v.get<int64_t>();
}
// Ids that may be integers or strings, as text.
inline std::string need_id(const std::string& file, const std::string& where, const json& obj, const char* key) {
  const json& v = need(file, where, obj, key);
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_string()) return v.get<std::string>();
  throw std::invalid_argument(fmt::format("{}: {}: '{}' must be an integer or a string, found {} {}", file, where, key,
                                          v.type_name(), v.dump()));
}
inline const json& need_array(const std::string& file, const json& root, const char* key) {
  const json& v = need(file, "top level", root, key);
  if (!v.is_array())
    throw std::invalid_argument(fmt::format("{}: '{}' must be an array, found {}", file, key, v.type_name()));
  return v;
}

// Tracks ids of one file and rejects duplicates, naming both entries.
class UniqueIds {
 public:
  explicit UniqueIds(std::string file, std::string what) : file_(std::move(file)), what_(std::move(what)) {}
  void add(const std::string& id, const std::string& where) {
    const auto [it, fresh] = seen_.emplace(id, where);
    if (!fresh)
      throw std::invalid_argument(
          fmt::format("{}: {}: duplicate {} {} (first at {})", file_, where, what_, id, it->second));
  }

 private:
  std::string file_, what_;
  std::map<std::string, std::string> seen_;
};

inline std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out.push_back(line);
  }
  return out;
}

inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

}  // namespace owl2::eval::bench_io
