// Loading weights into the model from any supported source (owl2 or HF layout, safetensors or .bin), with
// the stage hand-over built in: ViT position embeddings of another image size are interpolated (bicubic,
// class row kept); the abstractor's sin-cos grid is recomputed from the config anyway.
#pragma once
#include <string>

#include "owl2/model/model.h"
#include "owl2/io/state_dict.h"

namespace owl2 {

// Throws (listing every problem) on missing, unexpected or mis-shaped tensors, except the position embedding
// when only its grid differs. Returns a one-line summary of what was loaded and adapted.
std::string load_model_weights(MPLUGOwl2ForCausalLM& model, const std::string& path, LoadOptions options = {});

}  // namespace owl2
