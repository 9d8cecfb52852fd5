// Model invariances: MAM with equal copies is plain LLaMA, text-only samples ignore the image copies, the
// interleaved QKV layout, padding-side independence, the unmasked causal attention on right-padded batches,
// reduced-precision softmax / norm, count mismatch errors.
#include <catch2/catch.hpp>
#include <torch/nn/functional/loss.h>

#include "owl2/model/init.h"
#include "owl2/model/model.h"
#include "tests/golden_io.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_model_properties {

using namespace owl2;
using Catch::Matchers::Contains;
using test::max_abs_diff;

namespace {

// For every multiway parameter: multiway.1 <- f(multiway.0, multiway.1).
template <class F> void edit_image_copies(MPLUGOwl2ForCausalLM& model, F f) {
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters();
  for (auto& item : params) {
    const auto& name = item.key();
    const auto pos = name.find(".multiway.1.");
    if (pos == std::string::npos) continue;
    auto text_name = name;
    text_name.replace(pos, 12, ".multiway.0.");
    item.value().copy_(f(params[text_name], item.value()));
  }
}

torch::Tensor ids(std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64).unsqueeze(0); }

torch::Tensor rows(const std::vector<std::vector<int64_t>>& v) {
  std::vector<torch::Tensor> r;
  for (const auto& row : v) r.push_back(torch::tensor(row, torch::kInt64));
  return torch::stack(r);
}

// A batch like collate's: rows of mixed spliced lengths (10, 4, 18 and 9 real tokens), with one, no, two and
// no images, the third row without padding; labels on the real text tokens after the first, -100 elsewhere.
// `left` puts the padding first instead.
ModelInputs mixed_batch(bool left = false) {
  const int64_t I = kImageTokenIndex;
  const std::vector<std::vector<int64_t>> real{
      {1, 5, I, 7, 8, 9}, {1, 12, 13, 14}, {1, I, 9, 10, I, 11, 12, 13, 14, 15}, {1, 20, 21, 22, 23, 24, 25, 26, 27}};
  const int64_t T = 10;
  auto ids = torch::zeros({4, T}, torch::kInt64), mask = torch::zeros({4, T}, torch::kInt64);
  auto labels = torch::full({4, T}, kIgnoreIndex, torch::kInt64);
  for (int64_t b = 0; b < 4; ++b) {
    const auto& r = real[static_cast<size_t>(b)];
    const int64_t off = left ? T - static_cast<int64_t>(r.size()) : 0;
    for (size_t t = 0; t < r.size(); ++t) {
      const int64_t s = off + static_cast<int64_t>(t);
      ids[b][s].fill_(r[t]);
      mask[b][s].fill_(1);
      if (t > 0 && r[t] != I) labels[b][s].fill_(r[t]);
    }
  }
  const auto images = test::read_golden("tests/golden/model_tiny.safetensors").at("in.images");  // 3 images
  return {ids, mask, images, labels};
}

ModelInputs with_padding_attention(ModelInputs in, PaddingAttention a) {
  in.padding_attention = a;
  return in;
}

