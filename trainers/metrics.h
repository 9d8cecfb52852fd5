// Observability of a run: JSONL metrics per step, a progress line (a bar on a terminal, plain lines
// otherwise), throughput and the MFU estimate.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>

namespace owl2 {

// One step's figures; the logger adds throughput, timing and ETA.
struct StepMetrics {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens = 0, samples = 0;  // supervised tokens and samples of the global batch
  int64_t input_tokens = 0;         // all tokens the model processed (for tokens/s)
  double step_seconds = 0;          // wall time of the step, data wait included
  double data_seconds = 0;          // time spent waiting for the loader
  double flops = 0;                 // model FLOPs of the step (see plan.h); 0 = unknown
  bool skipped = false;
  int64_t skipped_samples = 0;      // dropped by the data pipeline so far
  int64_t peak_memory_bytes = 0;
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

  // The JSON line written for m (exposed for tests).
  std::string json_line(const StepMetrics& m) const;
  std::string progress_line(const StepMetrics& m) const;

 private:
  std::ofstream jsonl_;
  int64_t total_steps_;
  double peak_flops_;
  bool tty_;
  std::FILE* out_;
  int64_t print_every_;
  bool bar_open_ = false;
  double elapsed_ = 0;  // sum of step times logged so far
  int64_t logged_ = 0;
};

// Peak dense bf16 FLOP/s of the current CUDA device by name (H100/H200 989e12, A100 312e12), else 0.
double peak_flops_for_device();

// Resident-set high-water mark of this process (bytes), from /proc/self/status.
int64_t peak_rss_bytes();

}  // namespace owl2
