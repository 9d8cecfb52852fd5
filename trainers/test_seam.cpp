// Test faults read from the environment; see test_seam.h.
#include "trainers/test_seam.h"

#include <signal.h>

#include <chrono>
#include <thread>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace owl2 {

TestSeam TestSeam::from_environment(int64_t rank) {
  TestSeam seam;
  const char* eval_step = std::getenv("OWL2_TEST_FAIL_EVAL_AT_STEP");
  const char* eval_rank = std::getenv("OWL2_TEST_FAIL_EVAL_RANK");
  if (eval_step && eval_rank && std::atoll(eval_rank) == rank) seam.fail_eval_at_step_ = std::atoll(eval_step);
  const char* step = std::getenv("OWL2_TEST_KILL_AT_STEP");
  const char* who = std::getenv("OWL2_TEST_KILL_RANK");
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  if (!step || !who || (restarts && std::string(restarts) != "0")) return seam;
  if (std::atoll(who) == rank) seam.kill_at_step_ = std::atoll(step);
  return seam;
}

void TestSeam::before_step(int64_t step) const {
  if (step != kill_at_step_) return;
  // The other ranks first reach the step's first collective and wait there, so that they see this rank die
  // and name the collective (what the restart test checks), instead of racing torchrun's own SIGTERM.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ::raise(SIGKILL);
}

void TestSeam::during_eval(int64_t step) const {
  if (step == fail_eval_at_step_)
    throw std::runtime_error("test fault: held-out evaluation fails at step " + std::to_string(step));
}

}  // namespace owl2
