// Small POSIX file helpers for checkpoint I/O: read-only mappings, durable atomic writes, CRC32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace owl2 {

// A whole file mapped privately (copy-on-write), so tensors that view it may be written without touching
// the file. Shared by the tensors that view it; unmapped when the last one goes away.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);  // throws naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes a file durably and atomically: `path.tmp.<pid>` is written, fsync'd, renamed over `path`, and the
// parent directory fsync'd. The callback receives the open descriptor; write with write_all.
class AtomicFile {
 public:
  // checksum = false skips the CRC32 (crc32() then stays 0) for writers whose files carry no manifest.
  explicit AtomicFile(std::string path, bool checksum = true);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // buffered by the kernel; throws on short writes
  void commit();                           // fsync, rename, fsync the directory
  uint64_t bytes_written() const { return written_; }
  uint32_t crc32() const { return crc_; }  // CRC32 of everything written so far

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  uint32_t crc_ = 0;
  bool checksum_ = true;
};

void write_file_atomic(const std::string& path, const std::string& contents);
std::string read_file_text(const std::string& path);  // throws naming the file
// Reads exactly n bytes at `offset` into dst (pread loop); throws naming the file on errors or short files.
void read_file_range(const std::string& path, uint64_t offset, uint64_t n, void* dst);
void fsync_path(const std::string& path);             // a file or a directory; throws on failure
std::string parent_dir(const std::string& path);

// Asks for transparent huge pages on the 2 MB-aligned interior of a large fresh buffer (no-op when small or
// unsupported): a multi-GB load then takes 512x fewer page faults.
void advise_huge_pages(void* data, uint64_t n);

// CRC32 (IEEE 802.3, reflected, polynomial 0xEDB88320); `crc` continues a previous value.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);
uint32_t crc32_file(const std::string& path);

}  // namespace owl2
