// Data parallelism on LibTorch's c10d: the process group from the torchrun (or Slurm) environment over a
// TCPStore (Gloo on CPU, NCCL on CUDA), and bucketed gradient all-reduce launched from per-parameter hooks
// while backward is still running. Collective failures name the rank, the step and the collective.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

namespace owl2 {
namespace data {
struct LoaderState;
}

// A loader position saved at `from_world` ranks, for `to_world` ranks: rank r of W reads global batches
// r, r + W, ... of the same epoch list, so `position` per rank is global / W. Throws if the global position
// does not split evenly (it always does between optimizer steps: a step takes global/micro batches). A streaming
// position (per rank) is returned as it is at the same world size and refused at another.
data::LoaderState reshard_loader_state(const data::LoaderState& state, int64_t from_world, int64_t to_world);

// Streaming: rank `rank`'s state at `to_world` ranks from the states of all saved ranks (saved[r]: rank r's, at
// saved.size() ranks): data::reshard_streams deals the rest of the epoch out; the same states back when the world
// size is unchanged. Throws std::invalid_argument when a state is not a stream position, when the states disagree
// on the seed or the shard count, or lack the shard count (saved before it was recorded).
data::LoaderState reshard_stream_states(const std::vector<data::LoaderState>& saved, int64_t rank, int64_t to_world);

// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun); else SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID with MASTER_ADDR (default: SLURM_LAUNCH_NODE_IPADDR) and MASTER_PORT (default 29500);
// else a single process. Throws std::invalid_argument naming the variable on malformed values.
struct DistEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  // TORCHELASTIC_RESTART_COUNT: torchrun's agent store outlives a restart, so each attempt joins under its
  // own key prefix (the old attempt's Gloo addresses would be read otherwise).
  int64_t restart_count = 0;
  static DistEnv from_environment();
};

// One process group: NCCL over the current CUDA device (`cuda`; the caller made it current with use_device),
// else Gloo on the CPU. With world_size 1 every collective is a no-op, unless `group_of_one` asks for a real
// group of one process anyway (tests of the collectives on a machine with one GPU).
class Comm {
 public:
  Comm(const DistEnv& env, std::chrono::milliseconds timeout, bool cuda, bool group_of_one = false);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  // Where the group's tensors must live: the current CUDA device for NCCL (`cuda`), else the CPU (Gloo).
  const c10::Device& device() const { return device_; }
  // Records this rank's progress in the store, so that a failed collective can name the ranks behind.
  void set_step(int64_t step);

  // In-place sum over ranks; `what` names the collective in errors.
  void allreduce_sum(at::Tensor& t, const std::string& what);
  c10::intrusive_ptr<c10d::Work> allreduce_sum_async(at::Tensor& t);
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);
  int64_t sum(int64_t value, const std::string& what);
  double sum(double value, const std::string& what);
  void broadcast(at::Tensor& t, int64_t root, const std::string& what);
  void barrier(const std::string& what);
  // Every rank's `mine`, in rank order, on every rank (two all-reduces: the sizes, then the bytes, each rank's in
  // its own slot). For small payloads such as evaluation answers.
  std::vector<std::string> allgather_strings(const std::string& mine, const std::string& what);
  // Flat collectives for ZeRO: `in` has world_size() equal chunks; rank r receives (the sum of) chunk r.
  // Gloo implements both on CPU in this LibTorch, so no all-reduce emulation is needed.
  c10::intrusive_ptr<c10d::Work> reduce_scatter_sum_async(at::Tensor& out_chunk, at::Tensor& in_full);
  c10::intrusive_ptr<c10d::Work> allgather_async(at::Tensor& out_full, at::Tensor& in_chunk);

  // Wall time this process spent blocked in collectives (waits and synchronous calls), for the
  // communication/compute split in the metrics.
  double blocked_seconds() const { return blocked_s_; }

 private:
  [[noreturn]] void fail(const std::string& what, const std::exception& e) const;
  std::string laggards() const;
  DistEnv env_;
  c10::Device device_{c10::kCPU};
  int64_t step_ = -1;
  double blocked_s_ = 0;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
};

// Gradient synchronization for data parallelism. Parameters are broadcast from rank 0 on construction. With a
// null (or one-rank) comm it only keeps the gradients in its buckets: one contiguous buffer, no all-reduce.
// The gradients live in flat buckets, one full-size copy in all: zero_grad() zeroes the buckets and makes every
// trainable parameter's .grad a view of its place in them, so backward accumulates the micro-batches straight into
// the buckets. Before the backward of the LAST micro-batch of a step call arm(); a hook after each parameter's
// accumulation launches a bucket's all-reduce, in bucket order, as soon as all of its parameters are done.
// finish() launches the buckets of parameters that got no gradient this micro-batch, waits, and drops the
// .grad of a parameter unused on every rank, exactly as in one process (AdamW then skips it). Earlier
// micro-batches communicate nothing.
class DataParallel {
 public:
  DataParallel(std::shared_ptr<Comm> comm, torch::nn::Module& model, int64_t bucket_bytes = 25 << 20);
  ~DataParallel();  // removes its hooks from the parameters
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;
  // Before a step's first backward: the buckets zeroed and every .grad pointed at its slot.
  void zero_grad();
  void arm();
  void finish();
  size_t num_buckets() const { return buckets_.size(); }
  // The flat gradient buckets (what the gradients are views of), for memory accounting.
  std::vector<at::Tensor> buffers() const;
  // Seconds one blocking all-reduce of every bucket took at construction: the communication time of a
  // step without any overlap, against which the exposed wait in finish() gives the overlap achieved.
  double unoverlapped_comm_seconds() const { return calibration_s_; }
  // Seconds the last finish() waited for the gradient buckets: the part of their all-reduce that backward
  // did not hide (it also includes waiting for a slower rank to finish its backward).
  double wait_seconds() const { return wait_s_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    at::Tensor flat;
    int64_t ready = 0;
    c10::intrusive_ptr<c10d::Work> work;
    bool launched = false;
  };
  struct AfterAccumulation;
  at::Tensor slot(size_t k) const;  // parameter k's place in its bucket
  void on_accumulated(size_t index);
  void on_grad(size_t index, const at::Tensor& grad);
  void launch_ready_in_order();

  std::shared_ptr<Comm> comm_;
  std::vector<at::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<size_t> bucket_of_, offset_of_;
  std::vector<uint8_t> seen_;     // this micro-batch (armed): accumulated
  std::vector<uint8_t> touched_;  // this step: a gradient arrived
  std::vector<Bucket> buckets_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  double calibration_s_ = 0;
  double wait_s_ = 0;
};

}  // namespace owl2
