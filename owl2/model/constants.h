// Token ids shared by the model and the data pipeline (spec §3.2).
#pragma once
#include <cstdint>

namespace owl2 {

inline constexpr int64_t kImageTokenIndex = -200;  // placeholder id in input_ids: one image's visual tokens go here
inline constexpr int64_t kIgnoreIndex = -100;      // label id that the loss skips

}  // namespace owl2
