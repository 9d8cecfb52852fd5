// Device requests; see device.h.
#include "owl2/infer/device.h"

#include <fmt/format.h>
#include <torch/cuda.h>

#ifdef OWL2_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

#include <cstdlib>

namespace owl2 {

DeviceRequest parse_device(const std::string& text, const std::string& what) {
  const auto bad = [&] {
    return std::invalid_argument(fmt::format("{}: '{}' is not a device; expected {} or cuda:N", what, text,
                                             joined_names(kDeviceKindNames, ", ")));
  };
  DeviceRequest r;
  const auto colon = text.find(':');
  const auto kind = find_by_name(kDeviceKindNames, text.substr(0, colon));
  if (!kind) throw bad();
  r.kind = *kind;
  if (colon != std::string::npos) {
    if (r.kind != DeviceKind::kCuda) throw bad();
    const std::string digits = text.substr(colon + 1);
    if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos) throw bad();
    r.index = std::stoll(digits);
  }
  return r;
}

std::string cuda_unavailable_reason() {
#ifndef OWL2_WITH_CUDA
  return "this owl2 was built against a LibTorch without CUDA (build against the CUDA torch wheel: docs/gpu.md)";
#else
  if (torch::cuda::device_count() > 0) return "";
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  return fmt::format("no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES={}; check nvidia-smi)",
                     visible ? fmt::format("'{}'", visible) : std::string("unset"));
#endif
}

c10::Device resolve_device(const DeviceRequest& request, int64_t local_rank, const std::string& what) {
  if (request.kind == DeviceKind::kCpu) return c10::Device(c10::kCPU);
  const std::string why = cuda_unavailable_reason();
  if (!why.empty()) {
    if (request.kind == DeviceKind::kAuto) return c10::Device(c10::kCPU);
    throw DeviceUnavailable(fmt::format("{}: cuda was asked for, but {}", what, why));
  }
  const int64_t index = request.index >= 0 ? request.index : local_rank;
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  if (index < 0 || index >= count) {
    throw DeviceUnavailable(fmt::format("{}: cuda:{} {}, but this process sees {} CUDA device{}", what, index,
                                        request.index >= 0 ? "was asked for" : "(LOCAL_RANK) was picked", count,
                                        count == 1 ? "" : "s"));
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void use_device(const c10::Device& device) {
#ifdef OWL2_WITH_CUDA
  if (device.is_cuda()) c10::cuda::set_device(device.index());
#else
  (void)device;
#endif
}

std::string describe_device(const c10::Device& device) {
#ifdef OWL2_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.index()) == cudaSuccess) {
      return fmt::format("{} ({})", device.str(), prop.name);
    }
  }
#endif
  return device.str();
}

}  // namespace owl2
