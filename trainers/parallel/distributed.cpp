// c10d process group and bucketed gradient all-reduce; see distributed.h.
#include "trainers/parallel/distributed.h"

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#ifdef OWL2_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include "data/loader.h"

namespace owl2 {
namespace {

const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (*end != '\0') throw std::invalid_argument(fmt::format("environment variable {}='{}' is not an integer", name, v));
  return x;
}

}  // namespace

DistEnv DistEnv::from_environment() {
  DistEnv e;
  if (std::getenv("WORLD_SIZE")) {
    e.rank = env_int("RANK", 0);
    e.world_size = env_int("WORLD_SIZE", 1);
    e.local_rank = env_int("LOCAL_RANK", 0);
    e.master_addr = env_or("MASTER_ADDR", "127.0.0.1");
    e.master_port = env_int("MASTER_PORT", 29500);
    e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0);
  } else if (std::getenv("SLURM_NTASKS")) {
    e.rank = env_int("SLURM_PROCID", 0);
    e.world_size = env_int("SLURM_NTASKS", 1);
    e.local_rank = env_int("SLURM_LOCALID", 0);
    e.master_addr = env_or("MASTER_ADDR", env_or("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"));
    e.master_port = env_int("MASTER_PORT", 29500);
  }
  if (e.world_size < 1) throw std::invalid_argument(fmt::format("WORLD_SIZE must be >= 1, got {}", e.world_size));
  if (e.rank < 0 || e.rank >= e.world_size) {
    throw std::invalid_argument(fmt::format("RANK {} is outside [0, WORLD_SIZE = {})", e.rank, e.world_size));
  }
  if (e.master_port <= 0 || e.master_port > 65535) {
    throw std::invalid_argument(fmt::format("MASTER_PORT {} is not a port number", e.master_port));
  }
  return e;
}

data::LoaderState reshard_stream_states(const std::vector<data::LoaderState>& saved, int64_t rank, int64_t to_world) {
  if (saved.empty() || rank < 0 || rank >= to_world)
    throw std::invalid_argument(fmt::format("stream positions: rank {} of {} from {} saved positions", rank, to_world,
                                            saved.size()));
  if (static_cast<int64_t>(saved.size()) == to_world) return saved[static_cast<size_t>(rank)];
  std::vector<data::RankStream> streams;
  for (size_t r = 0; r < saved.size(); ++r) {
    const auto& s = saved[r];
    if (!s.streaming())
      throw std::invalid_argument(fmt::format("stream positions: rank {}'s saved state is not a stream position", r));
    if (s.shards <= 0)
      throw std::invalid_argument(fmt::format(
          "stream positions: rank {}'s saved state does not record the stream's shard count (saved by an older owl2), "
          "so it cannot be resharded from {} to {} ranks; resume at {} ranks",
          r, saved.size(), to_world, saved.size()));
    if (s.seed != saved[0].seed || s.shards != saved[0].shards)
      throw std::invalid_argument(fmt::format("stream positions: rank {} was saved with seed {} over {} shards, rank 0 "
                                              "with seed {} over {}",
                                              r, s.seed, s.shards, saved[0].seed, saved[0].shards));
    streams.push_back({{s.epoch, s.shard, s.sample}, s.plan, s.then_epoch, s.then_plan});
  }
  const auto mine = data::reshard_streams(streams, static_cast<size_t>(saved[0].shards), saved[0].seed,
                                          static_cast<int>(to_world))[static_cast<size_t>(rank)];
  data::LoaderState out;
  out.seed = saved[0].seed;
  out.epoch = mine.position.epoch;
  out.position = 0;
  out.shard = mine.position.shard;
  out.sample = mine.position.sample;
  out.plan = mine.plan;
  out.shards = saved[0].shards;
  out.then_epoch = mine.then_epoch;
  out.then_plan = mine.then_plan;
  return out;
}

