// Image decoding with OpenCV and a re-implementation of PIL's uint8 bicubic resampler, so that preprocessing
// reproduces PIL + CLIPImageProcessor (spec §3.1) rather than OpenCV's non-antialiased INTER_CUBIC.
#include "data/image.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <vector>

#ifdef OWL2_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#endif
#ifdef OWL2_WITH_LIBJPEG
#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE
#include <cstdlib>
#include <jpeglib.h>
#include <jerror.h>
#endif

namespace owl2 {
namespace {

// ---- PIL-equivalent bicubic resampling (uint8, 3 channels) ---------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL's fixed-point weights for 8-bit images

// The vertical pass is a plain integer loop that vectorizes; on x86-64 an AVX2 copy is chosen at load time (8-lane
// 32-bit multiplies; the baseline SSE2 has none). Same integer arithmetic, so results are identical.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OWL2_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define OWL2_SIMD_CLONES
#endif

double bicubic(double x) {  // Keys cubic with a = -0.5, support 2
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// For each output position: the first input index, the tap count and ksize fixed-point weights.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weight;
};

Taps bicubic_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);  // downscaling widens the kernel: antialiasing
  const double support = 2.0 * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weight.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    // C casts truncate toward zero; PIL rounds the window ends this way.
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = xmax - xmin;
    double sum = 0.0;
    for (int x = 0; x < n; ++x) {
      w[x] = bicubic((x + xmin - center + 0.5) / filterscale);
      sum += w[x];
    }
    for (int x = 0; x < n; ++x) {
      const double v = sum != 0.0 ? w[x] / sum : w[x];
      t.weight[static_cast<size_t>(xx) * t.ksize + x] =
          static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    t.first[xx] = xmin;
    t.count[xx] = n;
  }
  return t;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift, as PIL
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// One output pixel of the horizontal pass. Three scalar accumulators: the compiler schedules this better than
// 4-lane vectors (measured), and the gather of 3-byte pixels leaves little for SIMD.
inline void horizontal_pixel(const uint8_t* row, const Taps& t, int xx, uint8_t* o) {
  const int32_t* k = &t.weight[static_cast<size_t>(xx) * t.ksize];
  const uint8_t* p = row + static_cast<int64_t>(t.first[xx]) * 3;
  int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
  for (int x = 0, n = t.count[xx]; x < n; ++x, p += 3) {
    s0 += p[0] * k[x];
    s1 += p[1] * k[x];
    s2 += p[2] * k[x];
  }
  o[0] = clip8(s0);
  o[1] = clip8(s1);
  o[2] = clip8(s2);
}

// Rows [y0, y1) of `in` (row stride in_stride bytes), output columns [c0, c1) of the horizontal pass. Rows below
// same_top are all equal, and so are rows from same_bottom on (the pad bands of expand_to_square): each band is
// computed once and copied.
void resample_horizontal(const uint8_t* in, int64_t in_stride, int y0, int y1, const Taps& t, int c0, int c1,
                         uint8_t* out, int same_top, int same_bottom) {
  const int64_t out_stride = static_cast<int64_t>(c1 - c0) * 3;
  const uint8_t* top_row = nullptr;
  const uint8_t* bottom_row = nullptr;
  for (int y = y0; y < y1; ++y) {
    uint8_t* o = out + (y - y0) * out_stride;
    const uint8_t*& done = y < same_top ? top_row : bottom_row;
    const bool same = y < same_top || y >= same_bottom;
    if (same && done) {
      std::memcpy(o, done, out_stride);
      continue;
    }
    if (same) done = o;
    const uint8_t* row = in + y * in_stride;
    for (int xx = c0; xx < c1; ++xx, o += 3) horizontal_pixel(row, t, xx, o);
  }
}

// Output rows [r0, r1) of the vertical pass; `in` holds input rows starting at row `in_row0`, `width3` bytes each.
OWL2_SIMD_CLONES void resample_vertical(const uint8_t* in, int in_row0, int64_t width3, const Taps& t, int r0, int r1, uint8_t* out) {
  std::vector<int32_t> acc(width3);
  for (int yy = r0; yy < r1; ++yy) {
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    const int32_t* k = &t.weight[static_cast<size_t>(yy) * t.ksize];
    for (int y = 0, n = t.count[yy]; y < n; ++y) {
      const uint8_t* row = in + static_cast<int64_t>(t.first[yy] + y - in_row0) * width3;
      const int32_t ky = k[y];
      for (int64_t x = 0; x < width3; ++x) acc[x] += row[x] * ky;
    }
    uint8_t* o = out + static_cast<int64_t>(yy - r0) * width3;
    for (int64_t x = 0; x < width3; ++x) o[x] = clip8(acc[x]);
  }
}

void check_rgb(const torch::Tensor& img, const char* what) {
  TORCH_CHECK(img.dim() == 3 && img.size(2) == 3 && img.scalar_type() == torch::kUInt8,
              what, ": expected a uint8 RGB tensor [H, W, 3], got ", img.scalar_type(), " ", img.sizes());
  TORCH_CHECK(img.size(0) > 0 && img.size(1) > 0, what, ": empty image ", img.sizes());
}

// Resizes to (out_h, out_w) as PIL does and returns only the window rows [r0, r0+wh) x cols [c0, c0+ww).
// Each output pixel depends only on its own taps, so the window equals a crop of the full resize.
torch::Tensor resize_window(const torch::Tensor& img, int64_t out_h, int64_t out_w, int64_t r0, int64_t c0,
                            int64_t wh, int64_t ww, int64_t same_top = 0, int64_t same_bottom = 0) {
  // Row-strided views (crops of an HWC image) are read in place.
  const torch::Tensor src = img.stride(2) == 1 && img.stride(1) == 3 ? img : img.contiguous();
  const int64_t row_stride = src.stride(0);
  const int in_h = static_cast<int>(src.size(0)), in_w = static_cast<int>(src.size(1));
  const uint8_t* data = src.data_ptr<uint8_t>();
  const bool need_h = out_w != in_w, need_v = out_h != in_h;

  // Horizontal pass (if any) on the input rows the vertical window needs.
  Taps tv;
  int row0 = static_cast<int>(r0), row1 = static_cast<int>(r0 + wh);
  if (need_v) {
    tv = bicubic_taps(in_h, static_cast<int>(out_h));
    row0 = tv.first[r0];
    row1 = tv.first[r0 + wh - 1] + tv.count[r0 + wh - 1];
  }
  torch::Tensor mid;
  const uint8_t* mid_data;
  if (need_h) {
    const Taps th = bicubic_taps(in_w, static_cast<int>(out_w));
    mid = torch::empty({row1 - row0, ww, 3}, torch::kUInt8);
    resample_horizontal(data, row_stride, row0, row1, th, static_cast<int>(c0), static_cast<int>(c0 + ww),
                        mid.data_ptr<uint8_t>(), static_cast<int>(same_top),
                        static_cast<int>(same_bottom > 0 ? in_h - same_bottom : in_h));
    mid_data = mid.data_ptr<uint8_t>();
  } else {
    // No horizontal resampling: the column window is a plain crop (plain copies: no torch kernels, which
    // would start intra-op threads inside the loader's decode threads).
    mid = torch::empty({row1 - row0, ww, 3}, torch::kUInt8);
    uint8_t* m = mid.data_ptr<uint8_t>();
    for (int y = row0; y < row1; ++y) {
      std::memcpy(m + (y - row0) * ww * 3, data + y * row_stride + c0 * 3, ww * 3);
    }
    mid_data = m;
  }
  if (!need_v) return mid;
  torch::Tensor out = torch::empty({wh, ww, 3}, torch::kUInt8);
  resample_vertical(mid_data, row0, ww * 3, tv, static_cast<int>(r0), static_cast<int>(r0 + wh),
                    out.data_ptr<uint8_t>());
  return out;
}

// uint8 HWC window -> normalized float CHW, through a per-channel lookup table.
void normalize_into(const torch::Tensor& img_SS3, const ImageConfig& cfg, const torch::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == torch::kFloat && out.is_contiguous() && out.dim() == 3 && out.size(0) == 3 &&
                  out.size(1) == cfg.size && out.size(2) == cfg.size,
              "preprocess_image_into: expected a contiguous float32 [3, ", cfg.size, ", ", cfg.size, "] output, got ",
              out.scalar_type(), " ", out.sizes());
  std::array<std::array<float, 256>, 3> lut;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      // float32 rescale then normalize, as the processor does.
      const float scaled = static_cast<float>(v * (1.0 / 255.0));
      lut[c][v] = static_cast<float>((scaled - cfg.mean[c]) / cfg.std[c]);
    }
  }
  const int64_t n = cfg.size * cfg.size;
  const uint8_t* p = img_SS3.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    o[i] = lut[0][p[3 * i]];
    o[n + i] = lut[1][p[3 * i + 1]];
    o[2 * n + i] = lut[2][p[3 * i + 2]];
  }
}