// The shifted mean cross-entropy over labels != -100 of spliced logits, as forward computes it.
torch::Tensor shifted_loss(const torch::Tensor& logits_BSV, const torch::Tensor& labels_BS) {
  const int64_t B = labels_BS.size(0), V = logits_BSV.size(2);
  const auto targets_BS = torch::cat({labels_BS.slice(1, 1), torch::full({B, 1}, kIgnoreIndex, labels_BS.options())}, 1);
  return torch::nn::functional::cross_entropy(
      logits_BSV.reshape({-1, V}), targets_BS.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

}  // namespace

TEST_CASE("with both multiway copies equal the decoder equals HF LLaMA", "[model][property]") {
  auto model = test::tiny_golden_model();
  edit_image_copies(model, [](const torch::Tensor& text, const torch::Tensor&) { return text; });
  const auto g = test::read_golden("tests/golden/llama_check.safetensors");
  const auto ids_BT = g.at("input_ids");
  const int64_t B = ids_BT.size(0), T = ids_BT.size(1);
  // An arbitrary modality pattern: with equal copies the routing must not matter.
  const auto modality = torch::tensor({0, 1, 1, 0, 1, 0, 0}, torch::kInt64).expand({B, T}).contiguous();
  const auto logits = model->lm_head(model->decode(model->model->embed_tokens(ids_BT), torch::ones({B, T}, torch::kBool),
                                                   torch::arange(T).expand({B, T}),
                                                   ModalityRouting::from_modality(modality)));
  CHECK(max_abs_diff(logits, g.at("logits")) < 1e-9);
}

TEST_CASE("changing the image copies leaves a text-only sample's logits unchanged", "[model][property]") {
  auto model = test::tiny_golden_model();
  const auto g = test::read_golden("tests/golden/model_tiny.safetensors");
  ModelInputs in{g.at("in.input_ids"), g.at("in.attention_mask"), g.at("in.images"), {}};
  const auto before = model->forward(in).logits;
  edit_image_copies(model, [](const torch::Tensor&, const torch::Tensor& image) { return image * 1.5 + 0.1; });
  const auto after = model->forward(in).logits;
  CHECK(torch::equal(before[1], after[1]));       // sample 1 is text only
  CHECK(max_abs_diff(before[0], after[0]) > 1e-3);  // the image samples do change
  CHECK(max_abs_diff(before[2], after[2]) > 1e-3);
}

TEST_CASE("the fused query_key_value is read per head as [q|k|v], not as Q|K|V blocks", "[model][property]") {
  torch::manual_seed(3);
  VisionConfig cfg;
  cfg.hidden_size = 8;
  cfg.num_attention_heads = 2;
  VisionAttention attn(cfg);
  {
    torch::NoGradGuard no_grad;  // constructors leave weights uninitialised; any random values will do
    for (auto& p : attn->parameters()) p.uniform_(-0.35, 0.35);
  }
  attn->to(torch::kFloat64);
  const auto x = torch::randn({1, 5, 8}, torch::kFloat64);
  const auto W = attn->query_key_value->weight, b = attn->query_key_value->bias;
  auto attend = [&](auto rows_of) {  // rows_of(part, head) -> row indices of that head's q / k / v
    std::vector<torch::Tensor> heads;
    for (int64_t h = 0; h < 2; ++h) {
      auto proj = [&](int64_t part) {
        const auto r = rows_of(part, h);
        return torch::addmm(b.index_select(0, r), x[0], W.index_select(0, r).t());
      };
      const auto q = proj(0), k = proj(1), v = proj(2);
      heads.push_back(torch::softmax(q.mm(k.t()) / 2.0, -1).mm(v));
    }
    return attn->dense(torch::cat(heads, 1)).unsqueeze(0);
  };
  const auto interleaved = attend([](int64_t part, int64_t h) { return torch::arange(h * 12 + part * 4, h * 12 + part * 4 + 4); });
  const auto blocks = attend([](int64_t part, int64_t h) { return torch::arange(part * 8 + h * 4, part * 8 + h * 4 + 4); });
  const auto out = attn(x);
  CHECK(max_abs_diff(out, interleaved) < 1e-12);
  CHECK(max_abs_diff(out, blocks) > 1e-3);
}

TEST_CASE("a left- or right-padded batch gives each sample the logits it has alone", "[model][property]") {
  auto model = test::tiny_golden_model();
  torch::NoGradGuard no_grad;
  const auto g = test::read_golden("tests/golden/model_tiny.safetensors");
  const auto images = g.at("in.images");
  const int64_t I = kImageTokenIndex;
  const std::vector<int64_t> a{1, 5, I, 7, 8}, b{1, I, 9, 10, 11, 12, I, 13};
  const auto alone_a = model->forward({ids(a), {}, images.slice(0, 0, 1), {}}).logits[0];
  const auto alone_b = model->forward({ids(b), {}, images.slice(0, 1, 3), {}}).logits[0];
  const int64_t La = alone_a.size(0), Lb = alone_b.size(0);  // 9 and 16 spliced tokens

  // Left padding: a is padded by 3 input tokens; after splicing it sits at the right edge.
  const auto left = rows({{0, 0, 0, 1, 5, I, 7, 8}, {1, I, 9, 10, 11, 12, I, 13}});
  const auto left_mask = rows({{0, 0, 0, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1}});
  const auto lo = model->forward({left, left_mask, images, {}});
  REQUIRE(lo.logits.size(1) == Lb);
  CHECK(max_abs_diff(lo.logits[0].slice(0, Lb - La), alone_a) < 1e-10);
  CHECK(max_abs_diff(lo.logits[1], alone_b) < 1e-10);
  CHECK(lo.position_ids[0][Lb - La].item<int64_t>() == 0);
  CHECK(lo.attention_mask[0].sum().item<int64_t>() == La);
  CHECK(lo.modality[0].sum().item<int64_t>() == 5);  // one image block, vit_eos included
  CHECK(lo.modality[1].sum().item<int64_t>() == 10);

  // Right padding.
  const auto right = rows({{1, 5, I, 7, 8, 0, 0, 0}, {1, I, 9, 10, 11, 12, I, 13}});
  const auto right_mask = rows({{1, 1, 1, 1, 1, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1}});
  const auto ro = model->forward({right, right_mask, images, {}});
  CHECK(max_abs_diff(ro.logits[0].slice(0, 0, La), alone_a) < 1e-10);
  CHECK(max_abs_diff(ro.logits[1], alone_b) < 1e-10);
  CHECK(ro.attention_mask[0].slice(0, La).sum().item<int64_t>() == 0);
}

TEST_CASE("right padding: is_causal without a mask gives the masked loss and every gradient in float64",
          "[model][property][attention]") {
  auto model = test::tiny_golden_model();
  const auto in = mixed_batch();
  REQUIRE(model->splice_inputs(in).causal_is_exact);
  struct Run {
    double loss;
    std::map<std::string, torch::Tensor> grads;
  };
  auto run = [&](PaddingAttention a) {
    model->zero_grad();
    const auto out = model->forward(with_padding_attention(in, a));
    out.loss.backward();
    Run r{out.loss.item<double>(), {}};
    for (const auto& p : model->named_parameters()) {
      if (p.value().grad().defined()) r.grads[p.key()] = p.value().grad().clone();
    }
    return r;
  };
  const auto masked = run(PaddingAttention::kExplicitMask);
  const auto causal = run(PaddingAttention::kCausalWhenExact);
  CHECK(std::abs(causal.loss - masked.loss) <= 1e-12 * std::abs(masked.loss));
  // Every parameter reaches the loss (the batch has text and image tokens), so every gradient is compared:
  // 1e-12 relative, and 1e-15 absolute for gradients below 1e-3.
  REQUIRE(masked.grads.size() == model->parameters().size());
  REQUIRE(causal.grads.size() == masked.grads.size());
  int64_t vanishing = 0;
  for (const auto& [name, g] : masked.grads) {
    INFO(name);
    const double scale = g.abs().max().item<double>();
    CHECK(max_abs_diff(causal.grads.at(name), g) <= 1e-12 * std::max(scale, 1e-3));
    if (scale < 1e-8) {
      // Only the abstractor's key biases: a shift shared by all keys leaves the softmax unchanged.
      CHECK(name.find("crossattention.attention.key.bias") != std::string::npos);
      ++vanishing;
    }
  }
  CHECK(vanishing == 2);
}

TEST_CASE("right padding: real positions' logits are the masked ones, padded positions differ",
          "[model][property][attention]") {
  auto model = test::tiny_golden_model();
  torch::NoGradGuard no_grad;
  const auto in = mixed_batch();
  const auto masked = model->forward(with_padding_attention(in, PaddingAttention::kExplicitMask));
  const auto causal = model->forward(in);  // the default: is_causal where exact
  const auto real_BS = masked.attention_mask;
  REQUIRE(torch::equal(causal.attention_mask, real_BS));
  REQUIRE(real_BS.logical_not().sum().item<int64_t>() == 8 + 14 + 9);  // pads of rows 0, 1, 3 (S = 18)
  const auto real_logits = [&](const ModelOutput& o) { return o.logits.index({real_BS}); };
  const double scale = real_logits(masked).abs().max().item<double>();
  CHECK(max_abs_diff(real_logits(causal), real_logits(masked)) <= 1e-12 * scale);
  // Padded positions attend to earlier pads on the causal path: different logits, so that path really ran.
  const auto pad_BS = real_BS.logical_not();
  CHECK(max_abs_diff(causal.logits.index({pad_BS}), masked.logits.index({pad_BS})) > 1e-6);
}

TEST_CASE("left padding, holes and supervised pads keep the explicit mask: is_causal alone would be wrong there",
          "[model][property][attention]") {
  auto model = test::tiny_golden_model();
  torch::NoGradGuard no_grad;
  const auto left = mixed_batch(/*left=*/true);
  const auto batch = model->splice_inputs(left);
  CHECK_FALSE(batch.causal_is_exact);
  // forward takes the mask: the default equals the forced explicit mask bit for bit.
  const auto by_default = model->forward(left);
  const auto explicit_mask = model->forward(with_padding_attention(left, PaddingAttention::kExplicitMask));
  CHECK(torch::equal(by_default.logits, explicit_mask.logits));
  // Forcing is_causal on this batch lets real tokens attend to the leading pads: the loss changes.
  const auto causal_logits =
      model->lm_head(model->decode(batch.inputs_embeds_BSD, {}, batch.position_ids_BS, batch.routing));
  const auto masked_logits = model->lm_head(
      model->decode(batch.inputs_embeds_BSD, batch.attention_mask_BS, batch.position_ids_BS, batch.routing));
  const double masked_loss = shifted_loss(masked_logits, batch.labels_BS).item<double>();
  CHECK(std::abs(masked_loss - explicit_mask.loss.item<double>()) < 1e-12);
  CHECK(std::abs(shifted_loss(causal_logits, batch.labels_BS).item<double>() - masked_loss) > 1e-6);

  // A hole in the middle of a row.
  auto holed = mixed_batch();
  holed.attention_mask[1][2].fill_(0);
  holed.labels[1][2].fill_(kIgnoreIndex);
  CHECK_FALSE(model->splice_inputs(holed).causal_is_exact);
  // Right padding whose pad carries a label: a pad's logits would enter the loss.
  auto supervised_pad = mixed_batch();
  supervised_pad.labels[1][6].fill_(3);
  CHECK_FALSE(model->splice_inputs(supervised_pad).causal_is_exact);
  CHECK(model->splice_inputs(mixed_batch()).causal_is_exact);
  // Without labels only the padding layout matters.
  auto unlabelled = mixed_batch();
  unlabelled.labels = torch::Tensor();
  CHECK(model->splice_inputs(unlabelled).causal_is_exact);
}

TEST_CASE("is_right_padded: all real, right-padded, left-padded, a hole", "[model][property][attention]") {
  auto mask = [](const std::vector<std::vector<int64_t>>& v) { return rows(v); };
  CHECK(is_right_padded(mask({{1, 1, 1, 1}, {1, 1, 1, 1}})));
  CHECK(is_right_padded(mask({{1, 1, 1, 1}, {1, 1, 0, 0}, {1, 0, 0, 0}})));
  CHECK(is_right_padded(mask({{1, 1}, {0, 0}})));  // a row of padding only
  CHECK(is_right_padded(mask({{1}, {0}})));
  CHECK(is_right_padded(mask({{1, 1, 0}}).to(torch::kBool)));
  CHECK_FALSE(is_right_padded(mask({{1, 1, 1, 1}, {0, 0, 1, 1}})));  // left padding
  CHECK_FALSE(is_right_padded(mask({{1, 1, 1, 1}, {0, 1, 1, 1}})));
  CHECK_FALSE(is_right_padded(mask({{1, 0, 1, 1}, {1, 1, 1, 1}})));  // a hole
  CHECK_FALSE(is_right_padded(mask({{1, 1, 0, 1}})));
  CHECK_THROWS_WITH(is_right_padded(torch::ones({4})), Contains("expected a [B,S] mask"));
}

TEST_CASE("decoder_attention without a mask refuses non-square attention", "[model][property][attention]") {
  const auto q = torch::randn({1, 2, 3, 4}), kv = torch::randn({1, 2, 5, 4});
  CHECK_THROWS_WITH(decoder_attention(q, kv, kv, {}), Contains("as many keys (5) as queries (3)"));
}

TEST_CASE("loss_sum and num_label_tokens add up across micro-batches", "[model][property]") {
  auto model = test::tiny_golden_model();
  const auto g = test::read_golden("tests/golden/model_tiny.safetensors");
  const auto full = model->forward({g.at("in.input_ids"), g.at("in.attention_mask"), g.at("in.images"), g.at("in.labels")});
  // Sample 0 holds images 0 and 1, samples 1..2 hold image 2.
  const auto first = model->forward({g.at("in.input_ids").slice(0, 0, 1), g.at("in.attention_mask").slice(0, 0, 1),
                                     g.at("in.images").slice(0, 0, 2), g.at("in.labels").slice(0, 0, 1)});
  const auto rest = model->forward({g.at("in.input_ids").slice(0, 1), g.at("in.attention_mask").slice(0, 1),
                                    g.at("in.images").slice(0, 2), g.at("in.labels").slice(0, 1)});
  const auto n = first.num_label_tokens + rest.num_label_tokens;
  CHECK(n.item<int64_t>() == full.num_label_tokens.item<int64_t>());
  CHECK(std::abs(((first.loss_sum + rest.loss_sum) / n.to(torch::kFloat64)).item<double>() - full.loss.item<double>()) <
        1e-10);
}

TEST_CASE("placeholder / image count mismatch throws with both numbers", "[model][property]") {
  MPLUGOwl2ForCausalLM model(test::tiny_golden_config());
  const int64_t I = kImageTokenIndex;
  const auto one_image = torch::randn({1, 3, 12, 12});
  REQUIRE_THROWS_WITH(model->forward({ids({1, I, 5, I}), {}, one_image, {}}),
                      Contains("2 image placeholders (-200) but 1 images were given"));
  REQUIRE_THROWS_WITH(model->forward({ids({1, 5, 6}), {}, one_image, {}}),
                      Contains("0 image placeholders (-200) but 1 images were given"));
  REQUIRE_THROWS_WITH(model->forward({ids({1, I, 6}), {}, {}, {}}),
                      Contains("1 image placeholders (-200) but 0 images were given"));
}

TEST_CASE("decoder attention and RMSNorm keep float32 statistics for bf16 inputs", "[model][property]") {
  torch::manual_seed(5);
  // Large score range: a bf16 softmax loses most of the mass precision here.
  const auto q = (torch::randn({2, 4, 16, 32}) * 3).to(torch::kBFloat16);
  const auto k = (torch::randn({2, 4, 16, 32}) * 3).to(torch::kBFloat16);
  const auto v = torch::randn({2, 4, 16, 32}).to(torch::kBFloat16);
  const auto mask = causal_padding_mask(torch::ones({2, 16}, torch::kBool));
  const auto ours = decoder_attention(q, k, v, mask).to(torch::kFloat64);
  // Exact attention on the same bf16 inputs.
  auto scores = q.to(torch::kFloat64).matmul(k.to(torch::kFloat64).transpose(-1, -2)) / std::sqrt(32.0);
  scores = scores.masked_fill(~mask, -std::numeric_limits<double>::infinity());
  const auto exact = torch::softmax(scores, -1).matmul(v.to(torch::kFloat64));
  // The reference path: bf16 scores, float32 softmax, cast to bf16, bf16 matmul.
  auto s16 = q.matmul(k.transpose(-1, -2)) / std::sqrt(32.0f);
  s16 = s16.masked_fill(~mask, -std::numeric_limits<float>::infinity());
  const auto ref = torch::softmax(s16, -1, torch::kFloat32).to(torch::kBFloat16).matmul(v).to(torch::kFloat64);
  const double err_ours = max_abs_diff(ours, exact), err_ref = max_abs_diff(ref, exact);
  INFO("sdpa error " << err_ours << ", float32-softmax reference error " << err_ref);
  CHECK(err_ours <= 1.5 * err_ref);

  RMSNorm norm(32, 1e-6);
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::rand({32}) + 0.5);
  }
  norm->to(torch::kBFloat16);
  const auto x = (torch::randn({4, 32}) * 50).to(torch::kBFloat16);
  const auto x32 = x.to(torch::kFloat32);
  const auto expect = norm->weight * (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + 1e-6)).to(torch::kBFloat16);
  CHECK(torch::equal(norm(x), expect));
}

TEST_CASE("ViT positions: other image sizes need interpolation, which keeps the class row", "[model][property]") {
  auto cfg = test::tiny_golden_config().vision;  // 12 px, patch 4 -> 3x3 grid
  VisionModel vit(cfg);
  init_weights(vit, 0);
  REQUIRE_THROWS_WITH(vit(torch::randn({1, 3, 16, 16})), Contains("gives 17 tokens but position_embedding has 10 rows") &&
                                                             Contains("interpolate_position_embedding"));
  const auto pos = vit->embeddings->position_embedding.detach();
  CHECK(torch::equal(interpolate_position_embedding(pos, 3), pos));
  const auto pos4 = interpolate_position_embedding(pos, 4);
  CHECK(pos4.sizes() == torch::IntArrayRef{1, 17, 16});
  CHECK(torch::equal(pos4.slice(1, 0, 1), pos.slice(1, 0, 1)));
}

}  // namespace owl2_test_model_properties
