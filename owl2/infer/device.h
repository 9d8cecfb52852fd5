// Where a command runs: `train.device` and the `--device` flag of eval, generate, chat and bench. One parser and
// one resolver, so every command accepts the same names and refuses an unusable CUDA request the same way.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "owl2/io/name_table.h"

namespace owl2 {

// auto: CUDA when this build has it and a device is visible, else the CPU. cpu. cuda: a CUDA device or an error.
enum class DeviceKind { kAuto, kCpu, kCuda };
inline constexpr NameTable<DeviceKind, 3> kDeviceKindNames{
    {{DeviceKind::kAuto, "auto"}, {DeviceKind::kCpu, "cpu"}, {DeviceKind::kCuda, "cuda"}}};

// A parsed device request: a kind, and for cuda an optional index ("cuda:1"); -1 = the process's own
// (LOCAL_RANK under torchrun, else 0).
struct DeviceRequest {
  DeviceKind kind = DeviceKind::kAuto;
  int64_t index = -1;
};

// A CUDA request this process cannot serve; the CLI maps std::invalid_argument to exit code 2.
struct DeviceUnavailable : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// "auto" | "cpu" | "cuda" | "cuda:N". Throws std::invalid_argument naming `what` (the key or flag) and the choices.
DeviceRequest parse_device(const std::string& text, const std::string& what);

// Why CUDA cannot be used here ("" when it can): no CUDA in this build's LibTorch, or no device visible.
std::string cuda_unavailable_reason();

// The device to run on. auto and cuda use cuda:`index`, or cuda:`local_rank` when no index was given. Throws
// DeviceUnavailable naming `what` when cuda was asked for and cannot be had (no CUDA, or the index is not a
// visible device); auto then falls back to the CPU.
c10::Device resolve_device(const DeviceRequest& request, int64_t local_rank, const std::string& what);

// Makes `device` the current CUDA device of this thread (streams, NCCL and allocations without an explicit
// index go there). A no-op for the CPU.
void use_device(const c10::Device& device);

// Short description for logs: "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
std::string describe_device(const c10::Device& device);

}  // namespace owl2