// The CLIP processor's geometry: shortest edge to `size` (long edge int(size * long / short)), centre crop.
// pad_top / pad_bottom: uniform pad bands of an expanded image (rows computed once; see resample_horizontal).
torch::Tensor clip_resize_crop(const torch::Tensor& img, int64_t size, int64_t pad_top = 0, int64_t pad_bottom = 0) {
  const int64_t h = img.size(0), w = img.size(1);
  const int64_t short_edge = std::min(h, w), long_edge = std::max(h, w);
  const auto new_long = static_cast<int64_t>(static_cast<double>(size * long_edge) / static_cast<double>(short_edge));
  const int64_t new_h = h <= w ? size : new_long;
  const int64_t new_w = h <= w ? new_long : size;
  return resize_window(img, new_h, new_w, (new_h - size) / 2, (new_w - size) / 2, size, size, pad_top, pad_bottom);
}

void check_config(const ImageConfig& cfg) {
  if (cfg.size <= 0) throw std::invalid_argument(fmt::format("image size must be positive, got {}", cfg.size));
  for (int c = 0; c < 3; ++c) {
    if (!(cfg.std[c] > 0)) throw std::invalid_argument(fmt::format("image std[{}] must be > 0, got {}", c, cfg.std[c]));
  }
}

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

#ifdef OWL2_WITH_LIBJPEG
// libjpeg reports errors through longjmp, so this function keeps only plain data on its frame.
struct JpegErrorManager {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}

