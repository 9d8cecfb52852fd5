#!/usr/bin/env bash
# Data-parallel scaling on this machine: the demo stage-1 config (configs/demo/pretrain.yaml) at the same
# global batch on 1 rank (micro-batch 32) and on 2 ranks under torchrun with Gloo (micro-batch 16 each), for
# ZeRO stages 0 and 2; prints step time, time blocked in collectives and the overlap of the gradient
# all-reduce with backward. Needs the demo's data and tokenizer (bash scripts/demo.sh, or OWL2_DEMO=DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
OWL2=${OWL2_BUILD_DIR:-build}/bin/owl2
DEMO=${OWL2_DEMO:-runs/demo}
STEPS=${STEPS:-12}
OUT=${OUT:-runs/bench_distributed}
# Intra-op threads per rank. 1 by default: on a loaded machine 2 OpenMP threads in one process can be many
# times slower than 1 (spinning threads that lose their core), which would flatter the 2-rank run.
THREADS=${THREADS:-1}
# The tiny model's 3 MB of gradients fit one default 25 MB bucket, which can only start when backward ends:
# smaller buckets let the all-reduce of the last layers' gradients run while backward continues.
BUCKET_MB=${BUCKET_MB:-0.25}
rm -rf "$OUT"
common=(--config configs/demo/pretrain.yaml --set train.steps=$STEPS --set train.log_every=1000
        --set train.global_batch_size=32 --set train.micro_batch_size=32
        --set data.num_workers=1 --set "data.tokenizer=$DEMO/tokenizer.model"
        --set "data.sources=[{path: $DEMO/data/pretrain}]")
OMP_NUM_THREADS=$THREADS "$OWL2" train "${common[@]}" --set train.out_dir=$OUT/w1 2> "$OUT.w1.log"
for z in 0 2; do
  OMP_NUM_THREADS=$THREADS .venv/bin/torchrun --standalone --nproc-per-node 2 --no-python "$OWL2" train \
    "${common[@]}" --set train.micro_batch_size=16 --set distributed.zero_stage=$z --set distributed.bucket_mb=$BUCKET_MB \
    --set train.out_dir=$OUT/w2z$z 2> "$OUT.w2z$z.log"
done
.venv/bin/python - "$OUT" <<'PY'
import json, re, sys, statistics as st
out = sys.argv[1]
def rows(path):
    r = [json.loads(l) for l in open(path)]
    return r[2:]  # the first steps warm up allocators and threads
def calib(log):
    m = re.search(r"without overlap \(calibration\): ([0-9.]+) s", open(log).read())
    return float(m.group(1)) if m else None
base = st.mean(r["step_seconds"] for r in rows(f"{out}/w1/metrics.jsonl"))
print(f"{'run':<18}{'step s':>8}{'speed-up':>10}{'comm wait s':>13}{'comm share':>12}{'grad wait s':>13}"
      f"{'all-reduce alone s':>20}{'overlap':>9}")
print(f"{'1 rank':<18}{base:>8.3f}{1:>10.2f}" + "".join(f"{'-':>{w}}" for w in (13, 12, 13, 20, 9)))
for z in (0, 2):
    r0 = rows(f"{out}/w2z{z}/metrics.jsonl")
    step = st.mean(r["step_seconds"] for r in r0)
    wait = st.mean(r["comm_wait_s"] for r in r0)
    grad = st.mean(r["grad_wait_s"] for r in r0)
    alone = calib(f"{out}.w2z{z}.log") if z == 0 else None
    overlap = f"{max(0.0, 1 - grad / alone):.0%}" if alone else "-"
    print(f"{f'2 ranks, ZeRO {z}':<18}{step:>8.3f}{base / step:>10.2f}{wait:>13.4f}{wait / step:>12.0%}{grad:>13.4f}"
          f"{(f'{alone:.4f}' if alone else '-'):>20}{overlap:>9}")
PY
