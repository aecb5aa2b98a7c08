#!/usr/bin/env bash
# One device call for the backward (issue 4): build its library, tests and benchmark; run the GPU
# tests, the sanitizers, the benchmark and the SDPA comparison; logs under $OUT (logs_bwd.tar.gz),
# results (CSV, table, PNG) in $OUT; a short summary and the table last.
#
#   STEPS="build test sanitize sass bench det variants stalls sdpa ncu"
#                                                     (default: build test sanitize sass bench sdpa)
#   TAG=2026-11-23_h100                               (names the result files)
#   BENCH_ARGS="..."                                  (extra attn_bench_bwd arguments)
#   BIN=dir                                           (prebuilt flash_bwd_test, attn_bench_bwd: no build step)
#   VARIANTS="label|ENV=1 ENV2=0|attn_bench_bwd args" (one per line; step "variants": one CSV each and
#                                                      a table of harmonic means per configuration)
#   VARIANTS_FILE=path                                (the same list from a file)
#   SUFFIX=_final                                     (the SDPA table is ${TAG}_bwd${SUFFIX}.md/.csv/png)
# Run from the repository root with .devdeps/googletest carried along:
#   run(command="STEPS='...' bash bench/run_bwd_on_device.sh", carry=[".devdeps"])
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
LOG=$OUT/logs_bwd
mkdir -p "$LOG"
STEPS=${STEPS:-"build test sanitize sass bench sdpa"}
TAG=${TAG:-$(date +%Y-%m-%d)_h100}
BUILD=build-dev-bwd
BIN=${BIN:-$BUILD/bin}
if [[ -z "${VARIANTS:-}" && -n "${VARIANTS_FILE:-}" ]]; then VARIANTS=$(cat "$VARIANTS_FILE"); fi
has() { [[ " $STEPS " == *" $1 "* ]]; }
summary=()
note() { summary+=("$1"); echo "== $1"; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$LOG/gpu.txt" 2>&1

if has build; then
  cmake -S . -B $BUILD -G Ninja -DATTND_WITH_GRPC=OFF -DATTND_GTEST_SOURCE="$PWD/.devdeps/googletest" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DATTND_PTXAS_VERBOSE=ON > "$LOG/cmake.log" 2>&1
  if ninja -C $BUILD -j 16 flash_bwd_test attn_bench_bwd > "$LOG/build.log" 2>&1; then
    note "build: ok at $(elapsed); flash_bwd kernels spilling: $(grep -A2 'flash_bwd_kernel' "$LOG/build.log" | grep 'spill stores' | grep -vc ' 0 bytes spill stores')"
  else
    note "build: FAILED (tail below)"; tail -30 "$LOG/build.log"
  fi
fi

if has test; then
  # The float64 oracle dominates: 8 shards in parallel, one log each.
  pids=()
  for i in 0 1 2 3 4 5 6 7; do
    GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 280 $BIN/flash_bwd_test > "$LOG/test_$i.log" 2>&1 &
    pids+=($!)
  done
  rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  cat "$LOG"/test_?.log > "$LOG/test.log"
  note "tests (rc=$rc, $(elapsed)): $(grep -c '^\[       OK \]' "$LOG/test.log") ok, $(grep -c '^\[  FAILED  \] [A-Za-z]' "$LOG/test.log") failed lines, $(grep -c '^\[  SKIPPED \] [A-Za-z]' "$LOG/test.log") skipped"
  grep -E '^\[  FAILED  \]|Failure|Expected|Which is|seed' "$LOG/test.log" | head -40
  grep -E 'rel L2|bitwise' "$LOG/test.log" > "$LOG/errors.txt"
  # Largest relative L2 error per element type over all cases.
  python3 - "$LOG/errors.txt" <<'PY'
import re, sys
worst = {}
for line in open(sys.argv[1]):
    m = re.search(r"\[(\w+) .*rel L2: dQ (\S+) dK (\S+) dV (\S+)", line)
    if m:
        e = max(float(x) for x in m.groups()[1:])
        if e > worst.get(m.group(1), (0, ""))[0]:
            worst[m.group(1)] = (e, line.strip())
    elif "bitwise" in line:
        print(line.strip())
for k, (e, l) in sorted(worst.items()):
    print(f"worst {k}: {e:.2e}  {l}")
PY
fi

if has sanitize; then
  f='--gtest_filter=FlashBwdSmall.*'
  compute-sanitizer --tool memcheck --error-exitcode 1 $BIN/flash_bwd_test "$f" > "$LOG/memcheck.log" 2>&1
  note "memcheck: rc=$? $(grep -E 'ERROR SUMMARY' "$LOG/memcheck.log" | tail -1) ($(elapsed))"
  compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 1 $BIN/flash_bwd_test "$f" > "$LOG/racecheck.log" 2>&1
  note "racecheck: rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$LOG/racecheck.log" | tail -1) ($(elapsed))"
  compute-sanitizer --tool synccheck --error-exitcode 1 $BIN/flash_bwd_test "$f" > "$LOG/synccheck.log" 2>&1
  note "synccheck: rc=$? $(grep -E 'ERROR SUMMARY' "$LOG/synccheck.log" | tail -1) ($(elapsed))"
fi

if has sass; then
  for d in 64 128; do
    o=$BUILD/kernels/CMakeFiles/attnd_kernels_bwd.dir/src/flash_bwd_hdim$d.cu.o
    cuobjdump -sass "$o" > "$LOG/flash_bwd_hdim$d.sass" 2>&1
    note "sass d=$d: $(grep -c HMMA "$LOG/flash_bwd_hdim$d.sass") HMMA, $(grep -cE 'LDL|STL' "$LOG/flash_bwd_hdim$d.sass") LDL/STL, $(grep -c 'LDSM' "$LOG/flash_bwd_hdim$d.sass") LDSM, $(grep -c 'BAR.SYNC' "$LOG/flash_bwd_hdim$d.sass") BAR"
  done
