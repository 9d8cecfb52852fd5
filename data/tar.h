// Tar archives through libarchive: a deterministic writer (for shards we produce) and an indexing
// reader that records where each member's bytes lie, so samples can be read back by offset.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace owl2::data {

struct TarFile {
  std::string name;
  std::string data;
};

// Writes a POSIX ustar archive (pax headers only where a name needs them) with fixed metadata (mtime 0, uid/gid 0, mode 0644): the same members
// give the same bytes. Throws std::runtime_error naming the path on failure.
void write_tar(const std::string& path, const std::vector<TarFile>& files);

// One regular-file member of a tar archive.
struct TarMember {
  std::string name;
  int64_t size = 0;
  int64_t offset = -1;  // byte offset of the data in the file (plain tar), -1 if only `data` holds it
  std::string data;     // the bytes, for compressed archives (offsets are meaningless there)
};

struct TarIndex {
  std::vector<TarMember> members;  // regular files, in archive order
  std::string error;               // non-empty if reading stopped early (truncated or damaged archive)
};

// Scans an archive (plain tar: headers only, data skipped; compressed: members are read into memory).
// A damaged or truncated archive keeps the members read before the damage and sets `error`.
// Throws std::runtime_error if the file cannot be opened at all.
TarIndex index_tar(const std::string& path);

// Reads a member's bytes (by offset for plain tar, thread-safe); throws naming the path and member.
std::string read_tar_member(const std::string& path, const TarMember& member);

// Reads an archive front to back (plain or compressed), one member at a time: memory is bounded by one
// member's bytes, and nothing is indexed. Not thread-safe.
class TarReader {
 public:
  explicit TarReader(const std::string& path);  // throws std::runtime_error naming the path if it cannot be opened
  ~TarReader();
  TarReader(const TarReader&) = delete;
  TarReader& operator=(const TarReader&) = delete;
  // Moves to the next regular-file member (the current one's bytes are skipped unless read) and returns its
  // name, or nullopt at the end. Throws std::runtime_error naming the path and the members read on damage.
  std::optional<std::string> next_header();
  // The current member's bytes (once per member); throws naming the path and member if they are truncated.
  std::string read_data();
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::string path_;
  std::unique_ptr<Impl> impl_;
};

// How many times this process has opened a tar file (index_tar, read_tar_member and TarReader together):
// what tests count to check that a reader touches only its own shards.
int64_t tar_file_opens();

}  // namespace owl2::data
