// ExampleBuilder, collate and tokenizer training; see example.h.
#include "data/example.h"

#include <fmt/format.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <functional>
#include <stdexcept>

namespace owl2 {

ExampleBuilder::ExampleBuilder(std::shared_ptr<const Tokenizer> tokenizer, ExampleOptions options)
    : tok_(std::move(tokenizer)), opt_(std::move(options)), tmpl_(chat_template(opt_.chat_template)) {
  if (!tok_) throw std::invalid_argument("ExampleBuilder: no tokenizer");
}

Example ExampleBuilder::operator()(data::RawSample&& s) const {
  Example e;
  for (size_t i = 0; i < s.images.size(); ++i) {
    const std::string name = i < s.image_paths.size() ? s.image_paths[i] : s.id;
    const at::Tensor rgb = decode_image(s.images[i], name);
    if (opt_.augment) {
      const uint64_t seed = opt_.seed * 0x9E3779B97F4A7C15ull ^ std::hash<std::string>{}(s.id) ^ i;
      e.images.push_back(augment_image(rgb, opt_.image, opt_.augment_config, seed));
    } else {
      e.images.push_back(preprocess_image(rgb, opt_.image));
    }
  }
  tokenize(s, e.images.size(), e);
  return e;
}

int64_t ExampleBuilder::spliced_tokens(const data::RawSample& s, int64_t visual_tokens_per_image) const {
  Example e;
  const size_t images = std::max(s.images.size(), s.image_paths.size());
  tokenize(s, images, e);
  return static_cast<int64_t>(e.input_ids.size()) + static_cast<int64_t>(images) * (visual_tokens_per_image - 1);
}

void ExampleBuilder::tokenize(const data::RawSample& s, size_t num_images, Example& e) const {
  if (s.turns.empty()) {
    if (num_images != 1) {
      throw std::runtime_error(fmt::format("{}: sample '{}': an image-text pair needs exactly 1 image, has {}",
                                           s.source, s.id, num_images));
    }
    e.input_ids = tok_->encode_with_images(std::string(kImagePlaceholder) + s.caption);
    e.input_ids.push_back(Tokenizer::kEosId);
    e.labels = e.input_ids;
    e.labels[0] = kIgnoreIndex;  // BOS
    for (auto& l : e.labels) {
      if (l == kImageTokenIndex) l = kIgnoreIndex;
    }
    return;
  }
  std::vector<Turn> turns;
  turns.reserve(s.turns.size());
  for (const auto& t : s.turns) turns.push_back({parse_role(t.from), t.value});
  auto conv = tokenize_conversation(*tok_, tmpl_, turns);
  if (conv.num_images != static_cast<int64_t>(num_images)) {
    throw std::runtime_error(fmt::format("{}: sample '{}': {} image placeholders but {} images", s.source, s.id,
                                         conv.num_images, num_images));
  }
  e.input_ids = std::move(conv.input_ids);
  e.labels = std::move(conv.labels);
  e.masked = conv.mismatch;
}

int64_t spliced_length(const Example& e, int64_t visual_tokens_per_image) {
  return static_cast<int64_t>(e.input_ids.size()) +
         static_cast<int64_t>(e.images.size()) * (visual_tokens_per_image - 1);
}

void truncate_example(Example& e, int64_t max_length, int64_t visual_tokens_per_image) {
  int64_t len = 0;
  size_t keep = 0, images = 0;
  for (; keep < e.input_ids.size(); ++keep) {
    const int64_t add = e.input_ids[keep] == kImageTokenIndex ? visual_tokens_per_image : 1;
    if (len + add > max_length) break;
    len += add;
    if (e.input_ids[keep] == kImageTokenIndex) ++images;
  }
  e.input_ids.resize(keep);
  e.labels.resize(keep);
  e.images.resize(images);
}

Batch collate(std::vector<Example>&& examples) {
  Batch b;
  b.samples = static_cast<int64_t>(examples.size());
  size_t T = 0;
  for (const auto& e : examples) T = std::max(T, e.input_ids.size());
  const int64_t B = b.samples;
  b.input_ids = at::zeros({B, static_cast<int64_t>(T)}, at::kLong);
  b.labels = at::full({B, static_cast<int64_t>(T)}, kIgnoreIndex, at::kLong);
  b.attention_mask = at::zeros({B, static_cast<int64_t>(T)}, at::kLong);
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto labels = b.labels.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  std::vector<at::Tensor> images;
  for (int64_t i = 0; i < B; ++i) {
    const auto& e = examples[static_cast<size_t>(i)];
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      ids[i][static_cast<int64_t>(t)] = e.input_ids[t];
      labels[i][static_cast<int64_t>(t)] = e.masked ? kIgnoreIndex : e.labels[t];
      mask[i][static_cast<int64_t>(t)] = 1;
    }
    for (const auto& im : e.images) images.push_back(im);
  }
  if (!images.empty()) b.images = at::stack(images);
  return b;
}