data::LoaderState reshard_loader_state(const data::LoaderState& state, int64_t from_world, int64_t to_world) {
  if (from_world < 1 || to_world < 1) {
    throw std::invalid_argument(fmt::format("loader state: world sizes must be >= 1, got {} -> {}", from_world, to_world));
  }
  if (state.streaming()) {
    if (from_world != to_world)
      throw std::invalid_argument(fmt::format("loader state: a streaming position saved at world size {} cannot be "
                                              "resumed at {}: each rank reads its own shards",
                                              from_world, to_world));
    return state;
  }
  const int64_t global = state.position * from_world;
  if (global % to_world != 0) {
    throw std::invalid_argument(fmt::format("loader state: {} batches read at world size {} do not split over {} ranks",
                                            global, from_world, to_world));
  }
  data::LoaderState out = state;
  out.position = global / to_world;
  return out;
}

Comm::Comm(const DistEnv& env, std::chrono::milliseconds timeout, bool cuda, bool group_of_one) : env_(env) {
#ifdef OWL2_WITH_NCCL
  if (cuda) device_ = c10::Device(c10::kCUDA, c10::cuda::current_device());  // the caller's use_device()
#endif
  if (env_.world_size == 1 && !group_of_one) return;
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env_.master_port);
  so.isServer = env_.rank == 0;
  so.numWorkers = static_cast<size_t>(env_.world_size);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        fmt::format("owl2/attempt-{}", env_.restart_count), c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so));
    store_ = store;
    if (cuda) {
#ifdef OWL2_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      backend_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env_.rank, env_.world_size, opts);
#else
      throw std::runtime_error("this build of owl2 has no NCCL support");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
      backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env_.rank, env_.world_size, opts);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {}: cannot join the process group at {}:{} (world size {}): {}",
                                         env_.rank, env_.master_addr, env_.master_port, env_.world_size, e.what()));
  }
}

Comm::~Comm() {
  if (backend_) {
    try {
      backend_->shutdown();
    } catch (...) {
    }
  }
}

void Comm::set_step(int64_t step) {
  step_ = step;
  if (!store_) return;
  const std::string v = std::to_string(step);
  store_->set(fmt::format("owl2/progress/{}", env_.rank), std::vector<uint8_t>(v.begin(), v.end()));
}

std::string Comm::laggards() const {
  if (!store_) return "";
  std::string out;
  try {
    for (int64_t r = 0; r < env_.world_size; ++r) {
      if (r == env_.rank) continue;
      const std::string key = fmt::format("owl2/progress/{}", r);
      if (!store_->check({key})) {
        out += fmt::format("; rank {} has not reported any step", r);
        continue;
      }
      const auto v = store_->get(key);
      const int64_t step = std::stoll(std::string(v.begin(), v.end()));
      if (step < step_) out += fmt::format("; rank {} is behind, at step {}", r, step);
    }
  } catch (const std::exception&) {
    out += "; the store is unreachable (rank 0 may have died)";
  }
  return out;
}

void Comm::fail(const std::string& what, const std::exception& e) const {
  std::string msg = e.what();
  if (const auto nl = msg.find("\nException raised from"); nl != std::string::npos) msg.resize(nl);
  throw std::runtime_error(fmt::format("rank {} of {}, step {}: collective '{}' failed{}: {}", env_.rank,
                                       env_.world_size, step_, what, laggards(), msg));
}

c10::intrusive_ptr<c10d::Work> Comm::allreduce_sum_async(at::Tensor& t) {
  std::vector<at::Tensor> v{t};
  return backend_->allreduce(v, c10d::AllreduceOptions{});
}

c10::intrusive_ptr<c10d::Work> Comm::reduce_scatter_sum_async(at::Tensor& out_chunk, at::Tensor& in_full) {
  return backend_->_reduce_scatter_base(out_chunk, in_full, c10d::ReduceScatterOptions{});
}

