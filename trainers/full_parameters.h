// FullParameters: a scope in which the model holds every parameter in full (saving an adapter, the final export),
// also under ZeRO stage 3, whose blocks otherwise hold only this rank's shard. ShardedPasses: a scope for passes
// that gather one block at a time instead (held-out evaluation).
#pragma once
#include <exception>

#include "trainers/trainer.h"

namespace owl2 {

// Trainer::gather_parameters() on construction and release_parameters() on destruction (both no-ops below
// ZeRO stage 3). The gather is a collective: every rank must open the scope, even one that then does nothing
// with the parameters. Tensors taken from the model inside the scope alias the gathered storage; drop them
// before it ends (declare them after the guard). When the scope is left by an exception the parameters stay
// gathered: the run is failing, and the release must not throw from a destructor.
class FullParameters {
 public:
  explicit FullParameters(Trainer& trainer) : trainer_(trainer), exceptions_(std::uncaught_exceptions()) {
    trainer_.gather_parameters();
  }
  ~FullParameters() {
    if (std::uncaught_exceptions() == exceptions_) trainer_.release_parameters();
  }
  FullParameters(const FullParameters&) = delete;
  FullParameters& operator=(const FullParameters&) = delete;

 private:
  Trainer& trainer_;
  int exceptions_;
};

// Trainer::begin_sharded_passes() on construction and end_sharded_passes() on destruction: forward passes with the
// blocks gathered one at a time (ZeRO 3), in lockstep over the ranks (lockstep(); null below stage 3, where the
// model is whole and passes are not collectives). Every rank opens the scope. Left by an exception the root stays
// gathered, as FullParameters leaves the blocks.
class ShardedPasses {
 public:
  explicit ShardedPasses(Trainer& trainer) : trainer_(trainer), exceptions_(std::uncaught_exceptions()) {
    trainer_.begin_sharded_passes();
  }
  ~ShardedPasses() {
    if (std::uncaught_exceptions() == exceptions_) trainer_.end_sharded_passes();
  }
  ShardedPasses(const ShardedPasses&) = delete;
  ShardedPasses& operator=(const ShardedPasses&) = delete;
  const Lockstep* lockstep() const { return trainer_.lockstep(); }

 private:
  Trainer& trainer_;
  int exceptions_;
};

}  // namespace owl2
