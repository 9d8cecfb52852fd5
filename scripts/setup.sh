#!/usr/bin/env bash
# Installs everything owl2 needs to build and test; safe to run again (a no-op when all is present).
#   - Debian dev packages (apt-get, only the missing ones)
#   - .venv with torch==2.13.0 and the pinned tooling in requirements.txt (only when requirements changed)
#   - with --cuda-build: .venv-cuda with the CUDA build of torch (OWL2_CUDA_TORCH, default 2.14.1), whose
#     LibTorch the second build (build-cuda/) compiles against; it needs the CUDA toolkit's nvcc (docs/gpu.md)
# A user's own LibTorch is honoured: when Torch_DIR or CMAKE_PREFIX_PATH points at one, torch is still
# installed in .venv for the Python tooling, but the C++ build uses the user's LibTorch (see scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
cuda_build=0
for arg in "$@"; do
  case "$arg" in
    --cuda-build) cuda_build=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --cuda-build)" >&2; exit 2 ;;
  esac
done

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config python3-venv
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libopencv-videoio-dev
  libyaml-cpp-dev libsentencepiece-dev catch2 nlohmann-json3-dev libcli11-dev libgloo-dev
  libarchive-dev libjpeg-dev
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages: all ${#APT_PACKAGES[@]} present"
fi

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say ".venv: up to date ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
else
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PY --version)"
    $PY -m venv .venv
  fi
  say "installing Python requirements into .venv (requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v 'is ignored: it is neither' >&2)
  echo "$want" > "$stamp"
fi

if [ "$cuda_build" = 1 ]; then
  cuda_torch=${OWL2_CUDA_TORCH:-2.14.1}
  cuda_stamp=.venv-cuda/.torch-$cuda_torch
  if [ -f "$cuda_stamp" ]; then
    say ".venv-cuda: up to date (torch $cuda_torch)"
  else
    if ! command -v nvcc >/dev/null && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
      echo "[setup] --cuda-build needs the CUDA toolkit (nvcc on PATH or CUDA_HOME); see docs/gpu.md" >&2
      exit 1
    fi
    [ -x .venv-cuda/bin/python ] || $PY -m venv .venv-cuda
    say "installing torch==$cuda_torch (CUDA build, several GB) into .venv-cuda"
    .venv-cuda/bin/python -m pip install -q --disable-pip-version-check "torch==$cuda_torch" 2> >(grep -v 'is ignored: it is neither' >&2)
    .venv-cuda/bin/python -c 'import torch, sys; sys.exit(0 if torch.version.cuda else "[setup] .venv-cuda: torch has no CUDA")'
    touch "$cuda_stamp"
  fi
fi

if [ -n "${Torch_DIR:-}" ]; then
  say "C++ build will use your LibTorch: Torch_DIR=$Torch_DIR"
elif [ -n "${CMAKE_PREFIX_PATH:-}" ]; then
  say "C++ build will search CMAKE_PREFIX_PATH=$CMAKE_PREFIX_PATH for LibTorch first"
else
  say "C++ build will use the LibTorch of .venv's torch wheel"
fi
say "done"
