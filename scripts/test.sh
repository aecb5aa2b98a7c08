#!/usr/bin/env bash
# One command for a newcomer and for CI: install, build, run every test.
# GPU tests (ctest label gpu) skip cleanly on machines without a GPU and show as "Not Run".
# Then the reliability checks of CI (docs/RELIABILITY.md): the suite again under AddressSanitizer +
# UndefinedBehaviorSanitizer and under ThreadSanitizer (scripts/sanitize.sh), and bounded libFuzzer
# runs (scripts/fuzz.sh). ATTND_SANITIZERS=0 and ATTND_FUZZ_SECONDS=0 skip those for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
build=${ATTND_BUILD_DIR:-build}
(cd "$build" && ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@")
bash scripts/sanitize.sh
bash scripts/fuzz.sh
