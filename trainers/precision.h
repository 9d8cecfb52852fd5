// The training dtype policy (`train.precision`), applied to the model from outside: fp32; bf16 autocast over
// fp32 weights; or bf16 compute weights with fp32 master weights that the optimizer steps.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "owl2/io/safetensors.h"
#include "trainers/config.h"
#include "trainers/param_rules.h"

namespace owl2 {

// Precision (trainers/config.h, with its name table): fp32: everything in float32. bf16: the model holds bfloat16
// weights (compute and activations in bf16, as the reference's DeepSpeed bf16 runs, spec §4.2), the optimizer steps
// float32 masters. bf16-autocast: float32 weights, the forward runs under autocast (matrix products in bf16, the
// rest as autocast's op lists decide). In every mode RMSNorm statistics and the cross-entropy are float32 (the
// model upcasts; spec §1.3, §4).

// Autocast to `dtype` on `device` for a scope; restores the previous flag and dtype and, at the outermost
// scope, clears autocast's cache of cast weights (they are stale after an optimizer step).
class AutocastRegion {
 public:
  AutocastRegion(c10::DeviceType device, c10::ScalarType dtype);
  ~AutocastRegion();
  AutocastRegion(const AutocastRegion&) = delete;
  AutocastRegion& operator=(const AutocastRegion&) = delete;

 private:
  c10::DeviceType device_;
  bool was_enabled_;
  c10::ScalarType was_dtype_;
};

// What the Trainer calls around its step. Fp32 and bf16-autocast keep the optimizer on the model's own
// parameters; bf16 swaps every group's parameters for float32 masters, so the groups handed to the optimizer,
// the clipping and the checkpoint's optimizer state all see float32 tensors.
class MixedPrecision {
 public:
  // bf16: casts the model's floating parameters and buffers to bfloat16 in place (same tensor objects, so
  // references held elsewhere stay valid) after copying the trainable ones, exactly, to float32 masters.
  // bf16 with `sharded_masters` (ZeRO): no master copies here, and the groups' parameters stay float32 for now:
  // the ZeroOptimizer keeps this rank's slices of them as its masters and casts them (parallel/zero.h); everything
  // else in the model is cast here.
  // `deferred` (sharded masters only): parameters whose values arrive later (ZeRO 3's pending ones); they are
  // left as they are, and the optimizer casts them as they arrive.
  MixedPrecision(Precision mode, torch::nn::Module& model, std::vector<ParamGroup>& groups,
                 bool sharded_masters = false, const std::vector<at::Tensor>& deferred = {});

  Precision mode() const { return mode_; }
  // bf16 under ZeRO: the optimizer owns the float32 masters as shards; model_state() and end_to_fp32() then
  // need hold_masters() first (Trainer::gather_parameters does it).
  bool masters_sharded() const { return sharded_; }
  // Sharded masters: the full float32 masters by name, gathered from the shards, until drop_masters().
  void hold_masters(NamedTensors masters);
  void drop_masters() { held_.clear(); }
  // An autocast region for the forward in bf16-autocast mode (on the device of the model's parameters), else none.
  std::optional<AutocastRegion> forward_region() const;
  // bf16: master.grad = float32(model grad), and the model's grad is released. Call after backward and any
  // gradient all-reduce, before clipping. A no-op otherwise (and with sharded masters: ZeRO reads the bf16 grads).
  void grads_to_masters();
  // bf16: model parameter = bf16(master), round to nearest even. Call after the optimizer step. (Sharded
  // masters: a no-op, ZeRO's all-gather of the updated parameters does it.)
  void masters_to_model();
  // bf16: casts the model back to float32 and gives it the masters' values, for the final export after the last
  // step (the saved weights are the trained float32 ones, not their bf16 rounding). No-op otherwise. Sharded
  // masters: from hold_masters(); throws without them.
  void end_to_fp32();
  // The model's state for checkpoints: module_state(model) with every trainable entry replaced by its float32
  // master, so a bf16 run resumes exactly. Other modes: module_state(model). Sharded masters: from
  // hold_masters(); throws without them.
  NamedTensors model_state() const;
  // Loads a model_state() (a checkpoint's "model" tensors) into the model and, in bf16, into the masters.
  // Throws what load_state_dict throws; `origin` names the checkpoint in its messages.
  void load_model_state(const std::map<std::string, at::Tensor>& state, const std::string& origin);
  // After the model was loaded from such a state: masters = the float32 values of `state` (key prefix + name),
  // then copied down to the model. Throws std::invalid_argument naming a missing entry. No-op other than bf16, and
  // with sharded masters (the Trainer hands the state to the optimizer's shards).
  void load_masters(const std::map<std::string, at::Tensor>& state, const std::string& prefix = "");

  // bf16: (name, model parameter, master) of every trainable parameter, in group order (tests).
  struct Pair {
    std::string name;
    at::Tensor model, master;
  };
  const std::vector<Pair>& pairs() const { return pairs_; }

 private:
  Precision mode_;
  torch::nn::Module& model_;
  std::vector<Pair> pairs_;
  bool sharded_ = false;
  std::map<std::string, at::Tensor> held_;  // sharded masters, while gathered
};

}  // namespace owl2
