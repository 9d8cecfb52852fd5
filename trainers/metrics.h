// Observability of a run: JSONL metrics per step (and the same scalars in TensorBoard when attached), a
// progress line (a bar on a terminal, plain lines otherwise), throughput and the MFU estimate.
#pragma once
#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trainers/tensorboard.h"

namespace owl2 {

// One step's figures; the logger adds throughput, timing and ETA.
struct StepMetrics {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens = 0, samples = 0;  // supervised tokens and samples of the global batch
  int64_t input_tokens = 0;         // all tokens the model processed (for tokens/s)
  double step_seconds = 0;          // the step, data wait included (see StepTimer)
  double data_seconds = 0;          // of which waiting for the data (see StepTimer)
  double flops = 0;                 // model FLOPs of the step (see plan.h); 0 = unknown
  bool skipped = false;
  int64_t skipped_samples = 0;      // dropped by the data pipeline so far
  int64_t peak_memory_bytes = 0;   // host: the process's RSS high-water mark (peak_rss_bytes)
  std::optional<int64_t> device_peak_memory_bytes;  // CUDA: see take_device_peak_memory_bytes
  std::map<std::string, double> extra;  // e.g. eval metrics
};

class MetricsLogger {
 public:
  // Appends to `jsonl_path` (created if missing). `total_steps` for the ETA; `peak_flops` per second of the
  // hardware for MFU (0 = not reported). `tty`: draw a bar with \r instead of printing lines.
  MetricsLogger(const std::string& jsonl_path, int64_t total_steps, double peak_flops, bool tty,
                std::FILE* out = stderr, int64_t print_every = 10);
  ~MetricsLogger();
  void log(const StepMetrics& m);
  void note(const std::string& line);  // a plain message that does not break the bar

  // From now on each log() also writes every number of its JSON line (all but "step"; true/false as 1/0,
  // null as NaN) as a TensorBoard scalar of the same name at that step.
  void attach_tensorboard(std::unique_ptr<TensorBoardWriter> writer);
  // A markdown text in TensorBoard at `step` (nothing without an attached writer).
  void text(const std::string& tag, const std::string& markdown, int64_t step);

  // The JSON line written for m (exposed for tests).
  std::string json_line(const StepMetrics& m) const;
  // The TensorBoard scalars of a JSON line, in its key order.
  static std::vector<std::pair<std::string, double>> scalars_of_line(const std::string& json_line);
  std::string progress_line(const StepMetrics& m) const;

 private:
  std::ofstream jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  int64_t total_steps_;
  double peak_flops_;
  bool tty_;
  std::FILE* out_;
  int64_t print_every_;
  bool bar_open_ = false;
  double elapsed_ = 0;  // sum of step times logged so far
  int64_t logged_ = 0;
};

// Peak dense (no sparsity) BF16 tensor-core FLOP/s of a GPU from its CUDA device name, as the driver reports
// it ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-40GB"); 0 for a name not in the table
// (then no MFU is reported rather than one against a guessed peak).
double peak_bf16_flops_for_name(std::string_view device_name);
// The same for `device`: 0 on the CPU, or for an unknown GPU.
double peak_flops_for_device(c10::Device device);
// The same for the current CUDA device (0 without one).
double peak_flops_for_device();

// CUDA: the most bytes the caching allocator had allocated on `device` since the previous call, which resets
// the peak: called once per metrics line, each line has the peak of its step plus whatever ran after the
// previous line (an evaluation, a checkpoint save). nullopt on the CPU.
std::optional<int64_t> take_device_peak_memory_bytes(c10::Device device);

struct StepTimes {
  double step_seconds = 0;  // from start() to the end of the step
  double data_seconds = 0;  // from start() to data_ready()
};

// Times a step on the device it computes on. CPU: the host's steady clock. CUDA: events recorded on the
// current (compute) stream, so the step time is when the device finished its last kernel, and the data wait
// is how long the compute stream waited for the batch (the host waiting for the prefetcher, then the
// stream waiting for the copy). stop() waits for the step's last kernel: one host sync per step, after
// the step's own.
class StepTimer {
 public:
  explicit StepTimer(c10::Device device);
  ~StepTimer();
  void start();       // before asking for the step's data
  void data_ready();  // once the data is ordered before compute (after DevicePrefetcher::next)
  StepTimes stop();   // after the step

 private:
  struct Events;  // CUDA
  c10::Device device_;
  std::chrono::steady_clock::time_point t0_, t_data_;
  std::unique_ptr<Events> events_;
};

// Resident-set high-water mark of this process (bytes), from /proc/self/status.
int64_t peak_rss_bytes();
// The process's resident set now (VmRSS), in bytes; 0 where /proc is missing.
int64_t rss_bytes();

}  // namespace owl2
