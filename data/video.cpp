// Frame sampling and decoding of video clips (video.h).
#include "data/video.h"

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/gif.h"

#ifdef OWL2_WITH_VIDEO
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#endif

namespace owl2::data {

std::vector<int64_t> video_frame_indices(int64_t total, int64_t n) {
  if (total < 1) throw std::invalid_argument(fmt::format("video frame sampling: the clip has {} frames", total));
  if (n < 1) throw std::invalid_argument(fmt::format("video frame sampling: {} frames asked for (at least 1)", n));
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    // (2i + 1) * total / (2n) in integers: the segment centre, rounded down, exact for any total.
    out[static_cast<size_t>(i)] = std::min(total - 1, ((2 * i + 1) * total) / (2 * n));
  }
  return out;
}

std::string video_frame_slots(int64_t frames, VideoLayout layout) {
  if (frames < 1) throw std::invalid_argument(fmt::format("video frame slots: {} frames (at least 1)", frames));
  std::string out;
  for (int64_t k = 0; k < frames; ++k)
    out += layout == VideoLayout::kNumbered ? fmt::format("Frame {}: <|image|>\n", k + 1) : std::string("<|image|>");
  return out;
}

bool video_decoding_available() {
#ifdef OWL2_WITH_VIDEO
  return true;
#else
  return false;
#endif
}

#ifdef OWL2_WITH_VIDEO
namespace {

cv::VideoCapture open_clip(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error(fmt::format("video {}: no such file", path));
  // FFmpeg (MP4, WebM, AVI, GIF, ...), then OpenCV's own Motion-JPEG reader; never GStreamer or image sequences,
  // whose guesses at a broken file only add noise.
  cv::VideoCapture cap;
  for (const int api : {cv::CAP_FFMPEG, cv::CAP_OPENCV_MJPEG}) {
    try {
      if (cap.open(path, api)) break;
    } catch (const cv::Exception& e) {
      throw std::runtime_error(fmt::format("video {}: cannot open: {}", path, e.what()));
    }
  }
  if (!cap.isOpened()) {
    throw std::runtime_error(fmt::format("video {}: cannot open (corrupt, empty or a format OpenCV's backends "
                                         "do not read)", path));
  }
  return cap;
}

torch::Tensor to_rgb_tensor(const cv::Mat& bgr, const std::string& path, int64_t index) {
  if (bgr.empty() || bgr.depth() != CV_8U) {
    throw std::runtime_error(fmt::format("video {}: frame {} did not decode to 8-bit pixels", path, index));
  }
  cv::Mat rgb;
  if (bgr.channels() == 3) cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  else if (bgr.channels() == 4) cv::cvtColor(bgr, rgb, cv::COLOR_BGRA2RGB);
  else if (bgr.channels() == 1) cv::cvtColor(bgr, rgb, cv::COLOR_GRAY2RGB);
  else throw std::runtime_error(fmt::format("video {}: frame {} has {} channels", path, index, bgr.channels()));
  auto t = torch::empty({rgb.rows, rgb.cols, 3}, torch::kUInt8);
  for (int r = 0; r < rgb.rows; ++r) {
    std::memcpy(t.data_ptr<uint8_t>() + static_cast<int64_t>(r) * rgb.cols * 3, rgb.ptr<uint8_t>(r),
                static_cast<size_t>(rgb.cols) * 3);
  }
  return t;
}

// One sequential pass: decodes every frame (OpenCV's grab() decodes), converts those at `wanted` (ascending,
// repeats allowed) to RGB and counts the frames. With `to_end` false it stops after the last wanted frame.
DecodedVideo scan(cv::VideoCapture& cap, const std::string& path, const std::vector<int64_t>& wanted, bool to_end) {
  DecodedVideo out;
  out.indices = wanted;
  size_t next = 0;
  cv::Mat frame;
  int64_t i = 0;
  for (; to_end || next < wanted.size(); ++i) {
    if (!cap.grab()) break;
    while (next < wanted.size() && wanted[next] == i) {
      if (out.frames.size() == next) {
        if (!cap.retrieve(frame)) throw std::runtime_error(fmt::format("video {}: frame {} does not decode", path, i));
        out.frames.push_back(to_rgb_tensor(frame, path, i));
      } else {
        out.frames.push_back(out.frames.back());
      }
      ++next;
    }
  }
  out.total = i;
  return out;
}

DecodedVideo exactly(const std::string& path, int64_t total, const std::vector<int64_t>& wanted) {
  auto cap = open_clip(path);
  auto v = scan(cap, path, wanted, /*to_end=*/false);
  if (v.frames.size() != wanted.size()) {
    throw std::runtime_error(fmt::format("video {}: {} of {} frames decoded (the clip has {} frames)", path,
                                         v.frames.size(), wanted.size(), total));
  }
  v.total = total;
  return v;
}

}  // namespace

// The container's frame count is a guess (exact for most MP4 / AVI files, often wrong for GIF and WebM): the
// frames it implies are decoded in a pass that goes on to the end and counts. When the count was right, that one
// pass is the answer; otherwise a second pass decodes the frames of the true count. Either way the frames are
// those of video_frame_indices(true count, n).
DecodedVideo decode_video(const std::string& path, int64_t n) {
  if (n < 1) throw std::invalid_argument(fmt::format("video {}: {} frames asked for (at least 1)", path, n));
  auto cap = open_clip(path);
  const double c = cap.get(cv::CAP_PROP_FRAME_COUNT);
  const int64_t guess = c > 0 && c < 1e9 ? static_cast<int64_t>(c) : 0;
  int64_t total = 0;
  if (guess > 0) {
    auto v = scan(cap, path, video_frame_indices(guess, n), /*to_end=*/true);
    if (v.total == guess && v.frames.size() == static_cast<size_t>(n)) return v;
    total = v.total;
  } else {
    total = scan(cap, path, {}, /*to_end=*/true).total;
  }
  if (total == 0) throw std::runtime_error(fmt::format("video {}: no frame could be read (empty or corrupt)", path));
  return exactly(path, total, video_frame_indices(total, n));
}