fi

if has bench; then
  $BIN/attn_bench_bwd --csv "$OUT/${TAG}_bwd_attnd.csv" ${BENCH_ARGS:-} > "$LOG/bench.log" 2>&1
  note "attn_bench_bwd: rc=$? ($(elapsed))"
  cat "$LOG/bench.log"
fi

if has det; then
  # Deterministic mode (dQ slices summed in a fixed order) on a few shapes.
  $BIN/attn_bench_bwd --deterministic 1 --causal 0,1 --csv "$OUT/${TAG}_bwd_det.csv" ${DET_ARGS:---seqlens 1024,4096,16384} > "$LOG/bench_det.log" 2>&1
  note "attn_bench_bwd --deterministic 1: rc=$? ($(elapsed))"
  cat "$LOG/bench_det.log"
fi

if has variants; then
  # The same benchmark under several configurations (environment knobs of the library).
  while IFS='|' read -r label envs bargs; do
    [[ -z "$label" ]] && continue
    env $envs $BIN/attn_bench_bwd $bargs --csv "$OUT/${TAG}_bwd_var_${label}.csv" > "$LOG/bench_var_${label}.log" 2>&1
    note "variant $label ($envs; $bargs): rc=$? ($(elapsed))"
  done <<< "$VARIANTS"
  python3 - "$OUT" "$TAG" <<'PY' | tee "$LOG/variants.txt"
import csv, glob, os, sys
out, tag = sys.argv[1], sys.argv[2]
print("| variant | dtype | d | causal | TFLOP/s per seqlen | hmean |")
print("|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, f"{tag}_bwd_var_*.csv")), key=os.path.getmtime):
    label = os.path.basename(path)[len(f"{tag}_bwd_var_"):-4]
    groups = {}
    for r in csv.DictReader(open(path)):
        groups.setdefault((r["dtype"], r["head_dim"], r["causal"]), []).append((int(r["seqlen"]), float(r["tflops"])))
    for (dt, d, c), xs in sorted(groups.items()):
        xs.sort()
        h = len(xs) / sum(1 / t for _, t in xs)
        print(f"| {label} | {dt} | {d} | {c} | {' '.join(f'{t:.1f}' for _, t in xs)} | {h:.1f} |")
PY
fi

if has stalls; then
  # Stall reasons, tensor pipe and shared-memory bank conflicts of the main kernel, d=128 N=4096.
  for v in ${STALL_CAUSAL:-0}; do
    ncu --clock-control none --kernel-name regex:flash_bwd_kernel --launch-skip 1 --launch-count 1 \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum' \
      $BIN/attn_bench_bwd --dims ${STALL_DIM:-128} --causal $v --seqlens 4096 --warmup 1 --iters 1 --sets 1 > "$LOG/stalls_$v.txt" 2>&1
    note "stalls (causal=$v): rc=$? ($(elapsed))"
    grep -E 'stalled|bank|wavefronts|hmma|duration' "$LOG/stalls_$v.txt" | awk '$NF+0 > 0.05 || /bank|wavefronts|hmma|duration/' | sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | awk '{printf "  %-60s %s\n", $1, $NF}'
  done
fi

if has ncu; then
  # Where the time goes, bf16 N=4096 non-causal: the main kernel in detail (d=128, d=64), then the
  # durations of every kernel of one FlashBwd call.
  for d in ${NCU_DIMS:-128 64}; do
    ncu --clock-control none --kernel-name regex:flash_bwd_kernel --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
      --section InstructionStats --section LaunchStats \
      $BIN/attn_bench_bwd --dims $d --causal 0 --seqlens 4096 --warmup 1 --iters 1 --sets 1 > "$LOG/ncu_d$d.txt" 2>&1
    note "ncu d=$d: rc=$? ($(elapsed))"
    grep -E 'Duration|Compute \(SM\) Throughput|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall|Bank' "$LOG/ncu_d$d.txt" | head -20
  done
  ncu --clock-control none --kernel-name regex:'flash_bwd|preprocess|split_sum' --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight $BIN/attn_bench_bwd --dims 128 --causal 0 --seqlens 4096 --warmup 1 --iters 1 --sets 1 \
    > "$LOG/ncu_all.txt" 2>&1
  note "ncu all kernels: rc=$? ($(elapsed))"
  grep -E '^  [a-zA-Z_ ]+.*\(|Duration' "$LOG/ncu_all.txt" | cut -c1-120
fi

if has sdpa; then
  PYTHONUNBUFFERED=1 python3 bench/sdpa_compare_bwd.py --ours "$OUT/${TAG}_bwd_attnd.csv" --out-dir "$OUT" --tag "${TAG}_bwd${SUFFIX:-}" \
    --command "STEPS=\"$STEPS\" TAG=$TAG SUFFIX=${SUFFIX:-} bash bench/run_bwd_on_device.sh  # bench/run_bwd_on_device.sh, device: $(head -2 "$LOG/gpu.txt" | tail -1 | cut -d, -f1)" \
    > "$LOG/sdpa_table.txt" 2> "$LOG/sdpa.log"
  note "sdpa_compare_bwd: rc=$? ($(elapsed))"
  tail -5 "$LOG/sdpa.log"
fi

tar -C "$OUT" -czf "$OUT/logs_bwd.tar.gz" logs_bwd && rm -rf "$LOG"
echo
printf '%s\n' "${summary[@]}"
tar -xzOf "$OUT/logs_bwd.tar.gz" logs_bwd/sdpa_table.txt 2>/dev/null | tail -40 || true
