// A custom autograd function for activation checkpointing; see checkpointing.h.
#include "trainers/activation_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>

#ifdef OWL2_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

namespace owl2 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// State that the recompute must see exactly as the forward pass did.
struct Replay : torch::CustomClassHolder {
  BlockFn fn;
  CheckpointHooks hooks;
  at::Tensor cpu_rng;
  bool autocast_cuda = false, autocast_cpu = false;
  at::ScalarType autocast_cuda_dtype = at::kBFloat16, autocast_cpu_dtype = at::kBFloat16;
#ifdef OWL2_WITH_CUDA
  at::Tensor cuda_rng;
#endif
};

// Sets the autocast flags for a scope and puts the previous ones back afterwards.
struct AutocastScope {
  bool cuda, cpu;
  at::ScalarType cuda_dtype, cpu_dtype;
  explicit AutocastScope(const Replay& r)
      : cuda(at::autocast::is_autocast_enabled(at::kCUDA)),
        cpu(at::autocast::is_autocast_enabled(at::kCPU)),
        cuda_dtype(at::autocast::get_autocast_dtype(at::kCUDA)),
        cpu_dtype(at::autocast::get_autocast_dtype(at::kCPU)) {
    at::autocast::set_autocast_enabled(at::kCUDA, r.autocast_cuda);
    at::autocast::set_autocast_enabled(at::kCPU, r.autocast_cpu);
    at::autocast::set_autocast_dtype(at::kCUDA, r.autocast_cuda_dtype);
    at::autocast::set_autocast_dtype(at::kCPU, r.autocast_cpu_dtype);
  }
  ~AutocastScope() {
    at::autocast::set_autocast_enabled(at::kCUDA, cuda);
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
  }
};

// Swaps in the forward pass's RNG state for a scope and restores the current stream afterwards.
struct RngScope {
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  at::Tensor saved_cpu;
#ifdef OWL2_WITH_CUDA
  at::Tensor saved_cuda;
#endif
  explicit RngScope(const Replay& r) {
    saved_cpu = cpu.get_state();
    cpu.set_state(r.cpu_rng);
#ifdef OWL2_WITH_CUDA
    if (r.cuda_rng.defined()) {
      at::Generator g = at::cuda::detail::getDefaultCUDAGenerator();  // a handle: the getter returns it const
      saved_cuda = g.get_state();
      g.set_state(r.cuda_rng);
    }
#endif
  }
  ~RngScope() {
    cpu.set_state(saved_cpu);
#ifdef OWL2_WITH_CUDA
    if (saved_cuda.defined()) {
      at::Generator g = at::cuda::detail::getDefaultCUDAGenerator();
      g.set_state(saved_cuda);
    }
#endif
  }
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // inputs[0] is a dummy that requires grad, so that backward runs even when no real input does.
  static at::Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<Replay> replay, at::TensorList inputs) {
    replay->cpu_rng = at::detail::getDefaultCPUGenerator().get_state();
#ifdef OWL2_WITH_CUDA
    if (at::cuda::is_available() && at::cuda::getNumGPUs() > 0) {
      replay->cuda_rng = at::cuda::detail::getDefaultCUDAGenerator().get_state();
    }
#endif
    replay->autocast_cuda = at::autocast::is_autocast_enabled(at::kCUDA);
    replay->autocast_cpu = at::autocast::is_autocast_enabled(at::kCPU);
    replay->autocast_cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    replay->autocast_cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    ctx->saved_data["replay"] = c10::IValue::make_capsule(replay);
    ctx->save_for_backward(inputs.vec());
    at::NoGradGuard no_grad;
    if (replay->hooks.before) replay->hooks.before();
    auto out = replay->fn(variable_list(inputs.begin() + 1, inputs.end()));
    if (replay->hooks.after_forward) replay->hooks.after_forward();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto holder = ctx->saved_data["replay"].toCapsule();
    const auto& replay = *static_cast<Replay*>(holder.get());
    const variable_list saved = ctx->get_saved_variables();
    variable_list inputs;
    for (size_t i = 1; i < saved.size(); ++i) {
      const auto& x = saved[i];
      inputs.push_back(x.defined() ? x.detach().requires_grad_(x.requires_grad()) : x);
    }
    at::Tensor out;
    if (replay.hooks.before) replay.hooks.before();
    {
      RngScope rng(replay);
      AutocastScope autocast(replay);
      at::AutoGradMode grad(true);
      out = replay.fn(inputs);
    }
    if (out.requires_grad()) torch::autograd::backward({out}, {grad_out[0]});
    out.reset();  // the recompute's graph goes before the hook releases what it used
    if (replay.hooks.after_backward) replay.hooks.after_backward();
    variable_list grads{at::Tensor(), at::Tensor()};  // the replay capsule and the dummy
    for (const auto& x : inputs) grads.push_back(x.defined() && x.requires_grad() ? x.grad() : at::Tensor());
    return grads;
  }
};

}  // namespace

at::Tensor checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs, const CheckpointHooks& hooks) {
  if (!at::GradMode::is_enabled()) {  // nothing to save in inference
    if (hooks.before) hooks.before();
    auto out = fn(inputs);
    if (hooks.after_forward) hooks.after_forward();
    return out;
  }
  auto replay = c10::make_intrusive<Replay>();
  replay->fn = fn;
  replay->hooks = hooks;
  variable_list all{at::empty({0}).requires_grad_(true)};
  all.insert(all.end(), inputs.begin(), inputs.end());
  return CheckpointFunction::apply(replay, at::TensorList(all));
}

}  // namespace owl2
