#!/usr/bin/env bash
# The README's first command: set everything up, build, and run the main job on the embedded default.
# Today that is the most complete pipeline that exists: resolve and validate the demo configs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
OWL2=${OWL2_BUILD_DIR:-build}/bin/owl2
echo "[demo] resolved demo config (configs/demo/pretrain.yaml):"
"$OWL2" config show configs/demo/pretrain.yaml
"$OWL2" config check configs/model/owl2-7b.yaml
