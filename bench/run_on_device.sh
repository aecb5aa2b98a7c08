#!/usr/bin/env bash
# One device call: build the kernels, their tests and the benchmark; run the GPU tests, the
# sanitizers, attn_bench and the SDPA comparison; logs and results under $OUT; a short table last.
#
#   STEPS="build test sanitize bench sdpa sass ncu"   (default: all but ncu)
#   TAG=2026-11-23_h100                                 (names the result files)
#   BENCH_ARGS="..."                                    (extra attn_bench arguments)
# Run from the repository root, with .devdeps/googletest carried along (see bench/NOTES.md).
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT/logs"
STEPS=${STEPS:-"build test sanitize bench sdpa sass"}
TAG=${TAG:-$(date +%Y-%m-%d)_h100}
BUILD=build-dev
LOG=$OUT/logs
has() { [[ " $STEPS " == *" $1 "* ]]; }
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$LOG/gpu.txt" 2>&1

if has build; then
  cmake -S . -B $BUILD -G Ninja -DATTND_WITH_GRPC=OFF -DATTND_GTEST_SOURCE="$PWD/.devdeps/googletest" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DATTND_PTXAS_VERBOSE=ON > "$LOG/cmake.log" 2>&1
  if ninja -C $BUILD -j 16 flash_fwd_test flash_fwd_sanitize attn_bench > "$LOG/build.log" 2>&1; then
    note "build: ok ($(grep -c 'spill stores' "$LOG/build.log") kernels; spilling: $(grep 'spill stores' "$LOG/build.log" | grep -vc ' 0 bytes spill stores'))"
  else
    note "build: FAILED (tail below)"; tail -30 "$LOG/build.log"
  fi
fi

if has test; then
  # The gtest binaries directly, in 16 shards at once (the float64 oracle is the slow part); then
  # ctest over the same binaries (label gpu) as a check of the registration.
  for bin in ${TEST_BINS:-flash_fwd_test}; do
    for i in $(seq 0 15); do
      GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i $BUILD/bin/$bin > "$LOG/$bin.shard$i.log" 2>&1 &
    done
    wait
    cat "$LOG"/$bin.shard*.log > "$LOG/$bin.log"; rm -f "$LOG"/$bin.shard*.log
    pass=$(grep -c '^\[       OK \]' "$LOG/$bin.log"); fail=$(grep -c '^\[  FAILED  \] [^ ]*\.' "$LOG/$bin.log")
    skip=$(grep -c '^\[  SKIPPED \] [^ ]*\.' "$LOG/$bin.log")
    note "$bin: $pass passed, $fail failed, $skip skipped"
    grep -E '^\[  FAILED  \] [^ ]*\.' "$LOG/$bin.log" | sort -u | head -20
  done
  (cd $BUILD && ctest -L gpu -j 16 --timeout 600 --output-on-failure) > "$LOG/ctest.log" 2>&1
  note "ctest -L gpu: $(grep -E 'tests passed|tests failed|Error' "$LOG/ctest.log" | head -1)"
  grep -q 'Syntax Error' "$LOG/ctest.log" && sed -n '1,9p' $BUILD/tests/kernels/flash_fwd_test_*_tests.cmake | cut -c1-400 > "$LOG/ctest_discovery_head.txt"
fi

if has sanitize; then
  compute-sanitizer --tool memcheck --error-exitcode 1 $BUILD/bin/flash_fwd_sanitize > "$LOG/memcheck.log" 2>&1
  note "memcheck: rc=$? $(grep -E 'ERROR SUMMARY' "$LOG/memcheck.log" | tail -1)"
  compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 1 $BUILD/bin/flash_fwd_sanitize > "$LOG/racecheck.log" 2>&1
  note "racecheck: rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$LOG/racecheck.log" | tail -1)"
fi

if has sass; then
  for f in $BUILD/kernels/CMakeFiles/attnd_kernels.dir/src/flash_fwd_hdim{64,128}.cu.o; do
    cuobjdump -sass "$f" > "$LOG/$(basename "$f" .cu.o).sass" 2>&1
  done
  note "sass: hdim128 $(grep -c HMMA $LOG/flash_fwd_hdim128.sass) HMMA, $(grep -cE 'LDL|STL' $LOG/flash_fwd_hdim128.sass) LDL/STL"
fi

if has bench || has sdpa; then  # SM clock / power / throttle reasons during the timed runs
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 200 > "$LOG/clocks_bench.csv" 2>&1 &
  smi_bench=$!
fi

