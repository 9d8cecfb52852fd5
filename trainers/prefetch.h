// The device prefetcher of `owl2 train`: each step's global batch (its `accum` micro-batches from the loader),
// already on the training device with its token counts taken on the host, one global batch ahead of compute.
//
// Threading: the next global batch is loaded on a background thread (std::async, one load at a time) while
// the current one is computed: loader.next() `accum` times (the next epoch whenever the loader runs dry), the
// token counts from the host tensors, and on CUDA pin_memory() and a non_blocking copy on a side stream of
// the device, followed by an event. Loads run strictly one after another in step order, and only the loading
// thread calls the loader while a load is in flight, so the batches are exactly those of loading directly
// (the loader's order does not depend on timing). next() makes the caller's current CUDA stream wait for the
// event and record_stream()s the device tensors on it, so the copy overlaps compute without a host sync.
// On the CPU there is no pinning, no stream and no copy (the tensors move), but the load still runs ahead.
//
// Resume: the loader has read one global batch ahead of what was handed out. state() is the loader position
// after the last batch handed out (recorded when that batch was loaded), which is what checkpoints save;
// load_state() waits for a load in flight, drops the staged batch and repositions the loader.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <future>
#include <memory>
#include <vector>

#include "data/batch.h"
#include "data/example.h"
#include "data/loader.h"

namespace owl2 {

using ExampleLoader = data::Loader<Example, Batch>;  // as in setup.h

// One optimizer step's micro-batches on the prefetcher's device, and what was counted on the host before
// the copy (so that nothing needs a device->host read later).
struct GlobalBatch {
  std::vector<Batch> micro;
  std::vector<int64_t> label_tokens;  // per micro-batch: Batch::label_tokens() of its host tensors
  int64_t input_tokens = 0;           // every token the model reads, visual tokens spliced in
};

// Every token the decoder reads for `b`: real text tokens plus (visual_tokens_per_image - 1) per image (the
// placeholder is replaced). `b` must be on the host (no sync).
int64_t host_input_tokens(const Batch& b, int64_t visual_tokens_per_image);

class DevicePrefetcher {
 public:
  // Reads `accum` micro-batches per next() from `loader` (which must outlive the prefetcher) onto `device`
  // (cpu, or cuda in a CUDA build; "cuda" without an index means the current device). Nothing is loaded yet.
  DevicePrefetcher(ExampleLoader& loader, int64_t accum, int64_t visual_tokens_per_image, torch::Device device);
  ~DevicePrefetcher();  // waits for a load in flight
  DevicePrefetcher(const DevicePrefetcher&) = delete;
  DevicePrefetcher& operator=(const DevicePrefetcher&) = delete;

  // The next global batch (loading it now if nothing is staged, and rethrowing the load's error), then starts
  // loading the one after. CUDA: the caller's current stream is ordered after the copy.
  GlobalBatch next();

  // The loader position after the last global batch next() returned (the constructor: the loader's).
  data::LoaderState state() const { return consumed_state_; }
  // Drops what is staged and continues from `s` (a state() saved earlier).
  void load_state(const data::LoaderState& s);
  // The loader's counters as of the last global batch next() returned.
  data::LoaderCounters counters() const { return consumed_counters_; }
  torch::Device device() const { return device_; }

  struct CopyDone;  // CUDA: the event after the copy (prefetch.cpp)
 private:
  struct Staged {
    GlobalBatch batch;                   // on the device
    std::vector<Batch> pinned;           // CUDA: the host tensors the copy reads, alive until it is done
    std::shared_ptr<CopyDone> copied;    // CUDA only
    data::LoaderState state_after;
    data::LoaderCounters counters_after;
  };
  Staged load();  // on the background thread
  void launch();
  void drop_pending();

  ExampleLoader& loader_;
  int64_t accum_;
  int64_t visual_tokens_per_image_;
  torch::Device device_;
  c10::Stream copy_stream_;  // CUDA: a side stream of device_ (the CPU's default stream otherwise)
  std::future<Staged> pending_;
  std::vector<Batch> in_use_pinned_;  // the pinned host tensors of the batch handed out last
  data::LoaderState consumed_state_;
  data::LoaderCounters consumed_counters_;
};

}  // namespace owl2
