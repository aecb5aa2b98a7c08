#!/usr/bin/env bash
# One device call for the Hopper forward kernel: its tests under every schedule, the mma.sync
# kernel's tests, compute-sanitizer, and the benchmark of the schedules and the mma.sync kernel
# beside torch SDPA's FLASH_ATTENTION and CUDNN_ATTENTION in the same session. Logs under $OUT,
# a short table last.
#
#   BIN_TAR=path/bin.tar.xz   test/bench binaries built on the development machine (bin/ inside;
#                             CUDA archs 90): no build on the device. Without it: build here.
#   STEPS="test sanitize bench ncu"    (default: test sanitize bench)
#   TEST_ENVS="S3 S0 ..."              Hopper test runs, one per entry: knob assignments joined by ':'
#                                      (e.g. ATTND_HOPPER_SCHEDULE=3:ATTND_HOPPER_GRID=all)
#   IMPLS=hopper_s3,...                attn_bench --impls
#   BENCH_ARGS="..."                   extra attn_bench arguments (default: bf16 only)
#   TAG=2026-11-23_h100_hopper_fwd     names the result files
# Run from the repository root.
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
LOG=$OUT/logs
mkdir -p "$LOG"
STEPS=${STEPS:-"test sanitize bench"}
TEST_ENVS=${TEST_ENVS:-"ATTND_HOPPER_SCHEDULE=3 ATTND_HOPPER_SCHEDULE=2 ATTND_HOPPER_SCHEDULER=static ATTND_HOPPER_CONSUMERS=2 ATTND_HOPPER_CONSUMERS=3"}
IMPLS=${IMPLS:-hopper,mma_sync}
TAG=${TAG:-$(date +%Y-%m-%d)_h100_hopper_fwd}
has() { [[ " $STEPS " == *" $1 "* ]]; }
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$LOG/gpu.txt" 2>&1

if [ -n "${BIN_TAR:-}" ]; then
  mkdir -p /tmp/hopper-bin && tar -C /tmp/hopper-bin -xJf "$BIN_TAR" && BIN=/tmp/hopper-bin/bin
  note "binaries: from $BIN_TAR"
else
  BUILD=build-dev
  cmake -S . -B $BUILD -G Ninja -DATTND_WITH_GRPC=OFF -DATTND_GTEST_SOURCE="$PWD/.devdeps/googletest" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DATTND_PTXAS_VERBOSE=ON > "$LOG/cmake.log" 2>&1
  ninja -C $BUILD -j 16 flash_fwd_test flash_fwd_hopper_test flash_fwd_sanitize attn_bench > "$LOG/build.log" 2>&1 \
    && note "build: ok" || { note "build: FAILED"; tail -30 "$LOG/build.log"; }
  BIN=$BUILD/bin
fi

# A gtest binary in 16 shards at once (the float64 oracle is the slow part), each under a time
# limit (a kernel that deadlocks must not eat the call); one summary line.
run_sharded() {  # name binary [env...]
  local name=$1 bin=$2; shift 2
  for i in $(seq 0 15); do
    env "$@" GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 90 "$bin" > "$LOG/$name.shard$i.log" 2>&1 &
  done
  wait
  cat "$LOG"/$name.shard*.log > "$LOG/$name.log"; rm -f "$LOG"/$name.shard*.log
  local pass fail skip
  pass=$(grep -c '^\[       OK \]' "$LOG/$name.log"); fail=$(grep -c '^\[  FAILED  \] [^ ]*\.' "$LOG/$name.log")
  skip=$(grep -c '^\[  SKIPPED \] [^ ]*\.' "$LOG/$name.log")
  note "$name: $pass passed, $fail failed, $skip skipped"
  grep -E '^\[  FAILED  \] [^ ]*\.' "$LOG/$name.log" | sort -u | head -12
  grep -E 'Failure|relative L2|lse entries|unwritten|error' "$LOG/$name.log" | sort | uniq -c | sort -rn | head -8
}

if has test; then
  for e in $TEST_ENVS; do
    run_sharded "hopper_test_$(echo "$e" | sed 's/ATTND_HOPPER_//g; s/[=:]/_/g')" "$BIN/flash_fwd_hopper_test" ${e//:/ }
  done
  run_sharded mma_sync_test "$BIN/flash_fwd_test"
fi

if has sanitize; then
  for tool in memcheck racecheck; do
    extra=""; [ $tool = racecheck ] && extra="--racecheck-report all"
    timeout 240 compute-sanitizer --tool $tool $extra --error-exitcode 1 "$BIN/flash_fwd_sanitize" hopper > "$LOG/$tool.log" 2>&1
    note "$tool (Hopper kernel): rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$LOG/$tool.log" | tail -1)"
  done
  # Where racecheck places its hazards (source lines of the two sides), for the notes.
  grep -E '^=========     (Read|Write) Thread' "$LOG/racecheck.log" | sed -E 's/.* in ([^ ]+)$/\1/' | sort | uniq -c
fi

if has bench; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 200 > "$LOG/clocks_bench.csv" 2>&1 &
  smi=$!
  timeout 400 "$BIN/attn_bench" --impls "$IMPLS" --csv "$OUT/${TAG}_attnd.csv" ${BENCH_ARGS:---dtypes bf16} > "$LOG/bench.log" 2>&1
  note "attn_bench: rc=$?"
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/hopper_compare.py --ours "$OUT/${TAG}_attnd.csv" --out-dir "$OUT" --tag "$TAG" \
    --command "STEPS=\"$STEPS\" IMPLS=$IMPLS TAG=$TAG bash bench/run_hopper_on_device.sh" > "$LOG/compare_table.txt" 2> "$LOG/compare.log"
  note "hopper_compare: rc=$?"
  kill $smi
fi

if has ncu; then
  # Tensor-pipe use, issue slots and stall reasons of the default schedule, one d=128 shape.
  ATTND_HOPPER_SCHEDULE=${NCU_SCHEDULE:-3} timeout 120 ncu --clock-control none --kernel-name regex:flash_fwd_hopper_kernel \
    --launch-count 2 --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis \
    "$BIN/attn_bench" --impls hopper --dtypes bf16 --dims ${NCU_DIM:-128} --seqlens 4096 --warmup 0 --iters 1 --sets 1 > "$LOG/ncu.txt" 2>&1
  note "ncu: rc=$?"
fi

tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$LOG"
echo
printf '%s\n' "${summary[@]}"
has bench && tar -xzOf "$OUT/logs.tar.gz" logs/compare_table.txt 2>/dev/null | tail -20
