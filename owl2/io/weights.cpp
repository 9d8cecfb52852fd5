// load_model_weights; see weights.h.
#include "owl2/io/weights.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

#include "owl2/model/vision.h"

namespace owl2 {

std::string load_model_weights(MPLUGOwl2ForCausalLM& model, const std::string& path, LoadOptions options) {
  const auto source = open_tensor_source(path);
  const std::string key = "model.vision_model.embeddings.position_embedding";
  auto& target = model->model->vision_model->embeddings->position_embedding;
  torch::Tensor adapted;
  std::string note;
  if (source->contains(key)) {
    const auto meta = source->meta(key);
    if (meta.shape != target.sizes().vec()) {
      TORCH_CHECK(meta.shape.size() == 3 && meta.shape[2] == target.size(2),
                  path, ": ", key, " has shape [", fmt::format("{}", fmt::join(meta.shape, ", ")),
                  "], which no grid interpolation turns into [", fmt::format("{}", fmt::join(target.sizes(), ", ")), "]");
      const int64_t old_grid = static_cast<int64_t>(std::lround(std::sqrt(double(meta.shape[1] - 1))));
      adapted = interpolate_position_embedding(source->get(key).to(torch::kFloat32), model->cfg.vision.grid());
      options.ignore.push_back("^model\\.vision_model\\.embeddings\\.position_embedding$");
      note = fmt::format("; ViT positions interpolated from a {}x{} to a {}x{} grid", old_grid, old_grid,
                         model->cfg.vision.grid(), model->cfg.vision.grid());
    }
  }
  const auto report = load_state_dict(*model, *source, options);
  if (adapted.defined()) {
    torch::NoGradGuard no_grad;
    target.copy_(adapted);
    if (options.loaded) options.loaded(key, target);
  }
  return report.summary() + note;
}

}  // namespace owl2