void jpeg_emit_message(j_common_ptr cinfo, int level) {
  // Warnings such as extraneous bytes are tolerated (PIL loads those files too); a file cut short is not.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_error_exit(cinfo);
}

// Decodes 8-bit JPEG straight to RGB with libjpeg's default (ISLOW) IDCT and fancy upsampling, the settings of
// both PIL and OpenCV. Returns 1 on success, 0 on an error (message in err), 2 for a truncated file, -1 for
// colour spaces left to OpenCV.
// The pixels are malloc'ed into *pixels (the caller owns them).
int jpeg_decode_rgb(const uint8_t* data, size_t size, uint8_t** pixels, int* height, int* width, char* err) {
  jpeg_decompress_struct cinfo;
  JpegErrorManager jerr;
  uint8_t* volatile out = nullptr;
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = jpeg_error_exit;
  jerr.mgr.emit_message = jpeg_emit_message;
  if (setjmp(jerr.jump)) {
    std::snprintf(err, JMSG_LENGTH_MAX, "%s", jerr.message);
    const bool truncated = cinfo.err->msg_code == JWRN_JPEG_EOF;
    jpeg_destroy_decompress(&cinfo);
    std::free(out);
    return truncated ? 2 : 0;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  const bool grey = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  if (!grey && cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_RGB) {
    jpeg_destroy_decompress(&cinfo);
    return -1;  // CMYK / YCCK
  }
  cinfo.out_color_space = grey ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  const int w = static_cast<int>(cinfo.output_width), h = static_cast<int>(cinfo.output_height);
  out = static_cast<uint8_t*>(std::malloc(static_cast<size_t>(w) * h * 3));
  if (!out) {
    std::snprintf(err, JMSG_LENGTH_MAX, "out of memory for %dx%d pixels", w, h);
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* row = out + static_cast<size_t>(cinfo.output_scanline) * w * 3;
    JSAMPROW rows[1] = {row};
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (grey) {  // decoded into the first third of the row: spread from the back
      for (int x = w - 1; x >= 0; --x) row[3 * x] = row[3 * x + 1] = row[3 * x + 2] = row[x];
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  *pixels = out;
  *height = h;
  *width = w;
  return 1;
}
#endif

#ifdef OWL2_WITH_OPENCV
// JPEG decoders accept a file cut short (they fill the rest with grey and only warn); PIL refuses it. A JPEG
// must end with its EOI marker, allowing trailing padding or an appended trailer of up to 64 KiB.
bool jpeg_has_eoi(std::string_view b) {
  const size_t tail = std::min<size_t>(b.size(), 64 * 1024);
  for (size_t i = b.size() - 1; i > b.size() - tail; --i) {
    if (static_cast<uint8_t>(b[i - 1]) == 0xFF && static_cast<uint8_t>(b[i]) == 0xD9) return true;
  }
  return false;
}
#endif

}  // namespace

ImageMode parse_image_mode(std::string_view name) {
  if (const auto mode = find_by_name(kImageModeNames, name)) return *mode;
  throw std::invalid_argument(
      fmt::format("image mode: expected {}, got '{}'", joined_names(kImageModeNames), name));
}

const char* image_mode_name(ImageMode mode) { return name_of(kImageModeNames, mode).data(); }

bool image_decoding_available() {
#ifdef OWL2_WITH_OPENCV
  return true;
#else
  return false;
#endif
}

torch::Tensor decode_image(std::string_view bytes, const std::string& name) {
#ifdef OWL2_WITH_OPENCV
  if (bytes.empty()) throw std::runtime_error(fmt::format("image {}: empty file", name));
  const bool is_jpeg = bytes.size() >= 3 && static_cast<uint8_t>(bytes[0]) == 0xFF &&
                       static_cast<uint8_t>(bytes[1]) == 0xD8 && static_cast<uint8_t>(bytes[2]) == 0xFF;
#ifdef OWL2_WITH_LIBJPEG
  if (is_jpeg) {
    uint8_t* pixels = nullptr;
    int h = 0, w = 0;
    char err[JMSG_LENGTH_MAX] = {0};
    const int rc = jpeg_decode_rgb(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &pixels, &h, &w, err);
    if (rc == 0 || rc == 2) {
      throw std::runtime_error(fmt::format("image {}: {} ({}, {} bytes)", name,
                                           rc == 2 ? "truncated JPEG" : "cannot decode JPEG", err, bytes.size()));
    }
    if (rc == 1) return torch::from_blob(pixels, {h, w, 3}, [](void* p) { std::free(p); }, torch::kUInt8);
  }
#endif
  if (is_jpeg && !jpeg_has_eoi(bytes)) {
    throw std::runtime_error(fmt::format("image {}: truncated JPEG (no end-of-image marker; {} bytes)", name,
                                         bytes.size()));
  }
  const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
  // Any depth and channel count, and no EXIF rotation (PIL does not apply it either). ANYCOLOR strips alpha.
  cv::Mat m;
  try {
    m = cv::imdecode(raw, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR | cv::IMREAD_IGNORE_ORIENTATION);
  } catch (const cv::Exception& e) {
    throw std::runtime_error(fmt::format("image {}: cannot decode: {}", name, e.what()));
  }
  if (m.empty()) {
    throw std::runtime_error(fmt::format("image {}: cannot decode ({} bytes; corrupt, truncated or not an image)",
                                         name, bytes.size()));
  }
  const int ch = m.channels();
  const int depth = m.depth();
  if ((depth != CV_8U && depth != CV_16U) || (ch != 1 && ch != 3 && ch != 4)) {
    throw std::runtime_error(fmt::format("image {}: unsupported pixel format (depth {}, {} channels)", name, depth, ch));
  }
  const int64_t h = m.rows, w = m.cols;
  torch::Tensor out = torch::empty({h, w, 3}, torch::kUInt8);
  uint8_t* o = out.data_ptr<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    uint8_t* orow = o + y * w * 3;
    if (depth == CV_8U) {
      const uint8_t* r = m.ptr<uint8_t>(static_cast<int>(y));
      for (int64_t x = 0; x < w; ++x, r += ch) {
        if (ch == 1) {
          orow[3 * x] = orow[3 * x + 1] = orow[3 * x + 2] = r[0];
        } else {  // BGR(A) -> RGB, alpha dropped like PIL's convert("RGB")
          orow[3 * x] = r[2];
          orow[3 * x + 1] = r[1];
          orow[3 * x + 2] = r[0];
        }
      }
    } else {
      const uint16_t* r = m.ptr<uint16_t>(static_cast<int>(y));
      for (int64_t x = 0; x < w; ++x, r += ch) {
        if (ch == 1) {  // PIL: I;16 -> RGB clips at 255
          orow[3 * x] = orow[3 * x + 1] = orow[3 * x + 2] = static_cast<uint8_t>(std::min<uint16_t>(r[0], 255));
        } else {  // PIL keeps the high byte of 16-bit colour
          orow[3 * x] = static_cast<uint8_t>(r[2] >> 8);
          orow[3 * x + 1] = static_cast<uint8_t>(r[1] >> 8);
          orow[3 * x + 2] = static_cast<uint8_t>(r[0] >> 8);
        }
      }
    }
  }
  return out;
#else
  (void)bytes;
  throw std::runtime_error(fmt::format(
      "image {}: owl2 was built without OpenCV (OWL2_WITH_OPENCV=OFF) and cannot decode images; rebuild with "
      "-DOWL2_WITH_OPENCV=ON or pass decoded uint8 [H, W, 3] tensors",
      name));
#endif
}

torch::Tensor load_image(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("image {}: cannot open file", path));
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw std::runtime_error(fmt::format("image {}: read error", path));
  return decode_image(bytes, path);
}

