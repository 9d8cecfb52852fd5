// A CUDA event through the CUDA runtime API, for the prefetcher's copy ordering and the step timer (LibTorch's
// own event wrapper moved between ATen and c10 across the releases owl2 builds against). CUDA builds only.
#pragma once
#ifdef OWL2_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

namespace owl2 {

class CudaEvent {
 public:
  // Created on the current device; `timing`: usable with seconds_since (a little slower to record).
  explicit CudaEvent(bool timing) {
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~CudaEvent() {
    if (event_) cudaEventDestroy(event_);
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  void record(const c10::cuda::CUDAStream& stream) { C10_CUDA_CHECK(cudaEventRecord(event_, stream.stream())); }
  // Work queued on `stream` from now on starts after this event (the host does not wait).
  void block(const c10::cuda::CUDAStream& stream) const {
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream.stream(), event_, 0));
  }
  void synchronize() const { C10_CUDA_CHECK(cudaEventSynchronize(event_)); }
  // Device time from `start` to this event; both recorded with timing and complete.
  double seconds_since(const CudaEvent& start) const {
    float ms = 0;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return double(ms) / 1e3;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace owl2
#endif  // OWL2_WITH_CUDA
