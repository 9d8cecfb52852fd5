// Tar archives through libarchive: a deterministic writer (for shards we produce) and an indexing
// reader that records where each member's bytes lie, so samples can be read back by offset.
#pragma once
#include <cstdint>
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

}  // namespace owl2::data
