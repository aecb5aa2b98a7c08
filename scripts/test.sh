#!/usr/bin/env bash
# One command for a newcomer and for CI: install, build, run every test.
# GPU tests (ctest label gpu) skip cleanly on machines without a GPU and show as "Not Run".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
build=${ATTND_BUILD_DIR:-build}
cd "$build"
ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@"
