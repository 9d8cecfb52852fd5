// libFuzzer target: the restricted unpickler must throw std::runtime_error or return a tensor table whose
// views stay inside their storages. Build and run: scripts/fuzz.sh (needs clang).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "owl2/io/torch_bin.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto table = owl2::unpickle_state_dict(std::string(reinterpret_cast<const char*>(data), size), "fuzz-input");
    for (const auto& kv : table)
      if (kv.second.size.size() != kv.second.stride.size() || kv.second.offset < 0) std::abort();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
