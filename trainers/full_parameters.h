// FullParameters: a scope in which the model holds every parameter in full (saving an adapter, the final export),
// also under ZeRO stage 3, whose blocks otherwise hold only this rank's shard. ShardedPasses: a scope for passes
// that gather one block at a time instead (held-out evaluation).
#pragma once
#include <exception>

#include "trainers/trainer.h"

namespace owl2 {

// Calls trainer.*Begin() on construction and trainer.*End() on destruction. Both are collectives: every rank must
// open the scope, even one that then does nothing inside it. When the scope is left by an exception End is not
// called: the run is failing, and a collective must not throw from a destructor.
template <void (Trainer::*Begin)(), void (Trainer::*End)()>
class TrainerScope {
 public:
  explicit TrainerScope(Trainer& trainer) : trainer_(trainer), exceptions_(std::uncaught_exceptions()) {
    (trainer_.*Begin)();
  }
  ~TrainerScope() {
    if (std::uncaught_exceptions() == exceptions_) (trainer_.*End)();
  }
  TrainerScope(const TrainerScope&) = delete;
  TrainerScope& operator=(const TrainerScope&) = delete;

 protected:
  Trainer& trainer_;

 private:
  int exceptions_;
};

// Trainer::gather_parameters() on construction and release_parameters() on destruction (both no-ops below
// ZeRO stage 3). Tensors taken from the model inside the scope alias the gathered storage; drop them before it
// ends (declare them after the guard).
using FullParameters = TrainerScope<&Trainer::gather_parameters, &Trainer::release_parameters>;

// Trainer::begin_sharded_passes() on construction and end_sharded_passes() on destruction: forward passes with the
// blocks gathered one at a time (ZeRO 3), in lockstep over the ranks (lockstep(); null below stage 3, where the
// model is whole and passes are not collectives).
class ShardedPasses : public TrainerScope<&Trainer::begin_sharded_passes, &Trainer::end_sharded_passes> {
 public:
  using TrainerScope::TrainerScope;
  const Lockstep* lockstep() const { return trainer_.lockstep(); }
};

}  // namespace owl2
