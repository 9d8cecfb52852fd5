#!/usr/bin/env bash
# The GPU check: builds owl2 against the GPU machine's own PyTorch (CUDA), runs the CUDA tests and measures the
# trainer's MFU on the 7B stage-1 and stage-2 configurations; a summary is printed last (docs/building.md, GPU).
#
#   scripts/gpu_check.sh deps      here (Debian 12 with apt): the libraries the GPU machine lacks, unpacked into
#                                  .deps/gpu/ and packed as .deps/gpu.tar.gz (19 MB, symlinks kept; name it in
#                                  the device tool's `carry`; .gitignore ignores /.deps/)
#   scripts/gpu_check.sh run       on the GPU machine: configure + build in build-gpu/, [gpu] tests, benchmarks
#   scripts/gpu_check.sh dry-run   the same steps here on the CPU: the existing build/ (no rebuild), the tiny and
#                                  small configs on --device cpu, and a configure-only check that .deps/gpu/
#                                  alone satisfies CMake (system /usr ignored)
# Logs go to $OUT (the device tool's folder) or runs/gpu_check/. OWL2_GPU_STAGE2_LAYERS sets the decoder depth
# of the stage-2 proxy (the full stage 2 does not fit one card; see below).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=${1:-run}
DEPS=$ROOT/.deps/gpu  # .gitignore ignores /.deps/
LOG=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$LOG"
SUMMARY=$LOG/summary.txt
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

# Runtime and -dev packages of the build's non-torch dependencies (OpenCV is left out: -DOWL2_WITH_OPENCV=OFF).
PKGS=(libyaml-cpp-dev libyaml-cpp0.7 nlohmann-json3-dev libcli11-dev catch2 libsentencepiece-dev libsentencepiece0
      libprotobuf-lite32 libarchive-dev libarchive13)
# Loaded only if the GPU machine lacks them (ldd says "not found"): libarchive's own dependencies, pkg-config.
FALLBACK_PKGS=(libxml2 libicu72 libnettle8 liblz4-1 libzstd1 liblzma5 libbz2-1.0 libacl1 pkgconf pkgconf-bin
               libpkgconf3)

