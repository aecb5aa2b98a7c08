#!/usr/bin/env bash
# Installs the dependencies (Debian packages) and builds attnd into ${ATTND_BUILD_DIR:-build}.
# Used by scripts/demo.sh, scripts/test.sh and the container build, so all three build alike.
# Extra arguments go to ninja (targets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
build=${ATTND_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${ATTND_BUILD_TYPE:-Release} ${ATTND_CMAKE_ARGS:-} >/dev/null
# The CUDA kernels are template-heavy; two jobs per core keeps a 2-core machine busy without swapping.
ninja -C "$build" -j "${ATTND_JOBS:-$(( $(nproc) + 1 ))}" "$@"
