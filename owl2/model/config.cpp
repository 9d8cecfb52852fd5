// Consistency checks of a ModelConfig: each message names the config key and the numbers involved.
#include "owl2/model/config.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace owl2 {
namespace {

[[noreturn]] void fail(const std::string& key, const std::string& what) {
  throw std::invalid_argument("model." + key + ": " + what);
}

void positive(const std::string& key, int64_t v) {
  if (v <= 0) fail(key, "must be positive, got " + std::to_string(v));
}

void divides(const std::string& key, int64_t num, const std::string& by_key, int64_t den) {
  if (den > 0 && num % den != 0) {
    std::ostringstream s;
    s << "must be divisible by " << by_key << " (" << num << " % " << den << " = " << num % den << ")";
    fail(key, s.str());
  }
}

}  // namespace

void validate(const ModelConfig& cfg) {
  const auto& v = cfg.vision;
  positive("vision.hidden_size", v.hidden_size);
  positive("vision.intermediate_size", v.intermediate_size);
  positive("vision.num_hidden_layers", v.num_hidden_layers);
  positive("vision.num_attention_heads", v.num_attention_heads);
  positive("vision.num_channels", v.num_channels);
  positive("vision.image_size", v.image_size);
  positive("vision.patch_size", v.patch_size);
  divides("vision.hidden_size", v.hidden_size, "vision.num_attention_heads", v.num_attention_heads);
  divides("vision.image_size", v.image_size, "vision.patch_size", v.patch_size);
  if (v.layer_norm_eps <= 0) fail("vision.layer_norm_eps", "must be positive");
  if (!(cfg.initializer_range > 0) || !std::isfinite(cfg.initializer_range))
    fail("initializer_range", "must be a positive finite standard deviation");

  const auto& a = cfg.abstractor;
  positive("abstractor.num_learnable_queries", a.num_learnable_queries);
  positive("abstractor.hidden_size", a.hidden_size);
  positive("abstractor.num_hidden_layers", a.num_hidden_layers);
  positive("abstractor.num_attention_heads", a.num_attention_heads);
  positive("abstractor.intermediate_size", a.intermediate_size);
  divides("abstractor.hidden_size", a.hidden_size, "abstractor.num_attention_heads", a.num_attention_heads);
  if (a.hidden_size % 4 != 0) fail("abstractor.hidden_size", "must be divisible by 4 for the 2-D sin-cos embedding");
  if (a.encoder_hidden_size != v.hidden_size) {
    fail("abstractor.encoder_hidden_size", "must equal vision.hidden_size (" + std::to_string(a.encoder_hidden_size) +
                                               " != " + std::to_string(v.hidden_size) + ")");
  }
  if (a.grid_size != v.grid()) {
    fail("abstractor.grid_size", "must equal vision.image_size / vision.patch_size (" + std::to_string(a.grid_size) +
                                     " != " + std::to_string(v.grid()) + ")");
  }
  if (a.layer_norm_eps <= 0) fail("abstractor.layer_norm_eps", "must be positive");
  if (a.attn_norm_eps <= 0) fail("abstractor.attn_norm_eps", "must be positive");

  const auto& d = cfg.decoder;
  positive("decoder.vocab_size", d.vocab_size);
  positive("decoder.hidden_size", d.hidden_size);
  positive("decoder.intermediate_size", d.intermediate_size);
  positive("decoder.num_hidden_layers", d.num_hidden_layers);
  positive("decoder.num_attention_heads", d.num_attention_heads);
  positive("decoder.num_key_value_heads", d.num_key_value_heads);
  positive("decoder.max_position_embeddings", d.max_position_embeddings);
  divides("decoder.hidden_size", d.hidden_size, "decoder.num_attention_heads", d.num_attention_heads);
  divides("decoder.num_attention_heads", d.num_attention_heads, "decoder.num_key_value_heads", d.num_key_value_heads);
  if (d.head_dim() % 2 != 0) fail("decoder.hidden_size", "head_dim must be even for rotary embeddings");
  if (d.rms_norm_eps <= 0) fail("decoder.rms_norm_eps", "must be positive");
  if (d.rope_theta <= 0) fail("decoder.rope_theta", "must be positive");
}

}  // namespace owl2
