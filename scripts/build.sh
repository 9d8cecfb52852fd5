#!/usr/bin/env bash
# Configures (once) and builds owl2 with CMake + Ninja into build/ (override with OWL2_BUILD_DIR).
# Extra CMake arguments pass through: scripts/build.sh -DOWL2_WITH_OPENCV=OFF
# OWL2_VENV=DIR takes LibTorch from that venv's torch wheel (the CUDA build: OWL2_BUILD_DIR=build-cuda
# OWL2_VENV=.venv-cuda, as scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${OWL2_BUILD_DIR:-build}
args=(-G Ninja -DCMAKE_BUILD_TYPE=${OWL2_BUILD_TYPE:-Release} -DCMAKE_POLICY_VERSION_MINIMUM=3.5)
if [ -n "${Torch_DIR:-}" ]; then args+=("-DTorch_DIR=$Torch_DIR"); fi
if [ -n "${OWL2_VENV:-}" ]; then args+=("-DOWL2_VENV=$(cd "$OWL2_VENV" && pwd)"); fi
if [ ! -f "$BUILD_DIR/build.ninja" ] || [ $# -gt 0 ]; then
  echo "[build] configuring $BUILD_DIR"
  mkdir -p "$BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" "${args[@]}" "$@" > "$BUILD_DIR/configure.log" 2>&1 || { cat "$BUILD_DIR/configure.log"; exit 1; }
  grep -E "owl2:" "$BUILD_DIR/configure.log" || true
fi
echo "[build] building $BUILD_DIR"
cmake --build "$BUILD_DIR" -- -j"${OWL2_JOBS:-$(nproc)}"
