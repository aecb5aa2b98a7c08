#!/usr/bin/env bash
# Builds what bench/engine/run_on_device.sh runs (gRPC programs cannot be built on the GPU machine)
# and leaves the bundle and the script in DEST, ready for one device call that carries DEST's name:
#   bash bench/engine/make_bundle.sh [BUILD_DIR=build-engine] [DEST=/work/main/.devbundle-engine]
#   device call (carry .devbundle-engine):
#     POOL_BENCH=1 STEP_S=2 OUT=$OUT bash .devbundle-engine/run_on_device.sh
set -euo pipefail
build=${1:-build-engine}
dest=${2:-/work/main/.devbundle-engine}
progs=(attnd attn_loadgen cuda_engine_test cuda_backend_test device_pool_bench transport_bench)
source /work/ccache.env
[[ -f $build/build.ninja ]] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release $ATTND_CCACHE_ARGS \
  -DCMAKE_CUDA_ARCHITECTURES=90
nice ninja -C "$build" -j2 "${progs[@]}"
stage=$(mktemp -d /tmp/engine-bundle.XXXX)
/work/shared/tools/device-bundle "$stage/.devbundle" "${progs[@]/#/$build/bin/}"
strip "$stage"/.devbundle/bin/*
mkdir -p "$dest"
tar -C "$stage" -cJf "$dest/bundle.tar.xz" .devbundle
cp bench/engine/run_on_device.sh "$dest/"
rm -rf "$stage"
du -sh "$dest"
