// Image decoding (OpenCV) and CLIP preprocessing that reproduces PIL + CLIPImageProcessor (spec §3.1).
#pragma once
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "data/choices.h"

namespace owl2 {

// ImageMode (data/choices.h): how a non-square image becomes square before the CLIP resize (spec §3.1).
ImageMode parse_image_mode(std::string_view name);  // resize|pad|crop; throws std::invalid_argument
const char* image_mode_name(ImageMode mode);

struct ImageConfig {
  int64_t size = 448;
  ImageMode mode = ImageMode::kPad;
  std::array<double, 3> mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> std{0.26862954, 0.26130258, 0.27577711};
  std::array<uint8_t, 3> pad_color{122, 116, 104};  // int(mean * 255)
};

// Pretraining augmentation in the BLIP-2 style: random resized crop of the source image (area fraction in
// [scale_min, scale_max], aspect ratio log-uniform in [ratio_min, ratio_max], torchvision's 10 tries then a
// centre-crop fallback) resized bicubic to size x size, then a horizontal flip with probability flip_prob.
struct AugmentConfig {
  double scale_min = 0.5, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  double flip_prob = 0.5;
};

// Decoded images are uint8 RGB tensors [H, W, 3], contiguous. Decoding follows what PIL's
// Image.open(...).convert("RGB") gives: EXIF orientation is NOT applied, alpha is dropped (not composited),
// grey is replicated, 16-bit colour keeps the high byte and 16-bit grey is clipped at 255.
// `name` (a path or tar member) is quoted in errors; corrupt, truncated or unsupported data throws
// std::runtime_error. Built with OWL2_WITH_OPENCV off, both throw an error saying so.
torch::Tensor decode_image(std::string_view bytes, const std::string& name);
torch::Tensor load_image(const std::string& path);
bool image_decoding_available();  // false when built without OpenCV

// PIL's Image.resize(..., BICUBIC) on uint8 RGB, bit for bit: separable, horizontal pass first with a uint8
// intermediate, a = -0.5, support 2 scaled by the downscale factor (antialiasing), 22-bit fixed-point weights.
torch::Tensor resize_bicubic(const torch::Tensor& rgb_HW3, int64_t out_h, int64_t out_w);
// The reference's expand2square: the image centred on a max(W,H) square of `fill`.
torch::Tensor expand_to_square(const torch::Tensor& rgb_HW3, const std::array<uint8_t, 3>& fill);

// Mode, bicubic resize to cfg.size, centre crop, /255 and CLIP normalization: float32 [3, size, size].
torch::Tensor preprocess_image(const torch::Tensor& rgb_HW3, const ImageConfig& cfg);
// The same, written into out_3SS (float32, contiguous, [3, size, size]; e.g. batch[i] of a pinned batch).
void preprocess_image_into(const torch::Tensor& rgb_HW3, const ImageConfig& cfg, const torch::Tensor& out_3SS);
// Augmented variant (pretraining): deterministic for a given seed; ignores cfg.mode.
torch::Tensor augment_image(const torch::Tensor& rgb_HW3, const ImageConfig& cfg, const AugmentConfig& aug,
                            uint64_t seed);
void augment_image_into(const torch::Tensor& rgb_HW3, const ImageConfig& cfg, const AugmentConfig& aug,
                        uint64_t seed, const torch::Tensor& out_3SS);

struct CropBox {
  int64_t top, left, height, width;
};
// The random resized crop box augment_image uses for this seed and image size (exposed for tests and docs).
CropBox random_resized_crop_box(int64_t height, int64_t width, const AugmentConfig& aug, uint64_t seed,
                                bool* flip = nullptr);

}  // namespace owl2
