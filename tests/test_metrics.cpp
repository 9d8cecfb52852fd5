// Metrics: JSONL fields and derived rates, the progress line, and the plain-line cadence off a terminal.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "tests/helpers.h"
#include "trainers/metrics.h"

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