fetch_deps() {
  command -v apt-get > /dev/null || { echo "deps: needs apt-get (run it on the Debian machine, not the GPU one)"; exit 2; }
  rm -rf "$DEPS"
  mkdir -p "$DEPS/debs" "$DEPS/fallback-debs" "$DEPS/root" "$DEPS/fallback"
  (cd "$DEPS/debs" && apt-get download "${PKGS[@]}") || exit 1
  (cd "$DEPS/fallback-debs" && apt-get download "${FALLBACK_PKGS[@]}") || exit 1
  for d in "$DEPS"/debs/*.deb; do dpkg -x "$d" "$DEPS/root"; done
  for d in "$DEPS"/fallback-debs/*.deb; do dpkg -x "$d" "$DEPS/fallback"; done
  rm -rf "$DEPS/debs" "$DEPS/fallback-debs" "$DEPS/root/usr/share/doc" "$DEPS/fallback/usr/share/doc"
  make_text_data
  tar -C "$(dirname "$DEPS")" -czf "$DEPS.tar.gz" "$(basename "$DEPS")"
  du -sh "$DEPS" "$DEPS.tar.gz"
  echo "deps: done; pass carry: [\".deps/gpu.tar.gz\"] to the device tool"
}

# Text-only training data for the CUDA-vs-CPU training check: the GPU build has no OpenCV, so it cannot read the
# synthetic images; the text-only questions of the synthetic set and its tokenizer travel in .deps/gpu/text/.
make_text_data() {
  local bin=$ROOT/${OWL2_BUILD_DIR:-build}/bin/owl2 out=$DEPS/text
  [ -x "$bin" ] || { echo "deps: $bin missing: run scripts/build.sh first"; exit 1; }
  "$bin" data synth --out "$out/synth" --train 1 --heldout 1 --train-text 600 --heldout-text 12 > /dev/null
  "$bin" tokenizer train --text "$out/synth/corpus.txt" --vocab-size 256 --out "$out/tok" 2> /dev/null
  python3 - "$out/synth/llava_train.json" "$out/train.json" "$out/synth/heldout.jsonl" "$out/heldout.jsonl" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if "image" not in r]
json.dump(rows, open(sys.argv[2], "w"))
held = [l for l in open(sys.argv[3]) if l.strip() and "image" not in json.loads(l)]
open(sys.argv[4], "w").writelines(held)
print("deps: %d text-only training samples, %d text-only held-out questions" % (len(rows), len(held)))
PY
  rm -rf "$out/synth"
}

# 100 optimizer steps of the tiny model on the text-only data, on CUDA and on this machine's CPU cores, from the
# same initial weights and batches: the final losses (mean of the last 10 steps) must agree within 5%.
train_cuda_vs_cpu() {
  local text=$DEPS/text dev
  [ -f "$text/train.json" ] || { note "SKIP train cuda vs cpu: $text/train.json missing (rerun deps)"; return; }
  for dev in cuda cpu; do
    "$BIN"/owl2 train --config configs/model/tiny.yaml --no-resume --set train.device=$dev \
      --set train.out_dir="$LOG/train_$dev" --set train.steps=100 --set train.global_batch_size=16 \
      --set train.micro_batch_size=16 --set train.max_length=128 --set optim.lr=1e-3 --set optim.warmup_steps=10 \
      --set data.tokenizer="$text/tok.model" --set "data.sources=[{path: $text/train.json}]" \
      > "$LOG/train_$dev.log" 2>&1 || { note "FAIL train on $dev: $(tail -3 "$LOG/train_$dev.log" | tr '\n' ' ')"; return; }
  done
  python3 - "$LOG/train_cuda/metrics.jsonl" "$LOG/train_cpu/metrics.jsonl" <<'PY' | tee -a "$SUMMARY"
import json, sys
def tail(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return sum(r["loss"] for r in rows[-10:]) / 10, rows[-1]
(gpu, g), (cpu, c) = tail(sys.argv[1]), tail(sys.argv[2])
rel = abs(gpu - cpu) / cpu
print("train 100 steps text-only tiny: loss cuda %.4f cpu %.4f (%.2f%% apart) %s; step time cuda %.3f s, cpu %.3f s"
      % (gpu, cpu, 100 * rel, "ok" if rel < 0.05 else "FAIL (> 5%)", g.get("step_seconds", float("nan")),
         c.get("step_seconds", float("nan"))))
PY
}

# ZeRO 3 on CUDA (one rank: the sharded blocks, frozen shards, root unit and prefetch run on device tensors)
# against ZeRO 0 from the same weights and batches: 20 steps, a frozen ViT layer and decoder MLP inside the
# sharded blocks and the frozen embeddings outside them; the mean losses of the last 5 steps must agree within 1%.
# With the text-only held-out questions, both evaluate at the end (stage 3: cached decoding through the block
# runners, in lockstep); the answers are counted, not compared (20 steps of two reductions may tip an argmax).
train_zero3_cuda() {
  local text=$DEPS/text stage
  [ -f "$text/train.json" ] || { note "SKIP zero3 on cuda: $text/train.json missing (rerun deps)"; return; }
  local eval_args=()
  if [ -f "$text/heldout.jsonl" ]; then
    eval_args=(--set eval.heldout="$text/heldout.jsonl" --set eval.max_new_tokens=4 --set eval.batch_size=5)
  else
    note "SKIP held-out evaluation at zero 3 on cuda: $text/heldout.jsonl missing (rerun deps)"
  fi
  for stage in 0 3; do
    "$BIN"/owl2 train --config configs/model/tiny.yaml --no-resume --set train.device=cuda \
      --set train.out_dir="$LOG/zero$stage" --set train.steps=20 --set train.global_batch_size=8 \
      --set train.micro_batch_size=4 --set train.max_length=128 --set optim.lr=1e-3 --set optim.warmup_steps=5 \
      --set distributed.zero_stage=$stage --set data.tokenizer="$text/tok.model" \
      --set "data.sources=[{path: $text/train.json}]" \
      --set "freeze=[{pattern: 'model.vision_model.encoder.layers.0.*', trainable: false},"`
           `" {pattern: 'model.layers.1.mlp.*', trainable: false}, {pattern: 'model.embed_tokens.*', trainable: false},"`
           `" {pattern: '*'}]" "${eval_args[@]}" \
      > "$LOG/zero$stage.log" 2>&1 || { note "FAIL zero $stage on cuda: $(tail -3 "$LOG/zero$stage.log" | tr '\n' ' ')"; return; }
  done
  if [ -f "$text/heldout.jsonl" ]; then
    local want got
    want=$(wc -l < "$text/heldout.jsonl")
    got=$(wc -l < "$LOG/zero3/predictions.jsonl" 2>/dev/null || echo 0)
    if [ "$got" = "$want" ]; then note "zero 3 held-out evaluation on cuda: $got answers ok"
    else note "FAIL zero 3 held-out evaluation on cuda: $got answers for $want questions"; fi
  fi
  python3 - "$LOG/zero0/metrics.jsonl" "$LOG/zero3/metrics.jsonl" <<'PY' | tee -a "$SUMMARY"
import json, sys
def tail(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return sum(r["loss"] for r in rows[-5:]) / 5
a, b = tail(sys.argv[1]), tail(sys.argv[2])
rel = abs(a - b) / a
print("zero 3 vs zero 0 on cuda, 20 steps: loss %.4f vs %.4f (%.3f%% apart) %s" % (b, a, 100 * rel, "ok" if rel < 0.01 else "FAIL (> 1%)"))
# Stage 3 builds the model on the host and puts only the shards on the device: the first step's device peak
# (start-up included) is printed beside stage 0's, which moves the whole model there (one rank: no saving).
first = lambda path: json.loads(open(path).readline()).get("device_peak_memory_bytes", float("nan")) / 2**20
print("device peak through step 0: zero 3 %.1f MiB, zero 0 %.1f MiB" % (first(sys.argv[2]), first(sys.argv[1])))
PY
}

# CMake and pkg-config settings that make the build find the unpacked packages under $DEPS.
deps_env() {
  if [ ! -d "$DEPS/root/usr" ] && [ -f "$DEPS.tar.gz" ]; then tar -C "$(dirname "$DEPS")" -xzf "$DEPS.tar.gz"; fi
  [ -d "$DEPS/root/usr" ] || { note "FAIL: $DEPS missing: run scripts/gpu_check.sh deps first and carry .deps/gpu.tar.gz"; exit 2; }
  # The .pc files say prefix=/usr; point them at the unpacked tree (idempotent).
  find "$DEPS/root/usr" -name '*.pc' -exec sed -i "s|^prefix=.*|prefix=$DEPS/root/usr|; s|^libdir=/usr/lib|libdir=$DEPS/root/usr/lib|" {} +
  export PKG_CONFIG_LIBDIR=$DEPS/root/usr/lib/x86_64-linux-gnu/pkgconfig:$DEPS/root/usr/share/pkgconfig
  export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
  PKG_CONFIG_BIN=$(command -v pkg-config || command -v pkgconf || true)
  if [ -z "$PKG_CONFIG_BIN" ]; then
    PKG_CONFIG_BIN=$DEPS/fallback/usr/bin/pkgconf
    export LD_LIBRARY_PATH=$DEPS/fallback/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  export LD_LIBRARY_PATH=$DEPS/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # rpath-link: the linker checks the libraries' own dependencies (libarchive -> libxml2, sentencepiece ->
  # protobuf-lite) at link time; the GPU machine may lack them, so point it at the unpacked trees.
  local rl=$DEPS/root/usr/lib/x86_64-linux-gnu:$DEPS/fallback/usr/lib/x86_64-linux-gnu
  DEPS_CMAKE=(-DCMAKE_PREFIX_PATH="$DEPS/root/usr" -DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG_BIN" -DOWL2_WITH_OPENCV=OFF
              -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$rl")
}

torch_dir() { python3 -c 'import torch, os; print(os.path.join(torch.utils.cmake_prefix_path, "Torch"))'; }

# Benchmark one config; appends the JSON line to bench.jsonl and a line to the summary.
bench() {
  local label=$1; shift
  local out
  if out=$("$BIN"/owl2 bench train "$@" 2> "$LOG/bench_$label.log"); then
    echo "$out" >> "$LOG/bench.jsonl"
    note "$label: $(tail -1 "$LOG/bench_$label.log")"
  else
    note "FAIL $label (exit $?): $(tail -3 "$LOG/bench_$label.log" | tr '\n' ' ')"
  fi
}

case "$MODE" in
  deps) fetch_deps; exit 0 ;;
  run)
    step "machine"
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$LOG/gpu.txt"
    note "card: $(head -1 "$LOG/gpu.txt")"
    grep PRETTY_NAME /etc/os-release || true
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
    step "configure (LibTorch of python3, dependencies from .deps/gpu)"
    deps_env
    BUILD=$ROOT/build-gpu
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
      -DTorch_DIR="$(torch_dir)" "${DEPS_CMAKE[@]}" > "$LOG/configure.log" 2>&1 \
      || { tail -40 "$LOG/configure.log"; note "FAIL: configure (see configure.log)"; exit 1; }
    grep "owl2:" "$LOG/configure.log" | tee -a "$SUMMARY"
    step "build owl2 and owl2_tests"
    if ! cmake --build "$BUILD" -- -j"$(nproc)" > "$LOG/build.log" 2>&1; then
      grep -m 20 -E "error|Error" "$LOG/build.log"
      note "FAIL: build (see build.log)"
      exit 1
    fi
    BIN=$BUILD/bin
    if ldd "$BIN/owl2" | grep -q "not found"; then  # libarchive's dependencies, from Debian, only if missing
      export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$DEPS/fallback/usr/lib/x86_64-linux-gnu
      ldd "$BIN/owl2" | grep "not found" && note "WARN: libraries still missing (above)"
    fi
    DEVICE=cuda
    S1=configs/owl2-7b/pretrain.yaml
    S2=configs/owl2-7b/instruct.yaml
    # Stage 1 trains ViT, abstractor and the image-side copies (about 1.5 B of 8.2 B parameters): bf16 weights
    # plus fp32 masters, their gradients and the AdamW moments of the trainable part fit one card. Stage 2
    # trains everything, about 20 bytes per parameter (bf16 weight and gradient, fp32 master, its gradient,
    # two moments): 8.2 B need 164 GB, more than an H200. The proxy keeps ViT, abstractor, width and recipe
    # and cuts the decoder to 8 layers on 80 GB (0.67 B + 0.236 B per layer) or 16 on 141 GB.
    mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2> /dev/null | head -1 | tr -dc 0-9)
    if [ "${mem_mib:-0}" -gt 120000 ]; then S2_LAYERS=16; else S2_LAYERS=8; fi
    S2_LAYERS=${OWL2_GPU_STAGE2_LAYERS:-$S2_LAYERS}
    # The configs' micro-batches (64 x 256 tokens, 4 x 2048 tokens), 4 micro-batches per optimizer step.
    S1_BATCH=(--set train.global_batch_size=256)
    S2_BATCH=(--set train.global_batch_size=16)
    ;;
  dry-run)
    step "dry run on the CPU: the GPU path with this machine's LibTorch and build/"
    BIN=$ROOT/${OWL2_BUILD_DIR:-build}/bin
    [ -x "$BIN/owl2" ] || { note "FAIL: $BIN/owl2 missing: run scripts/build.sh first"; exit 1; }
    step "configure-only check: .deps/gpu alone satisfies CMake (system prefixes ignored)"
    deps_env
    CHECK_DIR=$(mktemp -d /tmp/owl2_gpu_configure_XXXXXX)
    if cmake -S . -B "$CHECK_DIR" -G Ninja -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DTorch_DIR="$(.venv/bin/python -c \
         'import torch, os; print(os.path.join(torch.utils.cmake_prefix_path, "Torch"))')" "${DEPS_CMAKE[@]}" \
         -DCMAKE_IGNORE_PREFIX_PATH="/usr;/usr/local" > "$LOG/configure.log" 2>&1; then
      note "configure with .deps/gpu only: ok ($(grep -c "$DEPS" "$CHECK_DIR/CMakeCache.txt") cache entries point into it)"
    else
      tail -20 "$LOG/configure.log"
      note "FAIL: configure with .deps/gpu only (see configure.log)"
    fi
    rm -rf "$CHECK_DIR"
    DEVICE=cpu
    # Stand-ins that run in seconds on 2 cores: the tiny model with the 7B stage-1 and stage-2 freezing and
    # the same override keys (its parameter names are those of the 7B model).
    S1=configs/model/tiny.yaml
    S2=configs/model/tiny.yaml
    S2_LAYERS=1
    S1_BATCH=(--set train.micro_batch_size=4 --set train.global_batch_size=8 --set train.max_length=64 --threads 2)
    S2_BATCH=("${S1_BATCH[@]}")
    ;;
  *) echo "usage: scripts/gpu_check.sh deps|run|dry-run"; exit 2 ;;
esac

step "tests: [gpu] (tiny model on $DEVICE) and the precision tests"
# [cli] tests synthesize PNG images, which a build without OpenCV cannot read: left out.
if [ "$DEVICE" = cuda ]; then SPEC="[gpu],[precision],[device]~[cli]"; else SPEC="[precision],[device]~[cli]"; fi
if (cd "$ROOT" && "$BIN"/owl2_tests "$SPEC" > "$LOG/tests.log" 2>&1); then
  note "tests $SPEC: $(grep -E "All tests passed|test cases" "$LOG/tests.log" | tail -1)"
else
  tail -40 "$LOG/tests.log"
  note "FAIL tests $SPEC: $(grep -E "test cases" "$LOG/tests.log" | tail -1)"
fi

step "owl2 train on $DEVICE against the CPU: 100 steps, tiny model, text-only data"
if [ "$DEVICE" = cuda ]; then train_cuda_vs_cpu; else note "SKIP train cuda vs cpu: no GPU in a dry run"; fi

step "ZeRO 3 on $DEVICE (one rank) against ZeRO 0: frozen shards, root unit, prefetch on device tensors"
if [ "$DEVICE" = cuda ]; then train_zero3_cuda; else note "SKIP zero3 on cuda: no GPU in a dry run"; fi

step "trainer MFU, random weights, synthetic full-length batches (model FLOPs: docs/training.md)"
: > "$LOG/bench.jsonl"
FREEZE1=(--set "freeze=[{pattern: 'model.vision_model.*'}, {pattern: 'model.visual_abstractor.*'},"`
            `" {pattern: 'model.layers.*.multiway.1.*'}, {pattern: '*', trainable: false}]")
for prec in bf16 bf16-autocast; do
  bench "stage1_$prec" --config "$S1" --device "$DEVICE" --steps 3 --warmup 2 "${S1_BATCH[@]}" \
    --set train.precision=$prec "${FREEZE1[@]}"
done
bench "stage2_${S2_LAYERS}layers_bf16" --config "$S2" --device "$DEVICE" --steps 3 --warmup 2 "${S2_BATCH[@]}" \
  --set train.precision=bf16 --set model.decoder.num_hidden_layers="$S2_LAYERS"
# LoRA rank 64 against full fine-tuning, step by step in one process (both models on the GPU: half the layers).
bench "stage2_lora64_vs_full" --config "$S2" --device "$DEVICE" --steps 3 --warmup 2 "${S2_BATCH[@]}" \
  --set train.precision=bf16 --set model.decoder.num_hidden_layers="$(( (S2_LAYERS + 1) / 2 ))" \
  --against lora.rank=64 lora.alpha=128

step "packing: padded, grouped and packed batches of the LLaVA-shaped lengths (owl2 bench packing)"
if out=$("$BIN"/owl2 bench packing --device "$DEVICE" --samples 256 --repeats 2 2> "$LOG/bench_packing.log"); then
  echo "$out" >> "$LOG/bench.jsonl"
  note "packing: $(tail -1 "$LOG/bench_packing.log")"
else
  note "FAIL packing (exit $?): $(tail -3 "$LOG/bench_packing.log" | tr '\n' ' ')"
fi

echo
echo "=== summary (also in $SUMMARY)"
cat "$SUMMARY"
