// The named choices of the data pipeline (image mode, length policy, chat template, video layout), each with the one name
// table that the config reader and printer and the command-line flags share. Torch-free, so the config can use it.
#pragma once
#include "owl2/io/name_table.h"

namespace owl2 {

// How a non-square image becomes square before the CLIP resize (spec §3.1):
//   kResize: stretch to max(W,H) x max(W,H) (bicubic), the eval scripts' choice;
//   kPad:    centre on a max(W,H) square filled with pad_color, the training default;
//   kCrop:   none, the CLIP processor alone (shortest edge to size, centre crop).
enum class ImageMode { kResize, kPad, kCrop };
inline constexpr NameTable<ImageMode, 3> kImageModeNames{
    {{ImageMode::kResize, "resize"}, {ImageMode::kPad, "pad"}, {ImageMode::kCrop, "crop"}}};

// The two-separator templates of spec §3.4: mplug_owl2 (no system prompt) and vicuna_v1 (the Vicuna one).
enum class TemplateKind { kMplugOwl2, kVicunaV1 };
inline constexpr NameTable<TemplateKind, 2> kTemplateKindNames{
    {{TemplateKind::kMplugOwl2, "mplug_owl2"}, {TemplateKind::kVicunaV1, "vicuna_v1"}}};

// How a video's frames stand in the prompt (data.video_layout; docs/datasets.md, "Video"):
//   kFramesFirst: the N <|image|> placeholders one after the other, then the text (the default);
//   kNumbered:    a line per frame, "Frame 1: <|image|>" ... "Frame N: <|image|>", then the text, so that each
//                 frame's place in time is also said in words.
enum class VideoLayout { kFramesFirst, kNumbered };
inline constexpr NameTable<VideoLayout, 2> kVideoLayoutNames{
    {{VideoLayout::kFramesFirst, "frames_first"}, {VideoLayout::kNumbered, "numbered"}}};

namespace data {

// What the loader does with an example longer than its max_length.
enum class LengthPolicy { kDrop, kTruncate };
inline constexpr NameTable<LengthPolicy, 2> kLengthPolicyNames{
    {{LengthPolicy::kDrop, "drop"}, {LengthPolicy::kTruncate, "truncate"}}};

}  // namespace data
}  // namespace owl2
