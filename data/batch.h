// A collated micro-batch: what the loader produces and the model consumes.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace owl2 {

struct Batch {
  at::Tensor input_ids;       // [B,T] int64; -200 marks where an image's visual tokens go
  at::Tensor attention_mask;  // [B,T] int64, 1 = real token (padding may be on either side)
  at::Tensor labels;          // [B,T] int64, -100 = not supervised
  at::Tensor images;          // [N,C,H,W] float, the batch's images in reading order; undefined if none
  // Packed rows only (data.pack_tokens): [B,T] int64, which sample of its row each token belongs to (0, 1, ...
  // in order, contiguous), -1 on padding. Undefined for ordinary batches (one sample per row).
  at::Tensor segment_ids;
  int64_t samples = 0;        // samples in the batch (a packed row holds several)
  // Set by the trainer (ZeRO 3 with the vision stacks sharded) on a micro-batch without images while another
  // rank's has some: the loss also runs the vision tower on a blank image, times zero (trainers/setup.h).
  bool vision_placeholder = false;

  // Supervised next-token predictions: labels at positions 1.. that are not -100. Image placeholders carry
  // -100, so this equals the count over the spliced sequence. One host sync; call it before the step.
  int64_t label_tokens() const {
    if (!labels.defined() || labels.size(1) < 2) return 0;
    return labels.slice(1, 1).ne(-100).sum().item<int64_t>();
  }
};

}  // namespace owl2
