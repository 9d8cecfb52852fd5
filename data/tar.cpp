// Tar archives through libarchive: deterministic writing and offset indexing (see tar.h).
#include "data/tar.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <memory>
#include <stdexcept>

namespace owl2::data {
namespace {

struct ReadCloser {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct WriteCloser {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

std::atomic<int64_t> g_opens{0};

std::string archive_message(archive* a) {
  const char* s = archive_error_string(a);
  return s ? s : "unknown libarchive error";
}

}  // namespace

void write_tar(const std::string& path, const std::vector<TarFile>& files) {
  std::unique_ptr<archive, WriteCloser> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());  // ustar, plus pax headers only for long names
  if (archive_write_open_filename(a.get(), path.c_str()) != ARCHIVE_OK)
    throw std::runtime_error(fmt::format("{}: cannot create tar file: {}", path, archive_message(a.get())));
  std::unique_ptr<archive_entry, EntryFree> e(archive_entry_new());
  for (const auto& f : files) {
    archive_entry_clear(e.get());
    archive_entry_set_pathname(e.get(), f.name.c_str());
    archive_entry_set_filetype(e.get(), AE_IFREG);
    archive_entry_set_perm(e.get(), 0644);
    archive_entry_set_size(e.get(), static_cast<la_int64_t>(f.data.size()));
    archive_entry_set_mtime(e.get(), 0, 0);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    if (archive_write_header(a.get(), e.get()) != ARCHIVE_OK ||
        archive_write_data(a.get(), f.data.data(), f.data.size()) != static_cast<la_ssize_t>(f.data.size()))
      throw std::runtime_error(fmt::format("{}: writing member '{}' failed: {}", path, f.name, archive_message(a.get())));
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK)
    throw std::runtime_error(fmt::format("{}: closing tar file failed: {}", path, archive_message(a.get())));
}

TarIndex index_tar(const std::string& path) {
  std::unique_ptr<archive, ReadCloser> a(archive_read_new());
  archive_read_support_filter_all(a.get());
  archive_read_support_format_tar(a.get());
  ++g_opens;
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK)
    throw std::runtime_error(fmt::format("{}: cannot open tar file: {}", path, archive_message(a.get())));

  TarIndex index;
  bool plain = true;
  // For a plain tar, a member's data ends (padded to 512 bytes) where the next header starts; the
  // header position is known before each header is read, so offsets need no tar parsing of our own.
  int pending = -1;  // member whose offset waits for the next header position
  const auto settle = [&](int64_t next_header) {
    if (pending < 0) return;
    auto& m = index.members[static_cast<size_t>(pending)];
    m.offset = next_header - (m.size + 511) / 512 * 512;
    pending = -1;
  };
  archive_entry* entry = nullptr;
  for (;;) {
    const int r = archive_read_next_header(a.get(), &entry);
    const int64_t header_pos = archive_read_header_position(a.get());
    if (r == ARCHIVE_EOF) {
      if (plain) settle(header_pos);
      break;
    }
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      if (plain) settle(header_pos);
      index.error = fmt::format("damaged tar archive after {} members: {}", index.members.size(),
                                archive_message(a.get()));
      break;
    }
    if (index.members.empty() && pending < 0) plain = archive_filter_code(a.get(), 0) == ARCHIVE_FILTER_NONE;
    if (plain) settle(header_pos);
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    TarMember m;
    m.name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    m.size = archive_entry_size(entry);
    int rd;
    if (plain) {
      rd = archive_read_data_skip(a.get());
    } else {
      m.data.resize(static_cast<size_t>(m.size));
      const la_ssize_t got = archive_read_data(a.get(), m.data.data(), m.data.size());
      rd = got == static_cast<la_ssize_t>(m.data.size()) ? ARCHIVE_OK : ARCHIVE_FATAL;
    }
    if (rd != ARCHIVE_OK && rd != ARCHIVE_WARN) {
      index.error = fmt::format("truncated tar archive in member '{}': {}", m.name, archive_message(a.get()));
      break;
    }
    index.members.push_back(std::move(m));
    if (plain) pending = static_cast<int>(index.members.size()) - 1;
  }
  if (pending >= 0) index.members.pop_back();  // its end was never seen
  return index;
}

std::string read_tar_member(const std::string& path, const TarMember& member) {
  if (member.offset < 0) return member.data;
  ++g_opens;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot open tar file to read member '{}'", path, member.name));
  std::string out(static_cast<size_t>(member.size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, out.data() + done, out.size() - done, member.offset + static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  if (done != out.size())
    throw std::runtime_error(fmt::format("{}: member '{}' is truncated: read {} of {} bytes at offset {}", path,
                                         member.name, done, out.size(), member.offset));
  return out;
}

struct TarReader::Impl {
  archive* handle = archive_read_new();
  ~Impl() { archive_read_free(handle); }
  std::string member;     // the current member's name
  bool data_read = true;  // its bytes were read (or there is no current member)
  int64_t members = 0;    // regular members seen
};

TarReader::TarReader(const std::string& path) : path_(path), impl_(std::make_unique<Impl>()) {
  archive* a = impl_->handle;
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  ++g_opens;
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK)
    throw std::runtime_error(fmt::format("{}: cannot open tar file: {}", path, archive_message(a)));
}

TarReader::~TarReader() = default;

std::optional<std::string> TarReader::next_header() {
  archive* a = impl_->handle;
  for (;;) {
    archive_entry* entry = nullptr;
    const int r = archive_read_next_header(a, &entry);  // skips the current member's unread bytes
    if (r == ARCHIVE_EOF) return std::nullopt;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
      throw std::runtime_error(fmt::format("{}: damaged tar archive after {} members: {}", path_, impl_->members,
                                           archive_message(a)));
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    ++impl_->members;
    impl_->member = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    impl_->data_read = false;
    return impl_->member;
  }
}

std::string TarReader::read_data() {
  if (impl_->data_read) throw std::logic_error(fmt::format("{}: read_data without a fresh member", path_));
  impl_->data_read = true;
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const la_ssize_t n = archive_read_data(impl_->handle, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0)
      throw std::runtime_error(fmt::format("{}: member '{}' is truncated or damaged: {}", path_, impl_->member,
                                           archive_message(impl_->handle)));
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

int64_t tar_file_opens() { return g_opens.load(); }

}  // namespace owl2::data
