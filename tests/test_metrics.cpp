// Metrics: JSONL fields and derived rates, the progress line, the plain-line cadence off a terminal, the
// peak table behind MFU and the step timer.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "tests/helpers.h"
#include "trainers/metrics.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_metrics {

using Catch::Matchers::Contains;
using namespace owl2;

TEST_CASE("metrics lines carry rates, MFU and the data-wait fraction", "[train][metrics]") {
  const std::string path = "build/test_metrics.jsonl";
  std::filesystem::remove(path);
  std::FILE* sink = std::tmpfile();
  {
    MetricsLogger log(path, 100, /*peak_flops=*/1e12, /*tty=*/false, sink, /*print_every=*/2);
    StepMetrics m;
    m.step = 0;
    m.loss = 2.5;
    m.lr = 1e-3;
    m.tokens = 300;
    m.input_tokens = 1000;
    m.samples = 8;
    m.step_seconds = 0.5;
    m.data_seconds = 0.1;
    m.flops = 2e11;
    m.extra["eval_accuracy"] = 0.75;
    const auto j = nlohmann::json::parse(log.json_line(m));
    CHECK(j["tokens_per_s"].get<double>() == Approx(2000));
    CHECK(j["samples_per_s"].get<double>() == Approx(16));
    CHECK(j["data_wait_fraction"].get<double>() == Approx(0.2));
    CHECK(j["mfu"].get<double>() == Approx(0.4));
    CHECK(j["eval_accuracy"].get<double>() == 0.75);
    log.log(m);
    m.step = 1;
    m.step_seconds = 0;  // unknown time: rates become null, not NaN
    const auto k = nlohmann::json::parse(log.json_line(m));
    CHECK(k["tokens_per_s"].is_null());
    log.log(m);
    m.step = 2;
    m.step_seconds = 0.5;
    CHECK_THAT(log.progress_line(m), Contains("step 3/100") && Contains("loss 2.5000") && Contains("ETA") &&
                                         Contains("MFU 40.0%"));
  }
  std::rewind(sink);
  char buf[4096] = {};
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, sink);
  std::fclose(sink);
  const std::string printed(buf, n);
  CHECK(printed.find("step 1/100") == std::string::npos);  // print_every 2: only step 2 is printed
  CHECK_THAT(printed, Contains("step 2/100"));
  const std::string text = owl2::test::read_text(path);
  CHECK(std::count(text.begin(), text.end(), '\n') == 2);
}

TEST_CASE("peak RSS is read from the process status", "[train][metrics]") {
  CHECK(peak_rss_bytes() > 1 << 20);
}

TEST_CASE("MFU needs a known peak: without one (a CPU run) the line has no mfu field", "[train][metrics]") {
  const std::string path = "build/test_metrics_cpu.jsonl";
  std::filesystem::remove(path);
  std::FILE* sink = std::tmpfile();
  MetricsLogger log(path, 10, peak_flops_for_device(c10::Device(c10::kCPU)), /*tty=*/false, sink);
  StepMetrics m;
  m.input_tokens = 1000;
  m.step_seconds = 0.5;
  m.flops = 2e11;
  const auto j = nlohmann::json::parse(log.json_line(m));
  CHECK_FALSE(j.contains("mfu"));
  CHECK(j["tflops_per_s"].get<double>() == Approx(0.4));
  CHECK_FALSE(j.contains("device_peak_memory_bytes"));  // CUDA only
  CHECK_THAT(log.progress_line(m), !Contains("MFU"));
  m.device_peak_memory_bytes = 123;
  CHECK(nlohmann::json::parse(log.json_line(m))["device_peak_memory_bytes"].get<int64_t>() == 123);
  std::fclose(sink);
}

TEST_CASE("dense BF16 peaks by CUDA device name and 0 for cards not in the table", "[train][metrics]") {
  CHECK(peak_bf16_flops_for_name("NVIDIA H100 80GB HBM3") == 989.4e12);  // SXM5
  CHECK(peak_bf16_flops_for_name("NVIDIA H100 PCIe") == 756e12);
  CHECK(peak_bf16_flops_for_name("NVIDIA H200") == 989.4e12);
  CHECK(peak_bf16_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12);
  CHECK(peak_bf16_flops_for_name("NVIDIA A100-PCIE-40GB") == 312e12);
  CHECK(peak_bf16_flops_for_name("NVIDIA A100 80GB PCIe") == 312e12);
  CHECK(peak_bf16_flops_for_name("NVIDIA L40S") == 362.05e12);
  for (const char* unknown : {"NVIDIA L40", "NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GH200 480GB",
                              "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", ""}) {
    INFO(unknown);
    CHECK(peak_bf16_flops_for_name(unknown) == 0);
  }
  CHECK(peak_flops_for_device(c10::Device(c10::kCPU)) == 0);
}

TEST_CASE("the step timer on the CPU uses the host clock and a CPU has no device memory peak", "[train][metrics]") {
  StepTimer timer(c10::Device(c10::kCPU));
  timer.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  timer.data_ready();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  const StepTimes t = timer.stop();
  CHECK(t.data_seconds >= 0.02);
  CHECK(t.step_seconds >= 0.05);
  CHECK(t.data_seconds < t.step_seconds);
  CHECK_FALSE(take_device_peak_memory_bytes(c10::Device(c10::kCPU)).has_value());
}

}  // namespace owl2_test_metrics
