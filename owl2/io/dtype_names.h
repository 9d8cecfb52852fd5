// The names of the weight dtypes: the short ones of `--dtype` flags and HF config.json's torch_dtype, in one
// table that parsing and printing both read.
#pragma once
#include <c10/core/ScalarType.h>

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace owl2 {

struct DtypeName {
  c10::ScalarType dtype;
  std::string_view flag;  // "bf16", as `--dtype` takes it
  std::string_view hf;    // "bfloat16", as config.json's torch_dtype spells it
};
inline constexpr std::array<DtypeName, 3> kDtypeNames{{{c10::kBFloat16, "bf16", "bfloat16"},
                                                       {c10::kHalf, "fp16", "float16"},
                                                       {c10::kFloat, "fp32", "float32"}}};

// "bf16" | "fp16" | "fp32" -> dtype; "" -> nullopt (keep the stored dtype). Throws std::invalid_argument naming
// the value and the valid names otherwise.
std::optional<c10::ScalarType> parse_dtype_flag(const std::string& name);

// The `--dtype` name and the HF torch_dtype of `dtype`; both throw std::invalid_argument for a dtype the table
// lacks (e.g. Long).
std::string_view dtype_flag_name(c10::ScalarType dtype);
std::string_view hf_dtype_name(c10::ScalarType dtype);

}  // namespace owl2