if has bench; then
  $BUILD/bin/attn_bench --csv "$OUT/${TAG}_attnd.csv" ${BENCH_ARGS:-} > "$LOG/bench.log" 2>&1
  note "attn_bench: rc=$?"
fi

if has bundle && [ -f .devbundle-fwd/bundle.tar.xz ]; then
  # Daemon-side programs built on the development machine (gRPC/Abseil there), bundled with their
  # shared libraries by ../shared/tools/device-bundle and packed as .devbundle-fwd/bundle.tar.xz
  # (carried): the CUDA backend's tests, then the daemon on the GPU (--backend=cuda) answering
  # attn_loadgen, which checks every response against its own CPU backend (--check).
  tar -C /tmp -xJf .devbundle-fwd/bundle.tar.xz
  ( source /tmp/devbundle/env.sh
    cuda_backend_test
    attnd --backend=cuda --listen=127.0.0.1:7100 > "$LOG/attnd.log" 2>&1 &
    daemon=$!
    rc=0
    while read -r args; do
      echo "== attn_loadgen $args"
      attn_loadgen --target=127.0.0.1:7100 --check --concurrency=2 $args || rc=1
    done <<'CASES'
--dtype=bf16 --batch=2 --seqlen_q=1000 --heads_q=8 --heads_kv=2 --head_dim=128 --causal --requests=8
--dtype=fp16 --varlen --batch=4 --seqlen_q=700 --heads_q=4 --head_dim=64 --requests=8
--dtype=fp32 --batch=1 --seqlen_q=300 --seqlen_k=500 --heads_q=4 --heads_kv=1 --head_dim=96 --causal --requests=4
--dtype=bf16 --varlen --batch=3 --seqlen_q=257 --heads_q=2 --head_dim=256 --causal --requests=4
--dtype=bf16 --batch=1 --seqlen_q=4096 --heads_q=16 --head_dim=64 --requests=6 --check_every=3
CASES
    kill $daemon; wait $daemon
    exit $rc ) > "$LOG/bundle_tests.log" 2>&1
  rc=$?
  note "bundled tests + daemon e2e: rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$LOG/bundle_tests.log" | tr '\n' ' ')"
  grep -iE 'check|mismatch|error|fail' "$LOG/bundle_tests.log" | grep -v '^\[' | head -20
fi

if has diag; then
  # Clock/power trace while repeating one shape, to tell throttling from kernel effects.
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 100 > "$LOG/clocks.csv" 2>&1 &
  smi=$!
  for sets in 1 3; do
    $BUILD/bin/attn_bench --dtypes bf16 --dims 128 --causal 0 --seqlens 2048,4096,8192,4096,2048,4096 --iters 50 --sets $sets >> "$LOG/diag.csv" 2>> "$LOG/diag.log"
  done
  kill $smi
  note "diag: done"
  cat "$LOG/diag.log"
fi

if has ncu; then
  # One causal and one non-causal d=128 shape, counters for tensor pipe use and stall reasons.
  ncu --clock-control none --kernel-name regex:flash_fwd_kernel --launch-count 2 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section SchedulerStats --section MemoryWorkloadAnalysis \
    $BUILD/bin/attn_bench --dtypes bf16 --dims ${NCU_DIM:-128} --seqlens 4096 --warmup 0 --iters 1 --sets 1 > "$LOG/ncu.txt" 2>&1
  note "ncu: rc=$?"
fi

if has sdpa; then
  PYTHONUNBUFFERED=1 python3 bench/sdpa_compare.py --ours "$OUT/${TAG}_attnd.csv" --out-dir "$OUT" --tag "${TAG}_fwd" \
    --command "STEPS=\"$STEPS\" TAG=$TAG bash bench/run_on_device.sh" > "$LOG/sdpa_table.txt" 2> "$LOG/sdpa.log"
  note "sdpa_compare: rc=$?"
fi

[ -n "${smi_bench:-}" ] && kill $smi_bench

if has tools; then  # disassemblers for reading SASS on the (GPU-less) development machine
  xz -T4 -c "$(command -v cuobjdump)" > "$OUT/cuobjdump.xz"; xz -T4 -c "$(command -v nvdisasm)" > "$OUT/nvdisasm.xz"
  note "tools: $(ls -la $OUT/*.xz | awk '{print $5, $9}' | tr '\n' ' ')"
fi

tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$LOG"
echo
printf '%s\n' "${summary[@]}"
if has sdpa; then
  tar -xzOf "$OUT/logs.tar.gz" logs/sdpa_table.txt 2>/dev/null | tail -40
elif has bench; then
  tar -xzOf "$OUT/logs.tar.gz" logs/bench.log 2>/dev/null | tail -50
fi
