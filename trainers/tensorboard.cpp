// TensorBoard event files; see tensorboard.h. The field numbers are those of the public schema files
// tensorflow/core/util/event.proto and tensorflow/core/framework/{summary,tensor,tensor_shape,types}.proto.
#include "trainers/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <chrono>
#include <filesystem>
#include <stdexcept>

namespace owl2 {
namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

// The protocol buffer wire format, as far as Event needs it: varints (wire type 0), 64-bit (1),
// length-delimited (2) and 32-bit (5) fields.
class Proto {
 public:
  Proto& varint(int field, uint64_t v) {
    key(field, 0);
    raw_varint(v);
    return *this;
  }
  Proto& f64(int field, double v) {
    key(field, 1);
    put_le(bytes_, std::bit_cast<uint64_t>(v), 8);
    return *this;
  }
  Proto& f32(int field, float v) {
    key(field, 5);
    put_le(bytes_, std::bit_cast<uint32_t>(v), 4);
    return *this;
  }
  Proto& bytes(int field, std::string_view v) {
    key(field, 2);
    raw_varint(v.size());
    bytes_.append(v);
    return *this;
  }
  Proto& message(int field, const Proto& m) { return bytes(field, m.bytes_); }
  const std::string& str() const { return bytes_; }

 private:
  void key(int field, int wire_type) { raw_varint((static_cast<uint64_t>(field) << 3) | wire_type); }
  void raw_varint(uint64_t v) {
    for (; v >= 0x80; v >>= 7) bytes_ += static_cast<char>((v & 0x7F) | 0x80);
    bytes_ += static_cast<char>(v);
  }
  std::string bytes_;
};

// Field numbers.
namespace event {
constexpr int kWallTime = 1, kStep = 2, kFileVersion = 3, kSummary = 5, kSessionLog = 7;
}
namespace session_log {
constexpr int kStatus = 1;
constexpr uint64_t kStart = 1;  // SessionLog.SessionStatus.START
}  // namespace session_log
namespace summary {
constexpr int kValue = 1;                                              // Summary.value (repeated)
constexpr int kTag = 1, kSimpleValue = 2, kTensor = 8, kMetadata = 9;  // Summary.Value
constexpr int kPluginData = 1;                                         // SummaryMetadata
constexpr int kPluginName = 1;                                         // SummaryMetadata.PluginData
}  // namespace summary
namespace tensor {
constexpr int kDtype = 1, kShape = 2, kStringVal = 8;  // TensorProto
constexpr uint64_t kDtString = 7;                      // DataType.DT_STRING
}  // namespace tensor

Proto event_header(int64_t step) {
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  Proto e;
  e.f64(event::kWallTime, now).varint(event::kStep, static_cast<uint64_t>(step));
  return e;
}

std::string hostname() {
  std::array<char, 256> buf{};
  if (gethostname(buf.data(), buf.size() - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf.data();
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (const unsigned char b : bytes) c = kCrc32cTable[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t c = crc32c(bytes);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

std::string tfrecord(std::string_view payload) {
  std::string length;
  put_le(length, payload.size(), 8);
  std::string out = length;
  put_le(out, masked_crc32c(length), 4);
  out.append(payload);
  put_le(out, masked_crc32c(payload), 4);
  return out;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir, int64_t first_step) {
  namespace fs = std::filesystem;
  const int64_t secs =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string base =
      (fs::path(dir) / fmt::format("events.out.tfevents.{:010}.{}", secs, hostname())).string();
  path_ = base;
  for (int n = 1; fs::exists(path_); ++n) path_ = fmt::format("{}.{}", base, n);  // a restart within the second
  file_.open(path_, std::ios::binary | std::ios::trunc);
  if (!file_) throw std::runtime_error(fmt::format("{}: cannot create the TensorBoard events file", path_));
  write_event(event_header(first_step).bytes(event::kFileVersion, "brain.Event:2").str());
  const Proto start = Proto().varint(session_log::kStatus, session_log::kStart);
  write_event(event_header(first_step).message(event::kSessionLog, start).str());
}

void TensorBoardWriter::scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step) {
  Proto s;
  for (const auto& [tag, v] : values)
    s.message(summary::kValue, Proto().bytes(summary::kTag, tag).f32(summary::kSimpleValue, static_cast<float>(v)));
  write_event(event_header(step).message(event::kSummary, s).str());
}

void TensorBoardWriter::text(const std::string& tag, const std::string& markdown, int64_t step) {
  const Proto metadata = Proto().message(summary::kPluginData, Proto().bytes(summary::kPluginName, "text"));
  // A scalar string tensor: dtype, an empty (rank 0) shape, one string_val.
  const Proto t =
      Proto().varint(tensor::kDtype, tensor::kDtString).bytes(tensor::kShape, "").bytes(tensor::kStringVal, markdown);
  const Proto value =
      Proto().bytes(summary::kTag, tag).message(summary::kMetadata, metadata).message(summary::kTensor, t);
  write_event(event_header(step).message(event::kSummary, Proto().message(summary::kValue, value)).str());
}

void TensorBoardWriter::write_event(const std::string& event) {
  file_ << tfrecord(event);
  file_.flush();
  if (!file_) throw std::runtime_error(fmt::format("{}: writing a TensorBoard event failed", path_));
}

}  // namespace owl2