torch::Tensor resize_bicubic(const torch::Tensor& rgb_HW3, int64_t out_h, int64_t out_w) {
  check_rgb(rgb_HW3, "resize_bicubic");
  TORCH_CHECK(out_h > 0 && out_w > 0, "resize_bicubic: output size must be positive, got ", out_h, "x", out_w);
  return resize_window(rgb_HW3, out_h, out_w, 0, 0, out_h, out_w);
}

torch::Tensor expand_to_square(const torch::Tensor& rgb_HW3, const std::array<uint8_t, 3>& fill) {
  check_rgb(rgb_HW3, "expand_to_square");
  const int64_t h = rgb_HW3.size(0), w = rgb_HW3.size(1), m = std::max(h, w);
  if (h == w) return rgb_HW3;
  const torch::Tensor src = rgb_HW3.contiguous();
  torch::Tensor out = torch::empty({m, m, 3}, torch::kUInt8);
  uint8_t* o = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < m * m; ++i) std::memcpy(o + 3 * i, fill.data(), 3);
  const int64_t top = (m - h) / 2, left = (m - w) / 2;
  const uint8_t* s = src.data_ptr<uint8_t>();
  for (int64_t y = 0; y < h; ++y) std::memcpy(o + ((top + y) * m + left) * 3, s + y * w * 3, w * 3);
  return out;
}