std::vector<std::string> Comm::allgather_strings(const std::string& mine, const std::string& what) {
  const int64_t W = world_size(), r = rank();
  if (!backend_) return {mine};
  auto sizes = at::zeros({W}, at::TensorOptions().dtype(at::kLong));
  sizes[r] = static_cast<int64_t>(mine.size());
  sizes = sizes.to(device_);
  allreduce_sum(sizes, what + " (sizes)");
  const auto n = sizes.cpu();
  std::vector<int64_t> offset(static_cast<size_t>(W) + 1, 0);
  for (int64_t k = 0; k < W; ++k) offset[static_cast<size_t>(k) + 1] = offset[static_cast<size_t>(k)] + n[k].item<int64_t>();
  // int32 slots: sums of one non-zero byte and zeros are exact in every backend's supported dtypes.
  auto bytes = at::zeros({std::max<int64_t>(1, offset.back())}, at::TensorOptions().dtype(at::kInt));
  auto* b = bytes.data_ptr<int32_t>();
  for (size_t i = 0; i < mine.size(); ++i) b[offset[static_cast<size_t>(r)] + static_cast<int64_t>(i)] = static_cast<unsigned char>(mine[i]);
  bytes = bytes.to(device_);
  allreduce_sum(bytes, what);
  const auto all = bytes.cpu();
  const auto* a = all.data_ptr<int32_t>();
  std::vector<std::string> out;
  for (int64_t k = 0; k < W; ++k) {
    std::string s;
    for (int64_t i = offset[static_cast<size_t>(k)]; i < offset[static_cast<size_t>(k) + 1]; ++i) s.push_back(static_cast<char>(a[i]));
    out.push_back(std::move(s));
  }
  return out;
}

c10::intrusive_ptr<c10d::Work> Comm::allgather_async(at::Tensor& out_full, at::Tensor& in_chunk) {
  return backend_->_allgather_base(out_full, in_chunk, c10d::AllgatherOptions{});
}

