#!/usr/bin/env bash
# The README's second command: set everything up, build, and run the whole test suite with CTest, twice when
# the CUDA toolkit is there:
#   build/       against the CPU torch wheel (.venv)
#   build-cuda/  against the CUDA torch wheel (.venv-cuda) with NCCL on, run on whatever the machine has
#                (without a GPU everything runs on the CPU and the [gpu] tests say so)
# OWL2_CUDA_BUILD: unset (auto) builds build-cuda/ when nvcc is found (PATH or CUDA_HOME or /usr/local/cuda)
# and says so when it is not; 1 requires it; 0 leaves it out (a quick local run). It adds a 5.4 GB venv and a
# second cold build.
# Arguments pass to both ctest runs (e.g. -R config).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
elapsed() { echo "[test] $1 after $(( $(date +%s) - start )) s"; }
cuda=${OWL2_CUDA_BUILD:-auto}
if [ "$cuda" = auto ]; then
  if command -v nvcc >/dev/null || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    cuda=1
  else
    cuda=0
    echo "[test] no CUDA toolkit (nvcc) on this machine: the CUDA build (build-cuda/) is left out; docs/gpu.md"
  fi
fi
if [ "$cuda" = 1 ]; then bash scripts/setup.sh --cuda-build; else bash scripts/setup.sh; fi
elapsed "set up"
bash scripts/build.sh
elapsed "CPU build"
echo "[test] running the test suite (CPU build: ${OWL2_BUILD_DIR:-build})"
ctest --test-dir "${OWL2_BUILD_DIR:-build}" -j"${OWL2_TEST_JOBS:-2}" --output-on-failure "$@"
elapsed "CPU suite"
if [ "$cuda" = 1 ]; then
  OWL2_BUILD_DIR=build-cuda OWL2_VENV=.venv-cuda bash scripts/build.sh
  elapsed "CUDA build"
  echo "[test] running the test suite (CUDA build: build-cuda)"
  ctest --test-dir build-cuda -j"${OWL2_TEST_JOBS:-2}" --output-on-failure "$@"
  elapsed "CUDA suite"
fi
