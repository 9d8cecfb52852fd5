// Shared test helpers: running the owl2 binary and reading files.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <stdlib.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace owl2::test {

struct CliResult {
  int rc = -1;
  std::string out;  // stdout and stderr together
};

// Runs `owl2 <args>` through the shell (args are passed as written) and captures its output.
inline CliResult run_owl2(const std::string& args) {
  const std::string cmd = std::string(OWL2_BINARY) + " " + args + " 2>&1";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

struct CliStreams {
  int rc = -1;
  std::string out, err;  // stdout and stderr apart
};

// Runs `owl2 <args>` with stdout and stderr kept apart (stderr goes through a temporary file).
inline CliStreams run_owl2_streams(const std::string& args) {
  std::string err_path = "/tmp/owl2_stderr_XXXXXX";
  const int fd = mkstemp(err_path.data());
  if (fd < 0) throw std::runtime_error("mkstemp failed for " + err_path);
  close(fd);
  const std::string cmd = std::string(OWL2_BINARY) + " " + args + " 2>" + err_path;
  CliStreams r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p) {
    std::array<char, 4096> buf{};
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int status = pclose(p);
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::ifstream f(err_path);
  std::stringstream s;
  s << f.rdbuf();
  r.err = s.str();
  std::remove(err_path.c_str());
  return r;
}

inline std::string source_path(const std::string& rel) { return std::string(OWL2_SOURCE_DIR) + "/" + rel; }

// A fresh directory under /tmp named after `prefix`, removed when the test process exits.
inline std::string temp_dir(const std::string& prefix) {
  struct Registry {
    std::vector<std::string> dirs;
    ~Registry() {
      for (const auto& d : dirs) std::filesystem::remove_all(d);
    }
  };
  static Registry registry;
  std::string tmpl = "/tmp/" + prefix + "_XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
  registry.dirs.push_back(tmpl);
  return tmpl;
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace owl2::test
