// Video as frames (docs/datasets.md, "Video"): N frames sampled uniformly over a clip, decoded with OpenCV's
// videoio (FFmpeg backend for MP4 / WebM / GIF, OpenCV's own for MJPEG AVI) straight to RGB, then used exactly as
// images (each frame is one image slot with its own <|image|>).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/choices.h"

namespace owl2::data {

// The frames of a clip of `total` frames that n samples take: the centres of n equal segments,
// floor((i + 0.5) * total / n) for i < n. Ascending; with n > total some frames repeat. Throws
// std::invalid_argument for total < 1 or n < 1.
std::vector<int64_t> video_frame_indices(int64_t total, int64_t n);

// The placeholders a clip of `frames` frames puts in a prompt under `layout` (data/choices.h): kFramesFirst
// "<|image|>" x N; kNumbered "Frame 1: <|image|>\n" ... "Frame N: <|image|>\n". The text follows directly.
std::string video_frame_slots(int64_t frames, VideoLayout layout);

struct DecodedVideo {
  std::vector<torch::Tensor> frames;  // RGB uint8 [H, W, 3], in time order
  std::vector<int64_t> indices;       // which frames of the clip they are
  int64_t total = 0;                  // frames in the clip
};

// The n frames video_frame_indices picks from the clip's true frame count. One pass decodes the frames that the
// container's frame count implies and counts to the end; only when that count was wrong (common for GIF and
// WebM) does a second pass decode the frames of the true count. Throws std::runtime_error naming the file when it
// does not exist, cannot be opened, or holds no frame.
DecodedVideo decode_video(const std::string& path, int64_t n);

// One frame, the one `pick(total, fps)` names from the clip's true frame count and the container's frame rate
// (0 when it records none): for benchmarks that take a given frame of a clip or of a time segment of it (SEED-Bench's
// middle frames). Decoded as decode_video does (a pass that counts to the end, and a second one only when the
// container's count was wrong). Same errors as decode_video, and one naming the file when `pick` returns a frame
// outside the clip.
using FramePick = std::function<int64_t(int64_t total, double fps)>;
DecodedVideo decode_frame(const std::string& path, const FramePick& pick);

// Every frame of the clip (for tests and tools). Same errors as decode_video.
DecodedVideo decode_all_frames(const std::string& path);

// A frame as lossless BMP bytes, so that a video sample's frames travel through the dataset as encoded images
// (decode_image gives the same pixels back).
std::string encode_frame_bmp(const torch::Tensor& rgb_HW3);

// Writes RGB uint8 frames [H, W, 3] (all one size) as a clip at `fps`: .avi as Motion-JPEG, .mp4 as MPEG-4 Part 2,
// .webm as VP8, .gif losslessly with owl2's encoder (data/gif.h: at most 256 colours) (for synthetic clips in
// tests and `owl2 data synth-bench`). Throws std::runtime_error naming the file when no backend writes that
// container.
void write_video(const std::string& path, const std::vector<torch::Tensor>& frames, double fps = 10.0);

// False when the build has no OpenCV videoio (decode_video then throws naming what is missing).
bool video_decoding_available();

}  // namespace owl2::data
