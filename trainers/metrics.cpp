// MetricsLogger and process statistics; see metrics.h.
#include "trainers/metrics.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <stdexcept>

#ifdef OWL2_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace owl2 {

MetricsLogger::MetricsLogger(const std::string& jsonl_path, int64_t total_steps, double peak_flops, bool tty,
                             std::FILE* out, int64_t print_every)
    : jsonl_(jsonl_path, std::ios::app),
      total_steps_(total_steps),
      peak_flops_(peak_flops),
      tty_(tty),
      out_(out),
      print_every_(std::max<int64_t>(1, print_every)) {
  if (!jsonl_) throw std::runtime_error("cannot open metrics file " + jsonl_path + " for writing");
}

MetricsLogger::~MetricsLogger() {
  if (bar_open_) std::fputc('\n', out_);
}

namespace {
std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}
}  // namespace

std::string MetricsLogger::json_line(const StepMetrics& m) const {
  nlohmann::json j;
  j["step"] = m.step;
  j["loss"] = m.loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  j["tokens"] = m.tokens;
  j["samples"] = m.samples;
  const double t = m.step_seconds > 0 ? m.step_seconds : NAN;
  j["step_seconds"] = m.step_seconds;
  j["tokens_per_s"] = m.input_tokens / t;
  j["samples_per_s"] = m.samples / t;
  j["data_wait_fraction"] = m.data_seconds / t;
  if (peak_flops_ > 0 && m.flops > 0) j["mfu"] = m.flops / t / peak_flops_;
  if (m.flops > 0) j["tflops_per_s"] = m.flops / t / 1e12;
  j["peak_memory_bytes"] = m.peak_memory_bytes;
  j["skipped_step"] = m.skipped;
  j["skipped_samples"] = m.skipped_samples;
  for (const auto& [k, v] : m.extra) j[k] = v;
  // NaN is not JSON: write null.
  for (auto& [k, v] : j.items()) {
    if (v.is_number_float() && !std::isfinite(v.get<double>())) v = nullptr;
  }
  return j.dump();
}

std::string MetricsLogger::progress_line(const StepMetrics& m) const {
  const double avg = logged_ > 0 ? elapsed_ / double(logged_) : m.step_seconds;
  const double eta = avg * double(total_steps_ - m.step - 1);
  const double tok_s = m.step_seconds > 0 ? m.input_tokens / m.step_seconds : 0;
  std::string line = fmt::format("step {}/{} loss {:.4f} lr {:.3g} gnorm {:.3g} tok/s {:.0f} ETA {}", m.step + 1,
                                 total_steps_, m.loss, m.lr, m.grad_norm, tok_s, duration(eta));
  if (m.skipped) line += " [skipped]";
  if (peak_flops_ > 0 && m.flops > 0 && m.step_seconds > 0) {
    line += fmt::format(" MFU {:.1f}%", 100.0 * m.flops / m.step_seconds / peak_flops_);
  }
  return line;
}

void MetricsLogger::log(const StepMetrics& m) {
  jsonl_ << json_line(m) << '\n';
  jsonl_.flush();
  elapsed_ += m.step_seconds;
  ++logged_;
  const std::string line = progress_line(m);
  if (tty_) {
    const int width = 24;
    const double frac = total_steps_ > 0 ? double(m.step + 1) / double(total_steps_) : 0;
    const int fill = static_cast<int>(frac * width);
    std::fprintf(out_, "\r[%s%s] %s\x1b[K", std::string(fill, '#').c_str(), std::string(width - fill, '.').c_str(),
                 line.c_str());
    bar_open_ = true;
  } else if ((m.step + 1) % print_every_ == 0 || m.step + 1 == total_steps_ || m.skipped) {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void MetricsLogger::note(const std::string& line) {
  if (bar_open_) {
    std::fputc('\n', out_);
    bar_open_ = false;
  }
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

double peak_flops_for_device() {
#ifdef OWL2_WITH_CUDA
  if (c10::cuda::device_count() > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, c10::cuda::current_device()) == cudaSuccess) {
      const std::string name = prop.name;
      if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989e12;
      if (name.find("A100") != std::string::npos) return 312e12;
    }
  }
#endif
  return 0;
}

int64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace owl2