DecodedVideo decode_frame(const std::string& path, const FramePick& pick) {
  auto cap = open_clip(path);
  const double c = cap.get(cv::CAP_PROP_FRAME_COUNT), rate = cap.get(cv::CAP_PROP_FPS);
  const double fps = rate > 0 && rate < 1e6 ? rate : 0.0;
  const int64_t guess = c > 0 && c < 1e9 ? static_cast<int64_t>(c) : 0;
  const auto checked = [&](int64_t total) {
    const int64_t k = pick(total, fps);
    if (k < 0 || k >= total)
      throw std::runtime_error(fmt::format("video {}: frame {} asked for, the clip has {} frames", path, k, total));
    return k;
  };
  int64_t total = 0;
  if (guess > 0) {
    const int64_t k = pick(guess, fps);
    if (k >= 0 && k < guess) {
      auto v = scan(cap, path, {k}, /*to_end=*/true);
      if (v.total == guess && v.frames.size() == 1) return v;
      total = v.total;
    } else {
      total = scan(cap, path, {}, /*to_end=*/true).total;
    }
  } else {
    total = scan(cap, path, {}, /*to_end=*/true).total;
  }
  if (total == 0) throw std::runtime_error(fmt::format("video {}: no frame could be read (empty or corrupt)", path));
  return exactly(path, total, {checked(total)});
}

DecodedVideo decode_all_frames(const std::string& path) {
  auto cap = open_clip(path);
  const int64_t total = scan(cap, path, {}, /*to_end=*/true).total;
  if (total == 0) throw std::runtime_error(fmt::format("video {}: no frame could be read (empty or corrupt)", path));
  std::vector<int64_t> all(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) all[static_cast<size_t>(i)] = i;
  return exactly(path, total, all);
}

std::string encode_frame_bmp(const torch::Tensor& rgb_HW3) {
  const auto t = rgb_HW3.contiguous();
  const cv::Mat rgb(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), CV_8UC3, t.data_ptr<uint8_t>());
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> buf;
  if (!cv::imencode(".bmp", bgr, buf)) throw std::runtime_error("encoding a video frame as BMP failed");
  return std::string(buf.begin(), buf.end());
}

void write_video(const std::string& path, const std::vector<torch::Tensor>& frames, double fps) {
  if (frames.empty()) throw std::runtime_error(fmt::format("video {}: no frames to write", path));
  const auto ext = std::filesystem::path(path).extension().string();
  int fourcc = 0;
  if (ext == ".avi") fourcc = cv::VideoWriter::fourcc('M', 'J', 'P', 'G');
  else if (ext == ".mp4") fourcc = cv::VideoWriter::fourcc('m', 'p', '4', 'v');
  else if (ext == ".webm") fourcc = cv::VideoWriter::fourcc('V', 'P', '8', '0');
  else if (ext != ".gif") throw std::runtime_error(fmt::format("video {}: writes .avi, .mp4, .webm or .gif only", path));
  const int h = static_cast<int>(frames[0].size(0)), w = static_cast<int>(frames[0].size(1));
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  if (ext == ".gif") {  // OpenCV 4.6 writes no GIF: owl2's own lossless encoder (data/gif.h)
    std::string bytes;
    try {
      bytes = encode_gif(frames, fps);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(fmt::format("video {}: {}", path, e.what()));
    }
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error(fmt::format("video {}: cannot write the file", path));
    return;
  }
  cv::VideoWriter out(path, cv::CAP_FFMPEG, fourcc, fps, cv::Size(w, h));
  if (!out.isOpened() && ext == ".avi") out.open(path, cv::CAP_OPENCV_MJPEG, fourcc, fps, cv::Size(w, h));
  if (!out.isOpened()) throw std::runtime_error(fmt::format("video {}: no OpenCV backend writes this container", path));
  for (const auto& f : frames) {
    const auto t = f.contiguous();
    if (t.size(0) != h || t.size(1) != w) throw std::runtime_error(fmt::format("video {}: frames differ in size", path));
    const cv::Mat rgb(h, w, CV_8UC3, t.data_ptr<uint8_t>());
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    out.write(bgr);
  }
  out.release();
}

#else

void write_video(const std::string& path, const std::vector<torch::Tensor>&, double) {
  throw std::runtime_error(fmt::format("video {}: this build has no video support (OpenCV videoio)", path));
}

DecodedVideo decode_video(const std::string& path, int64_t) {
  throw std::runtime_error(fmt::format("video {}: this build has no video decoding (OpenCV videoio, Debian "
                                       "libopencv-videoio-dev, was not found when it was configured)", path));
}
DecodedVideo decode_all_frames(const std::string& path) { return decode_video(path, 1); }
DecodedVideo decode_frame(const std::string& path, const FramePick&) { return decode_video(path, 1); }
std::string encode_frame_bmp(const torch::Tensor&) {
  throw std::runtime_error("this build has no video support (OpenCV videoio)");
}

#endif

}  // namespace owl2::data
