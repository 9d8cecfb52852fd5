// From raw samples to model inputs: image-text pairs and conversations become token ids, labels and
// preprocessed images (one Example per sample); examples are collated into a right-padded Batch.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/template.h"
#include "data/tokenizer.h"

namespace owl2 {

struct Example {
  std::vector<int64_t> input_ids;  // -200 per image
  std::vector<int64_t> labels;     // -100 where not supervised
  std::vector<at::Tensor> images;  // float [3, S, S] each
  bool masked = false;             // the template's round lengths disagreed: nothing is supervised
};

struct ExampleOptions {
  ImageConfig image;
  bool augment = false;  // random resized crop + flip (pretraining); seeded by (seed, sample id)
  AugmentConfig augment_config;
  uint64_t seed = 0;
  TemplateKind chat_template = TemplateKind::kMplugOwl2;
};

// Thread-safe: the loader's worker threads call it concurrently.
class ExampleBuilder {
 public:
  ExampleBuilder(std::shared_ptr<const Tokenizer> tokenizer, ExampleOptions options);
  // An image-text pair becomes "<s><image>caption</s>" with the caption and </s> supervised (stage 1);
  // a conversation goes through the chat template with the reference's label masking (spec §3.5).
  // Throws std::runtime_error naming the sample on undecodable images or placeholder/image mismatches.
  Example operator()(data::RawSample&& sample) const;
  // The decoder length the sample's Example will have (spliced_length), from its text alone: the same
  // tokenization without decoding an image. `sample` may lack image bytes (Dataset::text); its images are
  // counted from image_paths. Throws as operator() does on placeholder/image mismatches.
  int64_t spliced_tokens(const data::RawSample& sample, int64_t visual_tokens_per_image) const;
  const Tokenizer& tokenizer() const { return *tok_; }

 private:
  // Token ids and labels of `s` with `num_images` images.
  void tokenize(const data::RawSample& s, size_t num_images, Example& e) const;

  std::shared_ptr<const Tokenizer> tok_;
  ExampleOptions opt_;
  ChatTemplate tmpl_;
};

// Decoder length after splicing: text tokens plus (visual_tokens_per_image - 1) per image.
int64_t spliced_length(const Example& e, int64_t visual_tokens_per_image);

// Cuts an example to at most `max_length` spliced tokens, keeping whole images (an image block that does not
// fit is removed together with its placeholder).
void truncate_example(Example& e, int64_t max_length, int64_t visual_tokens_per_image);

// Right-pads with pad id 0 and label -100; attention_mask marks real tokens; images are stacked in order.
Batch collate(std::vector<Example>&& examples);

// Packed rows: example k goes to row row_of[k] (non-decreasing, starting at 0), the row's samples one after
// the other. Right-padded like collate; segment_ids number the samples of each row (-1 on padding); each
// sample's first label is ignored (it would be predicted by the previous sample). Rows left empty are dropped.
Batch collate_packed(std::vector<Example>&& examples, const std::vector<size_t>& row_of);

// Trains a SentencePiece BPE model with LLaMA's special ids (unk 0, bos 1, eos 2, no pad) on the text of
// `lines`, writing `out_prefix`.model; `vocab_size` is an upper bound for small corpora.
void train_tokenizer(const std::vector<std::string>& lines, int64_t vocab_size, const std::string& out_prefix);

}  // namespace owl2