void preprocess_image_into(const torch::Tensor& rgb_HW3, const ImageConfig& cfg, const torch::Tensor& out_3SS) {
  check_rgb(rgb_HW3, "preprocess_image");
  check_config(cfg);
  torch::Tensor square = rgb_HW3;
  const int64_t h = rgb_HW3.size(0), m = std::max(h, rgb_HW3.size(1));
  int64_t pad_top = 0, pad_bottom = 0;
  if (cfg.mode == ImageMode::kResize && h != rgb_HW3.size(1)) {
    square = resize_window(rgb_HW3, m, m, 0, 0, m, m);  // its own uint8 pass, as PIL does it
  } else if (cfg.mode == ImageMode::kPad) {
    square = expand_to_square(rgb_HW3, cfg.pad_color);
    pad_top = (m - h) / 2;
    pad_bottom = m - h - pad_top;
  }
  normalize_into(clip_resize_crop(square, cfg.size, pad_top, pad_bottom), cfg, out_3SS);
}

torch::Tensor preprocess_image(const torch::Tensor& rgb_HW3, const ImageConfig& cfg) {
  torch::Tensor out = torch::empty({3, cfg.size, cfg.size}, torch::kFloat);
  preprocess_image_into(rgb_HW3, cfg, out);
  return out;
}

