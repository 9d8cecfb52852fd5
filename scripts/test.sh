#!/usr/bin/env bash
# The README's second command: set everything up, build, and run the whole test suite with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
echo "[test] running the test suite"
ctest --test-dir "${OWL2_BUILD_DIR:-build}" -j"${OWL2_TEST_JOBS:-2}" --output-on-failure "$@"
