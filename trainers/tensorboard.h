// TensorBoard event files written by hand: TFRecord framing (length and data, each followed by its masked
// CRC32C) around `Event` protocol buffers, encoded here without a protobuf dependency (docs/training.md,
// "TensorBoard").
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace owl2 {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it.
uint32_t crc32c(std::string_view bytes);
// TFRecord's masked form: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(std::string_view bytes);
// One TFRecord: uint64 length (little-endian), masked CRC32C of those 8 bytes, the payload, masked CRC32C of it.
std::string tfrecord(std::string_view payload);

// Appends events to a new file DIR/events.out.tfevents.<unix seconds>.<hostname> (".1", ".2", ... when
// that name exists). Each record is flushed as it is written, so a killed run keeps what it logged.
// The file starts with the file_version event ("brain.Event:2") and a SessionLog START at `first_step`:
// TensorBoard reads every events file of a folder in name order and, at a START, drops what earlier files
// logged at that step or later, i.e. the steps an interrupted run logged after its last checkpoint.
// Throws std::runtime_error naming the file when it cannot be created or written.
class TensorBoardWriter {
 public:
  TensorBoardWriter(const std::string& dir, int64_t first_step);

  // One event at `step` with a Summary.Value.simple_value (float32) per (tag, value).
  void scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step);
  // A text summary (the text plugin renders it as markdown): a scalar string tensor.
  void text(const std::string& tag, const std::string& markdown, int64_t step);

  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& event);

  std::string path_;
  std::ofstream file_;
};

}  // namespace owl2