namespace {
// Adds the wall time of its scope to a counter.
struct BlockedTimer {
  explicit BlockedTimer(double& total) : total(total), t0(std::chrono::steady_clock::now()) {}
  ~BlockedTimer() { total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
  double& total;
  std::chrono::steady_clock::time_point t0;
};
}  // namespace

void Comm::wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  BlockedTimer timer(blocked_s_);
  try {
    work->wait();
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

void Comm::allreduce_sum(at::Tensor& t, const std::string& what) {
  if (!backend_) return;
  BlockedTimer timer(blocked_s_);
  try {
    allreduce_sum_async(t)->wait();
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

int64_t Comm::sum(int64_t value, const std::string& what) {
  if (!backend_) return value;
  auto t = at::full({1}, value, at::TensorOptions(at::kLong).device(device_));
  allreduce_sum(t, what);
  return t.item<int64_t>();
}

double Comm::sum(double value, const std::string& what) {
  if (!backend_) return value;
  auto t = at::full({1}, value, at::TensorOptions(at::kDouble).device(device_));
  allreduce_sum(t, what);
  return t.item<double>();
}

void Comm::broadcast(at::Tensor& t, int64_t root, const std::string& what) {
  if (!backend_) return;
  BlockedTimer timer(blocked_s_);
  try {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    backend_->broadcast(v, opts)->wait();
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

void Comm::barrier(const std::string& what) {
  if (!backend_) return;
  BlockedTimer timer(blocked_s_);
  try {
    backend_->barrier()->wait();
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

// Runs after backward has added a gradient into parameter k's .grad (a view of its bucket slot).
struct DataParallel::AfterAccumulation : torch::autograd::PostAccumulateGradHook {
  AfterAccumulation(DataParallel* dp, size_t k) : dp_(dp), k_(k) {}
  void operator()(const torch::autograd::Variable& /*param*/) override { dp_->on_accumulated(k_); }
  DataParallel* dp_;
  size_t k_;
};

DataParallel::DataParallel(std::shared_ptr<Comm> comm, torch::nn::Module& model, int64_t bucket_bytes)
    : comm_(std::move(comm)) {
  torch::NoGradGuard no_grad;
  if (comm_ && comm_->world_size() == 1) comm_.reset();
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    at::Tensor p = item.value();
    if (comm_) comm_->broadcast(p, 0, "broadcast " + item.key());
    if (!p.requires_grad()) continue;
    params_.push_back(p);
    names_.push_back(item.key());
  }
  // Buckets in reverse registration order, which is roughly the order in which backward finishes gradients.
  bucket_of_.assign(params_.size(), 0);
  offset_of_.assign(params_.size(), 0);
  seen_.assign(params_.size(), 0);
  int64_t bytes = bucket_bytes;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    const int64_t nbytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool new_bucket = buckets_.empty() || bytes + nbytes > bucket_bytes ||
                            buckets_.back().flat.scalar_type() != p.scalar_type();
    if (new_bucket) {
      buckets_.emplace_back();
      buckets_.back().flat = at::empty({0}, p.options());
      bytes = 0;
    }
    auto& b = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    offset_of_[k] = static_cast<size_t>(b.flat.numel());
    b.params.push_back(k);
    b.flat = at::empty({b.flat.numel() + p.numel()}, p.options());
    bytes += nbytes;
  }
  if (comm_) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& b : buckets_) {
      b.flat.zero_();
      works.push_back(comm_->allreduce_sum_async(b.flat));
    }
    for (size_t i = 0; i < works.size(); ++i) comm_->wait(works[i], fmt::format("calibration allreduce bucket {}", i));
    calibration_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  touched_.assign(params_.size(), 0);
  for (size_t k = 0; k < params_.size(); ++k) {
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k], std::make_unique<AfterAccumulation>(this, k));
  }
  zero_grad();
}

DataParallel::~DataParallel() {
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

at::Tensor DataParallel::slot(size_t k) const {
  return buckets_[bucket_of_[k]].flat.narrow(0, static_cast<int64_t>(offset_of_[k]), params_[k].numel())
      .view(params_[k].sizes());
}

std::vector<at::Tensor> DataParallel::buffers() const {
  std::vector<at::Tensor> out;
  for (const auto& b : buckets_) out.push_back(b.flat);
  return out;
}

void DataParallel::zero_grad() {
  at::NoGradGuard no_grad;
  for (auto& b : buckets_) b.flat.zero_();
  for (size_t k = 0; k < params_.size(); ++k) params_[k].mutable_grad() = slot(k);
  std::fill(touched_.begin(), touched_.end(), 0);
}

void DataParallel::arm() {
  armed_ = true;
  next_launch_ = 0;
  std::fill(seen_.begin(), seen_.end(), 0);
  for (auto& b : buckets_) {
    b.ready = 0;
    b.launched = false;
    b.work.reset();
  }
}

void DataParallel::on_accumulated(size_t k) {
  touched_[k] = 1;
  if (!armed_ || !comm_ || seen_[k]) return;
  const auto& grad = params_[k].grad();
  if (!grad.defined() || grad.data_ptr() != slot(k).data_ptr()) {
    throw std::logic_error(fmt::format("data parallel: the gradient of '{}' is no longer a view of its bucket "
                                       "(zero_grad() must come before the step's backward)", names_[k]));
  }
  seen_[k] = 1;
  auto& b = buckets_[bucket_of_[k]];
  if (++b.ready == static_cast<int64_t>(b.params.size())) launch_ready_in_order();
}

void DataParallel::launch_ready_in_order() {
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].ready == static_cast<int64_t>(buckets_[next_launch_].params.size())) {
    auto& b = buckets_[next_launch_];
    b.work = comm_->allreduce_sum_async(b.flat);
    b.launched = true;
    ++next_launch_;
  }
}

void DataParallel::finish() {
  if (!armed_) throw std::logic_error("DataParallel::finish() without arm()");
  armed_ = false;
  at::NoGradGuard no_grad;
  if (!comm_) {
    for (size_t k = 0; k < params_.size(); ++k) {
      if (!touched_[k]) params_[k].mutable_grad().reset();
    }
    return;
  }
  // Which parameters received a gradient anywhere (one small all-reduce); a slot without one holds zeros, or what
  // earlier micro-batches accumulated.
  auto used = at::zeros({static_cast<int64_t>(params_.size())}, at::kInt);
  for (size_t k = 0; k < params_.size(); ++k) {
    used[static_cast<int64_t>(k)] = touched_[k] ? 1 : 0;
    if (seen_[k]) continue;
    seen_[k] = 1;
    ++buckets_[bucket_of_[k]].ready;
  }
  const auto t0 = std::chrono::steady_clock::now();
  launch_ready_in_order();
  used = used.to(comm_->device());  // NCCL reduces device tensors only
  comm_->allreduce_sum(used, "allreduce used-parameter flags");
  for (size_t i = 0; i < buckets_.size(); ++i) comm_->wait(buckets_[i].work, fmt::format("allreduce gradient bucket {}", i));
  used = used.cpu();  // a host read per step: which gradients exist is decided on the host
  wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto used_any = used.accessor<int, 1>();
  for (size_t k = 0; k < params_.size(); ++k) {
    if (!used_any[static_cast<int64_t>(k)]) params_[k].mutable_grad().reset();  // its slot stays, zero
  }
}

}  // namespace owl2
