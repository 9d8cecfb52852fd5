#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang into build-fuzz/ and runs each for a bounded time,
# seeded with the malformed-file corpus. Needs clang and its runtime: apt-get install clang-14 libclang-rt-14-dev.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
CXX=${CXX:-$(command -v clang++ || command -v clang++-14 || true)}
if [ -z "$CXX" ]; then echo "[fuzz] clang++ not found: apt-get install clang-14 libclang-rt-14-dev" >&2; exit 2; fi
TORCH_PREFIX=$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
if [ ! -f build-fuzz/build.ninja ]; then
  cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DCMAKE_POLICY_VERSION_MINIMUM=3.5 > /dev/null
fi
cmake --build build-fuzz -- -j"${OWL2_JOBS:-$(nproc)}"
mkdir -p build-fuzz/corpus/safetensors build-fuzz/corpus/torch_pickle
cp tests/fixtures/checkpoint/malformed/*.safetensors tests/fixtures/checkpoint/bin/*.safetensors build-fuzz/corpus/safetensors/
for f in tests/fixtures/checkpoint/bin/*.bin; do  # seed the unpickler with real data.pkl streams
  unzip -p "$f" '*/data.pkl' > "build-fuzz/corpus/torch_pickle/$(basename "$f").pkl" 2>/dev/null || true
done
export ASAN_OPTIONS=detect_leaks=0  # LibTorch's static registries are reported as leaks at exit
for t in safetensors torch_pickle; do
  echo "[fuzz] $t for ${SECS}s"
  build-fuzz/fuzz_$t -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 build-fuzz/corpus/$t 2>&1 | tail -12
done
