// libFuzzer target: the safetensors header parser and validator must throw std::runtime_error or accept,
// and everything it accepts must lie inside the input. Build and run: scripts/fuzz.sh (needs clang).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

#include "owl2/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto h = owl2::parse_safetensors(data, size, "fuzz-input");
    uint64_t covered = 0;
    for (const auto& kv : h.tensors) {
      if (h.data_start + kv.second.end > size) std::abort();  // accepted a range outside the input
      covered += kv.second.end - kv.second.begin;
    }
    if (h.data_start + covered != size) std::abort();  // accepted a hole or an overlap
  } catch (const std::runtime_error&) {
  }
  return 0;
}
