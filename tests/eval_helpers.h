// Helpers shared by the eval tests: a scratch directory for malformed files and the JSON fixtures.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/helpers.h"

namespace owl2::test {

inline nlohmann::json load_fixture(const std::string& rel) {
  return nlohmann::json::parse(read_text(source_path("tests/fixtures/eval/" + rel)));
}

// Writes `text` to a fresh file under the system temp directory and returns its path.
inline std::string write_temp(const std::string& name, const std::string& text) {
  const auto dir = std::filesystem::temp_directory_path() / ("owl2_eval_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / name;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path) << text;
  return path.string();
}

}  // namespace owl2::test