Batch collate_packed(std::vector<Example>&& examples, const std::vector<size_t>& row_of) {
  if (row_of.size() != examples.size())
    throw std::invalid_argument(fmt::format("collate_packed: {} examples but {} row numbers", examples.size(), row_of.size()));
  // Rows in order, renumbered so that rows left empty (all their samples failed or were dropped) vanish.
  std::vector<size_t> row_len, row_index(examples.size());
  for (size_t k = 0; k < examples.size(); ++k) {
    if (k > 0 && row_of[k] < row_of[k - 1]) throw std::invalid_argument("collate_packed: row numbers must not decrease");
    if (k == 0 || row_of[k] != row_of[k - 1]) row_len.push_back(0);
    row_index[k] = row_len.size() - 1;
    row_len.back() += examples[k].input_ids.size();
  }
  Batch b;
  b.samples = static_cast<int64_t>(examples.size());
  const int64_t R = static_cast<int64_t>(row_len.size());
  const int64_t T = row_len.empty() ? 0 : static_cast<int64_t>(*std::max_element(row_len.begin(), row_len.end()));
  b.input_ids = at::zeros({R, T}, at::kLong);
  b.labels = at::full({R, T}, kIgnoreIndex, at::kLong);
  b.attention_mask = at::zeros({R, T}, at::kLong);
  b.segment_ids = at::full({R, T}, -1, at::kLong);
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto labels = b.labels.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  auto seg = b.segment_ids.accessor<int64_t, 2>();
  std::vector<at::Tensor> images;
  int64_t t = 0, segment = 0;
  for (size_t k = 0; k < examples.size(); ++k) {
    const auto& e = examples[k];
    const auto r = static_cast<int64_t>(row_index[k]);
    if (k == 0 || row_index[k] != row_index[k - 1]) t = segment = 0;
    for (size_t i = 0; i < e.input_ids.size(); ++i, ++t) {
      ids[r][t] = e.input_ids[i];
      labels[r][t] = e.masked || i == 0 ? kIgnoreIndex : e.labels[i];
      mask[r][t] = 1;
      seg[r][t] = segment;
    }
    ++segment;
    for (const auto& im : e.images) images.push_back(im);
  }
  if (!images.empty()) b.images = at::stack(images);
  return b;
}

void train_tokenizer(const std::vector<std::string>& lines, int64_t vocab_size, const std::string& out_prefix) {
  if (lines.empty()) throw std::invalid_argument("tokenizer training: the corpus is empty");
  std::vector<std::string> corpus = lines;
  size_t next = 0;
  class Iterator : public sentencepiece::SentenceIterator {
   public:
    Iterator(const std::vector<std::string>& c, size_t& i) : c_(c), i_(i) {}
    bool done() const override { return i_ >= c_.size(); }
    void Next() override { ++i_; }
    const std::string& value() const override { return c_[i_]; }
    sentencepiece::util::Status status() const override { return {}; }

   private:
    const std::vector<std::string>& c_;
    size_t& i_;
  } it(corpus, next);
  const std::string args = fmt::format(
      "--model_prefix={} --vocab_size={} --model_type=bpe --character_coverage=1.0 --unk_id=0 --bos_id=1 "
      "--eos_id=2 --pad_id=-1 --hard_vocab_limit=false --byte_fallback=false --split_digits=true "
      "--num_threads=1 --minloglevel=2",
      out_prefix, vocab_size);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it);
  if (!status.ok()) throw std::runtime_error("tokenizer training failed: " + status.ToString());
}

}  // namespace owl2
