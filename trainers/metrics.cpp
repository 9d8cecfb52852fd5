// MetricsLogger and process statistics; see metrics.h.
#include "trainers/metrics.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <stdexcept>

#ifdef OWL2_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "trainers/cuda_event.h"
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
  if (m.device_peak_memory_bytes) j["device_peak_memory_bytes"] = *m.device_peak_memory_bytes;
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

std::vector<std::pair<std::string, double>> MetricsLogger::scalars_of_line(const std::string& json_line) {
  std::vector<std::pair<std::string, double>> out;
  const nlohmann::json line = nlohmann::json::parse(json_line);
  for (const auto& [k, v] : line.items()) {
    if (k == "step") continue;
    if (v.is_number()) out.emplace_back(k, v.get<double>());
    else if (v.is_boolean()) out.emplace_back(k, v.get<bool>() ? 1.0 : 0.0);
    else if (v.is_null()) out.emplace_back(k, NAN);
  }
  return out;
}

void MetricsLogger::attach_tensorboard(std::unique_ptr<TensorBoardWriter> writer) { tensorboard_ = std::move(writer); }

void MetricsLogger::text(const std::string& tag, const std::string& markdown, int64_t step) {
  if (tensorboard_) tensorboard_->text(tag, markdown, step);
}

void MetricsLogger::log(const StepMetrics& m) {
  const std::string line = json_line(m);
  jsonl_ << line << '\n';
  jsonl_.flush();
  if (tensorboard_) tensorboard_->scalars(scalars_of_line(line), m.step);
  elapsed_ += m.step_seconds;
  ++logged_;
  const std::string progress = progress_line(m);
  if (tty_) {
    const int width = 24;
    const double frac = total_steps_ > 0 ? double(m.step + 1) / double(total_steps_) : 0;
    const int fill = static_cast<int>(frac * width);
    std::fprintf(out_, "\r[%s%s] %s\x1b[K", std::string(fill, '#').c_str(), std::string(width - fill, '.').c_str(),
                 progress.c_str());
    bar_open_ = true;
  } else if ((m.step + 1) % print_every_ == 0 || m.step + 1 == total_steps_ || m.skipped) {
    std::fprintf(out_, "%s\n", progress.c_str());
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

#ifdef OWL2_WITH_CUDA
namespace {
c10::DeviceIndex cuda_index(c10::Device d) { return d.has_index() ? d.index() : c10::cuda::current_device(); }
}  // namespace
#endif

// Dense (no sparsity) BF16 tensor-core peaks, NVIDIA datasheets (which quote the sparse figure first): H100 SXM
// 989.4 TFLOPS, H100 PCIe 756, H200 (SXM) 989.4, A100 (SXM and PCIe, 40 and 80 GB) 312, L40S 362.05. H100 NVL,
// H200 NVL and GH200 run at other clocks and are left out (no MFU) rather than guessed; so are L40 and A800.
double peak_bf16_flops_for_name(std::string_view device_name) {
  std::string name(device_name);
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::toupper(c); });
  const auto has = [&](std::string_view part) { return name.find(part) != std::string::npos; };
  if (has("H100") && has("PCIE")) return 756e12;
  if (has("H100") && !has("NVL")) return 989.4e12;  // "NVIDIA H100 80GB HBM3": the SXM5 board
  if (has("H200") && !has("NVL") && !has("GH200")) return 989.4e12;
  if (has("A100")) return 312e12;
  if (has("L40S")) return 362.05e12;
  return 0;
}

double peak_flops_for_device(c10::Device device) {
#ifdef OWL2_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, cuda_index(device)) == cudaSuccess) return peak_bf16_flops_for_name(prop.name);
  }
#endif
  (void)device;
  return 0;
}

double peak_flops_for_device() {
#ifdef OWL2_WITH_CUDA
  if (c10::cuda::device_count() > 0) return peak_flops_for_device(c10::Device(c10::kCUDA));
#endif
  return 0;
}

std::optional<int64_t> take_device_peak_memory_bytes(c10::Device device) {
#ifdef OWL2_WITH_CUDA
  if (device.is_cuda()) {
    namespace allocator = c10::cuda::CUDACachingAllocator;
    const c10::DeviceIndex index = cuda_index(device);
    // [0] is StatType::AGGREGATE (all pools), an enum whose namespace moved between LibTorch releases.
    const int64_t peak = allocator::getDeviceStats(index).allocated_bytes[0].peak;
    allocator::resetPeakStats(index);
    return peak;
  }
#endif
  (void)device;
  return std::nullopt;
}

#ifdef OWL2_WITH_CUDA
struct StepTimer::Events {
  CudaEvent start{/*timing=*/true}, data{/*timing=*/true}, end{/*timing=*/true};
};
#else
struct StepTimer::Events {};
#endif

StepTimer::StepTimer(c10::Device device) : device_(device) {
#ifdef OWL2_WITH_CUDA
  if (device_.is_cuda()) {
    device_ = c10::Device(c10::kCUDA, cuda_index(device_));
    const c10::cuda::CUDAGuard guard(device_);  // events belong to the device current at their creation
    events_ = std::make_unique<Events>();
  }
#endif
}

StepTimer::~StepTimer() = default;

void StepTimer::start() {
  t0_ = t_data_ = std::chrono::steady_clock::now();
#ifdef OWL2_WITH_CUDA
  if (events_) events_->start.record(c10::cuda::getCurrentCUDAStream(device_.index()));
#endif
}

void StepTimer::data_ready() {
  t_data_ = std::chrono::steady_clock::now();
#ifdef OWL2_WITH_CUDA
  if (events_) events_->data.record(c10::cuda::getCurrentCUDAStream(device_.index()));
#endif
}

StepTimes StepTimer::stop() {
#ifdef OWL2_WITH_CUDA
  if (events_) {
    events_->end.record(c10::cuda::getCurrentCUDAStream(device_.index()));
    events_->end.synchronize();  // the step's last kernel (the optimizer's) has run
    return {events_->end.seconds_since(events_->start), events_->data.seconds_since(events_->start)};
  }
#endif
  const auto seconds = [](auto d) { return std::chrono::duration<double>(d).count(); };
  return {seconds(std::chrono::steady_clock::now() - t0_), seconds(t_data_ - t0_)};
}

namespace {
int64_t proc_status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size())) * 1024;
  }
  return 0;
}
}  // namespace

int64_t peak_rss_bytes() { return proc_status_kib("VmHWM"); }
int64_t rss_bytes() { return proc_status_kib("VmRSS"); }

}  // namespace owl2