CropBox random_resized_crop_box(int64_t height, int64_t width, const AugmentConfig& aug, uint64_t seed, bool* flip) {
  if (!(aug.scale_min > 0 && aug.scale_min <= aug.scale_max && aug.scale_max <= 1.0 && aug.ratio_min > 0 &&
        aug.ratio_min <= aug.ratio_max)) {
    throw std::invalid_argument(fmt::format("augment: need 0 < scale_min <= scale_max <= 1 and 0 < ratio_min <= "
                                            "ratio_max, got scale [{}, {}], ratio [{}, {}]",
                                            aug.scale_min, aug.scale_max, aug.ratio_min, aug.ratio_max));
  }
  std::mt19937_64 rng(splitmix(seed));
  auto uniform = [&rng](double lo, double hi) { return lo + (hi - lo) * std::generate_canonical<double, 53>(rng); };
  auto randint = [&rng](int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(n)); };
  const double area = static_cast<double>(height * width);
  CropBox box{0, 0, height, width};
  bool found = false;
  for (int attempt = 0; attempt < 10 && !found; ++attempt) {
    const double target = area * uniform(aug.scale_min, aug.scale_max);
    const double ratio = std::exp(uniform(std::log(aug.ratio_min), std::log(aug.ratio_max)));
    const auto w = static_cast<int64_t>(std::lround(std::sqrt(target * ratio)));
    const auto h = static_cast<int64_t>(std::lround(std::sqrt(target / ratio)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      box = {randint(height - h + 1), randint(width - w + 1), h, w};
      found = true;
    }
  }
  if (!found) {  // centre crop clamped to the ratio range
    const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
    int64_t w = width, h = height;
    if (in_ratio < aug.ratio_min) {
      h = std::lround(static_cast<double>(w) / aug.ratio_min);
    } else if (in_ratio > aug.ratio_max) {
      w = std::lround(static_cast<double>(h) * aug.ratio_max);
    }
    box = {(height - h) / 2, (width - w) / 2, h, w};
  }
  const bool f = uniform(0.0, 1.0) < aug.flip_prob;
  if (flip) *flip = f;
  return box;
}

void augment_image_into(const torch::Tensor& rgb_HW3, const ImageConfig& cfg, const AugmentConfig& aug,
                        uint64_t seed, const torch::Tensor& out_3SS) {
  check_rgb(rgb_HW3, "augment_image");
  check_config(cfg);
  bool flip = false;
  const CropBox b = random_resized_crop_box(rgb_HW3.size(0), rgb_HW3.size(1), aug, seed, &flip);
  using torch::indexing::Slice;
  torch::Tensor crop = rgb_HW3.index({Slice(b.top, b.top + b.height), Slice(b.left, b.left + b.width)});
  torch::Tensor resized = resize_window(crop, cfg.size, cfg.size, 0, 0, cfg.size, cfg.size);
  if (flip) {
    uint8_t* p = resized.data_ptr<uint8_t>();
    for (int64_t y = 0; y < cfg.size; ++y) {
      uint8_t* row = p + y * cfg.size * 3;
      for (int64_t a = 0, z = cfg.size - 1; a < z; ++a, --z) std::swap_ranges(row + 3 * a, row + 3 * a + 3, row + 3 * z);
    }
  }
  normalize_into(resized, cfg, out_3SS);
}

torch::Tensor augment_image(const torch::Tensor& rgb_HW3, const ImageConfig& cfg, const AugmentConfig& aug,
                            uint64_t seed) {
  torch::Tensor out = torch::empty({3, cfg.size, cfg.size}, torch::kFloat);
  augment_image_into(rgb_HW3, cfg, aug, seed, out);
  return out;
}

}  // namespace owl2
