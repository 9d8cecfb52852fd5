// DevicePrefetcher; see prefetch.h.
#include "trainers/prefetch.h"

#include <fmt/format.h>

#include <stdexcept>
#include <utility>

#ifdef OWL2_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "trainers/cuda_event.h"
#endif

namespace owl2 {

#ifdef OWL2_WITH_CUDA
struct DevicePrefetcher::CopyDone {
  CudaEvent event{/*timing=*/false};
};
#else
struct DevicePrefetcher::CopyDone {};
#endif

namespace {

// `b` with `f` applied to each of its defined tensors.
template <class F>
Batch map_tensors(const Batch& b, F f) {
  Batch out;
  out.input_ids = f(b.input_ids);
  out.attention_mask = f(b.attention_mask);
  out.labels = f(b.labels);
  if (b.segment_ids.defined()) out.segment_ids = f(b.segment_ids);
  if (b.images.defined()) out.images = f(b.images);
  out.samples = b.samples;
  return out;
}

torch::Device resolve_device(torch::Device d) {
  if (d.is_cpu()) return d;
#ifdef OWL2_WITH_CUDA
  if (d.is_cuda()) return d.has_index() ? d : torch::Device(torch::kCUDA, c10::cuda::current_device());
#endif
  throw std::invalid_argument(
      fmt::format("prefetcher: device '{}' is not supported (cpu, or cuda in a CUDA build of owl2)", d.str()));
}

c10::Stream copy_stream_for(torch::Device d) {
#ifdef OWL2_WITH_CUDA
  if (d.is_cuda()) return c10::cuda::getStreamFromPool(/*isHighPriority=*/false, d.index());
#endif
  return c10::Stream(c10::Stream::DEFAULT, d);
}

}  // namespace

int64_t host_input_tokens(const Batch& b, int64_t visual_tokens_per_image) {
  TORCH_CHECK(b.attention_mask.device().is_cpu(), "host_input_tokens: the batch is on ", b.attention_mask.device(),
              "; count its tokens before the copy");
  const int64_t images = b.images.defined() ? b.images.size(0) : 0;
  return b.attention_mask.sum().item<int64_t>() + images * (visual_tokens_per_image - 1);
}

DevicePrefetcher::DevicePrefetcher(ExampleLoader& loader, int64_t accum, int64_t visual_tokens_per_image,
                                   torch::Device device)
    : loader_(loader),
      accum_(accum),
      visual_tokens_per_image_(visual_tokens_per_image),
      device_(resolve_device(device)),
      copy_stream_(copy_stream_for(device_)),
      consumed_state_(loader.state()),
      consumed_counters_(loader.counters()) {
  if (accum_ < 1) throw std::invalid_argument(fmt::format("prefetcher: {} micro-batches per step, need >= 1", accum_));
}

DevicePrefetcher::~DevicePrefetcher() { drop_pending(); }

void DevicePrefetcher::drop_pending() {
  if (!pending_.valid()) return;
  pending_.wait();
  pending_ = {};  // the staged batch (or the load's error) is discarded
}

void DevicePrefetcher::launch() { pending_ = std::async(std::launch::async, [this] { return load(); }); }

DevicePrefetcher::Staged DevicePrefetcher::load() {
  Staged s;
  std::vector<Batch> host;
  bool fresh_epoch = false;  // set_epoch was called and no batch has come since
  while (static_cast<int64_t>(host.size()) < accum_) {
    auto b = loader_.next();
    if (!b) {
      if (fresh_epoch) {
        throw std::runtime_error(fmt::format(
            "the loader gave no batch in all of epoch {} ({} batches planned for this rank, every sample dropped or "
            "failed); see the loader's bad-input report",
            loader_.state().epoch, loader_.num_batches()));
      }
      loader_.next_epoch();
      fresh_epoch = true;
      continue;
    }
    fresh_epoch = false;
    s.batch.label_tokens.push_back(b->label_tokens());  // host tensors: no device sync
    s.batch.input_tokens += host_input_tokens(*b, visual_tokens_per_image_);
    host.push_back(std::move(*b));
  }
  s.state_after = loader_.state();
  s.counters_after = loader_.counters();
  if (device_.is_cpu()) {
    s.batch.micro = std::move(host);
    return s;
  }
#ifdef OWL2_WITH_CUDA
  const c10::cuda::CUDAGuard device_guard(device_);
  const c10::cuda::CUDAStream stream(copy_stream_);
  const c10::cuda::CUDAStreamGuard stream_guard(stream);
  for (const auto& b : host) {
    Batch pinned = map_tensors(b, [](const at::Tensor& t) { return t.is_pinned() ? t : t.pin_memory(); });
    // Allocated on the copy stream; next() record_stream()s them on the consumer's stream.
    s.batch.micro.push_back(
        map_tensors(pinned, [&](const at::Tensor& t) { return t.to(device_, /*non_blocking=*/true); }));
    s.pinned.push_back(std::move(pinned));
  }
  s.copied = std::make_shared<CopyDone>();
  s.copied->event.record(stream);
#endif
  return s;
}

GlobalBatch DevicePrefetcher::next() {
  if (!pending_.valid()) launch();
  Staged s = pending_.get();  // rethrows the load's error
  consumed_state_ = s.state_after;
  consumed_counters_ = s.counters_after;
#ifdef OWL2_WITH_CUDA
  if (s.copied) {
    const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(device_.index());
    s.copied->event.block(compute);
    // The caching allocator must not hand these blocks out again before the compute stream is done with them.
    for (auto& b : s.batch.micro) map_tensors(b, [&](const at::Tensor& t) { t.record_stream(compute); return t; });
  }
#endif
  // The copy has finished once the step that uses the batch read its loss on the host, so the previous batch's
  // pinned tensors can go now (the pinned-memory allocator also tracks the copy itself).
  in_use_pinned_ = std::move(s.pinned);
  launch();
  return std::move(s.batch);
}

void DevicePrefetcher::load_state(const data::LoaderState& s) {
  drop_pending();
  in_use_pinned_.clear();
  loader_.load_state(s);
  consumed_state_ = loader_.state();
  consumed_counters_ = loader_.counters();
}

}  // namespace owl2
