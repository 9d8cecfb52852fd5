#include "data/gif.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <unordered_map>

namespace owl2::data {
namespace {

void put16(std::string& out, int v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
}

// Variable-width codes packed least significant bit first, emitted as data sub-blocks of up to 255 bytes.
class CodeWriter {
 public:
  void write(uint32_t code, int bits) {
    acc_ |= static_cast<uint64_t>(code) << nbits_;
    nbits_ += bits;
    while (nbits_ >= 8) {
      bytes_.push_back(static_cast<char>(acc_ & 0xff));
      acc_ >>= 8;
      nbits_ -= 8;
    }
  }
  void finish(std::string& out) {
    if (nbits_ > 0) bytes_.push_back(static_cast<char>(acc_ & 0xff));
    for (size_t i = 0; i < bytes_.size(); i += 255) {
      const size_t n = std::min<size_t>(255, bytes_.size() - i);
      out.push_back(static_cast<char>(n));
      out.append(bytes_, i, n);
    }
    out.push_back(0);  // block terminator
  }

 private:
  std::string bytes_;
  uint64_t acc_ = 0;
  int nbits_ = 0;
};

// GIF's LZW over palette indices with 8-bit roots: a clear code first, codes widening from 9 to 12 bits as the
// table grows, and a clear code (and a fresh table) when it is full.
void lzw(const std::vector<uint8_t>& indices, std::string& out) {
  constexpr int kRootBits = 8;
  constexpr uint32_t kClear = 1u << kRootBits, kEnd = kClear + 1, kMaxCode = 4095;
  out.push_back(static_cast<char>(kRootBits));
  CodeWriter w;
  std::unordered_map<uint32_t, uint32_t> table;  // (prefix code << 8 | next index) -> code
  int bits = kRootBits + 1;
  uint32_t last = kEnd;  // the highest code in use
  w.write(kClear, bits);
  uint32_t prefix = indices[0];
  for (size_t i = 1; i < indices.size(); ++i) {
    const uint32_t key = (prefix << 8) | indices[i];
    const auto it = table.find(key);
    if (it != table.end()) {
      prefix = it->second;
      continue;
    }
    w.write(prefix, bits);
    table.emplace(key, ++last);
    if (last >= (1u << bits) && bits < 12) ++bits;
    if (last == kMaxCode) {
      w.write(kClear, bits);
      table.clear();
      bits = kRootBits + 1;
      last = kEnd;
    }
    prefix = indices[i];
  }
  w.write(prefix, bits);
  w.write(kEnd, bits);
  w.finish(out);
}

}  // namespace

std::string encode_gif(const std::vector<torch::Tensor>& frames, double fps) {
  if (frames.empty()) throw std::invalid_argument("gif: no frames to encode");
  if (!(fps > 0)) throw std::invalid_argument(fmt::format("gif: fps must be positive, got {}", fps));
  const int64_t h = frames[0].size(0), w = frames[0].size(1);
  if (h < 1 || w < 1 || h > 65535 || w > 65535)
    throw std::invalid_argument(fmt::format("gif: a frame of {}x{} pixels is outside 1..65535 a side", w, h));
  std::vector<torch::Tensor> rgb;
  std::map<uint32_t, uint8_t> palette;  // 0xRRGGBB -> index, in colour order
  for (const auto& f : frames) {
    if (f.dim() != 3 || f.size(0) != h || f.size(1) != w || f.size(2) != 3 || f.scalar_type() != torch::kUInt8)
      throw std::invalid_argument(fmt::format("gif: every frame must be uint8 [{}, {}, 3], got {} {}", h, w,
                                              c10::str(f.sizes()), c10::toString(f.scalar_type())));
    rgb.push_back(f.contiguous());
    const uint8_t* p = rgb.back().data_ptr<uint8_t>();
    for (int64_t i = 0; i < h * w; ++i) {
      palette.emplace((uint32_t(p[3 * i]) << 16) | (uint32_t(p[3 * i + 1]) << 8) | p[3 * i + 2], 0);
      if (palette.size() > 256)
        throw std::invalid_argument("gif: the clip has more than 256 distinct colours (this encoder does not quantise)");
    }
  }
  uint8_t next = 0;
  for (auto& [colour, index] : palette) index = next++;

  std::string out = "GIF89a";
  put16(out, static_cast<int>(w));
  put16(out, static_cast<int>(h));
  out.push_back(static_cast<char>(0xF7));  // a global table of 256 entries, 8-bit colour resolution
  out.push_back(0);                        // background colour index
  out.push_back(0);                        // no pixel aspect ratio
  for (const auto& [colour, index] : palette) {
    out.push_back(static_cast<char>((colour >> 16) & 0xff));
    out.push_back(static_cast<char>((colour >> 8) & 0xff));
    out.push_back(static_cast<char>(colour & 0xff));
  }
  out.append(3 * (256 - palette.size()), '\0');
  // Loop forever (the NETSCAPE2.0 application extension).
  out += std::string("\x21\xFF\x0B", 3) + "NETSCAPE2.0" + std::string("\x03\x01\x00\x00\x00", 5);
  const int delay = std::max(1, static_cast<int>(std::lround(100.0 / fps)));  // hundredths of a second
  std::vector<uint8_t> indices(static_cast<size_t>(h * w));
  for (const auto& f : rgb) {
    out += std::string("\x21\xF9\x04\x04", 4);  // graphic control: leave the frame in place, no transparency
    put16(out, delay);
    out += std::string("\x00\x00", 2);
    out.push_back(0x2C);  // image descriptor: the whole screen, no local table, not interlaced
    put16(out, 0);
    put16(out, 0);
    put16(out, static_cast<int>(w));
    put16(out, static_cast<int>(h));
    out.push_back(0);
    const uint8_t* p = f.data_ptr<uint8_t>();
    for (int64_t i = 0; i < h * w; ++i)
      indices[static_cast<size_t>(i)] = palette.at((uint32_t(p[3 * i]) << 16) | (uint32_t(p[3 * i + 1]) << 8) | p[3 * i + 2]);
    lzw(indices, out);
  }
  out.push_back(0x3B);  // trailer
  return out;
}

}  // namespace owl2::data
