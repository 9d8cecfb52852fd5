// Device requests (owl2/infer/device.h) and the RNG states a checkpoint keeps per device: names, fallbacks and
// the refusals a user meets on a machine without a GPU.
#include <catch2/catch.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>

#include "owl2/infer/device.h"
#include "trainers/checkpoint.h"
#include "trainers/parallel/distributed.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_device {

using Catch::Matchers::Contains;
using owl2::DeviceKind;
using owl2::parse_device;

TEST_CASE("device names parse to a kind and an optional CUDA index", "[device]") {
  CHECK(parse_device("auto", "x").kind == DeviceKind::kAuto);
  CHECK(parse_device("cpu", "x").kind == DeviceKind::kCpu);
  CHECK(parse_device("cuda", "x").kind == DeviceKind::kCuda);
  CHECK(parse_device("cuda", "x").index == -1);
  CHECK(parse_device("cuda:3", "x").index == 3);
  for (const char* bad : {"gpu", "cpu:0", "cuda:", "cuda:x", "cuda:-1", "CUDA", "", "auto:1"}) {
    INFO(bad);
    CHECK_THROWS_WITH(parse_device(bad, "--device"),
                      Contains("--device: '" + std::string(bad) + "' is not a device") && Contains("auto, cpu, cuda"));
  }
}

TEST_CASE("auto falls back to the CPU without a GPU, cuda is refused with the reason", "[device]") {
  const auto cpu = owl2::resolve_device({DeviceKind::kCpu}, 3, "train.device");
  CHECK(cpu.is_cpu());
  if (torch::cuda::is_available()) {
    CHECK(owl2::resolve_device({DeviceKind::kAuto}, 0, "k").is_cuda());
    const auto n = static_cast<int64_t>(torch::cuda::device_count());
    CHECK_THROWS_AS(owl2::resolve_device({DeviceKind::kCuda, n}, 0, "k"), owl2::DeviceUnavailable);
    CHECK(owl2::cuda_unavailable_reason().empty());
    return;
  }
  CHECK(owl2::resolve_device({DeviceKind::kAuto}, 0, "train.device").is_cpu());
  CHECK(owl2::resolve_device({DeviceKind::kAuto}, 5, "train.device").is_cpu());  // any LOCAL_RANK
  const std::string why = owl2::cuda_unavailable_reason();
  REQUIRE_FALSE(why.empty());
#ifdef OWL2_WITH_CUDA
  CHECK_THAT(why, Contains("no CUDA device is visible"));
#else
  CHECK_THAT(why, Contains("LibTorch without CUDA"));
#endif
  CHECK_THROWS_AS(owl2::resolve_device({DeviceKind::kCuda}, 0, "train.device"), owl2::DeviceUnavailable);
  CHECK_THROWS_WITH(owl2::resolve_device({DeviceKind::kCuda, 1}, 0, "train.device"),
                    Contains("train.device: cuda was asked for, but " + why));
  // DeviceUnavailable is an invalid_argument: the CLI's exit code 2.
  CHECK_THROWS_AS(owl2::resolve_device({DeviceKind::kCuda}, 0, "k"), std::invalid_argument);
}

TEST_CASE("RNG states: cpu always, cuda for the current device only, restored to whatever device is current",
          "[device][checkpoint]") {
  const auto states = owl2::capture_rng_states();
  REQUIRE(states.size() == (torch::cuda::is_available() ? 2u : 1u));
  CHECK(states[0].first == "cpu");
  if (states.size() == 2) CHECK(states[1].first == "cuda");

  // A checkpoint written on GPU 5 of another machine (and one of the older per-index layout): its CUDA state
  // goes to this process's current device, or is not needed without CUDA; the CPU stream is restored.
  torch::manual_seed(11);
  const auto cpu_state = owl2::capture_rng_states()[0].second.clone();
  const auto expected = torch::rand({4});
  owl2::NamedTensors from_gpu{{"cpu", cpu_state}};
  if (torch::cuda::is_available()) {
    from_gpu.emplace_back("cuda", owl2::capture_rng_states()[1].second.clone());
  } else {
    from_gpu.emplace_back("cuda", cpu_state.clone());  // never read: no CUDA here
    from_gpu.emplace_back("cuda.5", cpu_state.clone());
  }
  torch::rand({7});
  owl2::restore_rng_states(from_gpu);
  CHECK(torch::equal(torch::rand({4}), expected));
  CHECK_THROWS_WITH(owl2::restore_rng_states({{"tpu", cpu_state}}), Contains("unknown RNG state 'tpu'"));
}

TEST_CASE("a process group of one runs every collective owl2 uses on tensors of its device (Gloo here, NCCL on a GPU)",
          "[device][dist]") {
  // The same code path a multi-GPU run takes: NCCL accepts only tensors on the group's device, so a collective
  // handed a host tensor (an integer count, a flag vector) fails here on a GPU machine.
  const bool cuda = torch::cuda::is_available();
  const auto device = owl2::resolve_device({DeviceKind::kAuto}, 0, "test");
  owl2::use_device(device);
  owl2::DistEnv env;
  env.master_port = 20000 + static_cast<int64_t>(getpid() % 20000);
  owl2::Comm comm(env, std::chrono::seconds(60), cuda, /*group_of_one=*/true);
  CHECK(comm.device() == device);
  CHECK(comm.sum(int64_t{41}, "count") == 41);
  CHECK(comm.sum(2.5, "loss") == 2.5);
  const auto opts = torch::TensorOptions(torch::kFloat32).device(device);
  auto t = torch::arange(6, opts);
  comm.allreduce_sum(t, "allreduce");
  CHECK(torch::equal(t.cpu(), torch::arange(6, torch::kFloat32)));
  auto chunk = torch::empty({6}, opts);
  auto full = torch::arange(6, opts) * 2;
  comm.wait(comm.reduce_scatter_sum_async(chunk, full), "reduce-scatter");
  CHECK(torch::equal(chunk.cpu(), full.cpu()));
  auto gathered = torch::empty({6}, opts);
  comm.wait(comm.allgather_async(gathered, chunk), "all-gather");
  CHECK(torch::equal(gathered.cpu(), full.cpu()));
  comm.broadcast(t, 0, "broadcast");
  comm.barrier("barrier");
  if (cuda) CHECK(t.device().is_cuda());
}

}  // namespace owl2_test_device
