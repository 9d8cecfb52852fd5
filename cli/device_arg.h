// The `--device` flag of eval, generate, chat and bench: auto | cpu | cuda | cuda:N (owl2/infer/device.h).
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "owl2/infer/device.h"
#include "trainers/parallel/distributed.h"

namespace owl2::cli {

inline void add_device_option(CLI::App* cmd, std::string& device, const std::string& fallback = "auto") {
  device = fallback;
  cmd->add_option("--device", device,
                  "auto (a GPU when one is visible: cuda:LOCAL_RANK under torchrun), cpu, cuda or cuda:N (default " +
                      fallback + ")");
}

// Parses and resolves a --device value and makes it current; exits 2 (std::invalid_argument) when it is not a
// device name or names CUDA that this process cannot use.
inline torch::Device use_device_arg(const std::string& device) {
  const auto d = resolve_device(parse_device(device, "--device"), DistEnv::from_environment().local_rank, "--device");
  use_device(d);
  return d;
}

}  // namespace owl2::cli
