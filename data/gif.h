// A GIF89a encoder for clips with few colours (the synthetic TGIF-QA benchmark of `owl2 data synth-bench`):
// one global palette of the clip's distinct colours, every frame full size and LZW-compressed, looping forever.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

namespace owl2::data {

// The bytes of an animated GIF of RGB uint8 frames [H, W, 3] (all one size, at most 65535 px a side) shown at
// `fps`. Lossless, so the clip may hold at most 256 distinct colours; throws std::invalid_argument otherwise, and
// for no frames, frames of different sizes or fps <= 0.
std::string encode_gif(const std::vector<torch::Tensor>& frames, double fps);

}  // namespace owl2::data
