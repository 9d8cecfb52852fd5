// The one place where tests inject faults into a real `owl2 train` run, through environment variables (the
// restart test in tests/test_distributed.cpp; docs/distributed.md, "Restarts"). Nothing else reads them.
#pragma once
#include <cstdint>

namespace owl2 {

// OWL2_TEST_KILL_AT_STEP=k with OWL2_TEST_KILL_RANK=r: rank r SIGKILLs itself, after a 1 s pause, before
// step k, on the job's first attempt only (TORCHELASTIC_RESTART_COUNT unset or 0), so that the job torchrun
// restarts runs through.
// OWL2_TEST_FAIL_EVAL_AT_STEP=k with OWL2_TEST_FAIL_EVAL_RANK=r: rank r's held-out evaluation after step k throws
// (a failure in the middle of an evaluation the other ranks are running in lockstep), on every attempt.
class TestSeam {
 public:
  static TestSeam from_environment(int64_t rank);
  // Called by the loop before each step; does nothing unless a fault is armed for this rank and step.
  void before_step(int64_t step) const;
  // Called by the held-out evaluation after `step` before this rank answers (the other ranks are already in its
  // collectives); throws std::runtime_error when a fault is armed for this rank and step.
  void during_eval(int64_t step) const;

 private:
  int64_t kill_at_step_ = -1;       // -1: no fault
  int64_t fail_eval_at_step_ = -1;  // -1: no fault
};

}  // namespace owl2
