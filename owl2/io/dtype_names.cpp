// The weight dtype name table's lookups; see dtype_names.h.
#include "owl2/io/dtype_names.h"

#include <fmt/format.h>

#include <stdexcept>

namespace owl2 {
namespace {

const DtypeName& entry(c10::ScalarType dtype, const char* what) {
  for (const auto& e : kDtypeNames) {
    if (e.dtype == dtype) return e;
  }
  throw std::invalid_argument(fmt::format("no {} for {}", what, c10::toString(dtype)));
}

}  // namespace

std::optional<c10::ScalarType> parse_dtype_flag(const std::string& name) {
  if (name.empty()) return std::nullopt;
  std::string valid;  // "bf16, fp16 or fp32"
  for (size_t i = 0; i < kDtypeNames.size(); ++i) {
    if (kDtypeNames[i].flag == name) return kDtypeNames[i].dtype;
    valid += i == 0 ? "" : (i + 1 == kDtypeNames.size() ? " or " : ", ");
    valid += kDtypeNames[i].flag;
  }
  throw std::invalid_argument(fmt::format("--dtype '{}': expected {}", name, valid));
}

std::string_view dtype_flag_name(c10::ScalarType dtype) { return entry(dtype, "--dtype name").flag; }

std::string_view hf_dtype_name(c10::ScalarType dtype) { return entry(dtype, "HF torch_dtype").hf; }

}  // namespace owl2
