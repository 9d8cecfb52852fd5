// The documented init (docs/model.md "Init"): one walk over the layers plus the tensors registered directly on
// the ViT embeddings and the abstractor; a guard checks that every parameter was written exactly once.
#include "owl2/model/init.h"

#include <unordered_set>

namespace owl2 {
namespace {

// Remembers each written tensor, so that a parameter written twice or never is an error, not silent garbage
// (constructors leave torch::empty memory behind).
class Writer {
 public:
  explicit Writer(double std, InitHooks hooks = {}) : std_(std), hooks_(std::move(hooks)) {}
  void normal(torch::Tensor& t) {
    if (skipped(t)) return;
    mark(t).normal_(0.0, std_);
    done(t);
  }
  void fill(torch::Tensor& t, double value) {
    if (skipped(t)) return;
    mark(t).fill_(value);
    done(t);
  }

  // Every owl2 layer under `root`, root included, in registration order.
  void layers(torch::nn::Module& root) {
    for (const auto& m : root.modules(/*include_self=*/true)) {
      if (auto* lin = m->as<Linear>()) {
        normal(lin->weight);
        if (lin->bias.defined()) fill(lin->bias, 0.0);
      } else if (auto* conv = m->as<PatchConv>()) {
        normal(conv->weight);
      } else if (auto* emb = m->as<Embedding>()) {
        normal(emb->weight);
      } else if (auto* ln = m->as<LayerNorm>()) {
        fill(ln->weight, 1.0);
        fill(ln->bias, 0.0);
      } else if (auto* rms = m->as<RMSNorm>()) {
        fill(rms->weight, 1.0);
      }
    }
  }
  // The ViT's class token and positions, the abstractor's queries and vit_eos.
  void own_tensors(VisionModelImpl& vision) {
    normal(vision.embeddings->cls_token);
    normal(vision.embeddings->position_embedding);
  }
  void own_tensors(VisualAbstractorImpl& abstractor) {
    normal(abstractor.query_embeds);
    normal(abstractor.vit_eos);
  }

  void check_covers(const torch::nn::Module& root) const {
    const auto params = root.named_parameters();
    for (const auto& item : params) {
      if (skipped_.count(item.value().unsafeGetTensorImpl())) continue;
      TORCH_CHECK(written_.count(item.value().unsafeGetTensorImpl()) == 1, "init_weights: parameter ", item.key(),
                  " has no init rule (add one in owl2/model/init.cpp and docs/model.md)");
    }
    TORCH_CHECK(root.named_buffers().size() == 0, "init_weights: the model has buffers, which have no init rule");
  }

 private:
  void done(torch::Tensor& t) {
    if (hooks_.written) hooks_.written(t);
  }
  bool skipped(const torch::Tensor& t) {
    if (!hooks_.skip || !hooks_.skip(t)) return false;
    skipped_.insert(t.unsafeGetTensorImpl());
    return true;
  }
  torch::Tensor& mark(torch::Tensor& t) {
    TORCH_CHECK(written_.insert(t.unsafeGetTensorImpl()).second, "init_weights: a tensor of shape ", t.sizes(),
                " is written twice");
    return t;
  }
  double std_;
  InitHooks hooks_;
  std::unordered_set<const c10::TensorImpl*> written_, skipped_;
  torch::NoGradGuard no_grad_;
};

}  // namespace

void init_weights(MPLUGOwl2ForCausalLM& model, uint64_t seed, double std) { init_weights(model, seed, std, InitHooks{}); }

void init_weights(MPLUGOwl2ForCausalLM& model, uint64_t seed, double std, const InitHooks& hooks) {
  torch::manual_seed(seed);
  Writer w(std, hooks);
  w.layers(*model);
  w.own_tensors(*model->model->vision_model);
  w.own_tensors(*model->model->visual_abstractor);
  w.check_covers(*model);
}

void init_weights(VisionModel& vision, uint64_t seed, double std) {
  torch::manual_seed(seed);
  Writer w(std);
  w.layers(*vision);
  w.own_tensors(*vision);
  w.check_covers(*vision);
}

void init_weights(VisualAbstractor& abstractor, uint64_t seed, double std) {
  torch::manual_seed(seed);
  Writer w(std);
  w.layers(*abstractor);
  w.own_tensors(*abstractor);
  w.check_covers(*abstractor);
}

}  // namespace owl2
