#!/usr/bin/env bash
# Fuzzes request validation and tensor decoding (tests/fuzz) for a bounded time: builds the
# libFuzzer targets with clang-14 + ASan + UBSan into ${ATTND_FUZZ_BUILD_DIR:-build-fuzz} and runs
# each for ${ATTND_FUZZ_SECONDS:-45} s (the two in parallel), starting from a copy of its seed corpus
# and every kept crash input. A crash fails the script and leaves the input under
# BUILD/fuzz-work/TARGET/artifacts/: fix the bug, then copy the input to
# tests/fuzz/regressions/TARGET/ so that the normal suite replays it from then on.
# ATTND_FUZZ_SECONDS=0 skips fuzzing. Extra CMake arguments: ATTND_CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${ATTND_FUZZ_SECONDS:-45}
if [[ $seconds == 0 ]]; then echo "fuzz: skipped (ATTND_FUZZ_SECONDS=0)"; exit 0; fi
build=${ATTND_FUZZ_BUILD_DIR:-build-fuzz}
targets=(request_validation tensor_decoding)

CC=clang-14 CXX=clang++-14 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" \
  -DATTND_WITH_CUDA=OFF -DATTND_SANITIZE=fuzzer ${ATTND_CMAKE_ARGS:-} >/dev/null
ninja -C "$build" -j "${ATTND_JOBS:-$(( $(nproc) + 1 ))}" "${targets[@]/%/_fuzzer}"

pids=()
for t in "${targets[@]}"; do
  work=$build/fuzz-work/$t
  rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
  cp tests/fuzz/corpus/$t/* "$work/corpus/"
  # New inputs go to the first directory (the copy); the kept crash inputs are read only.
  "$build/bin/${t}_fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" "tests/fuzz/regressions/$t" >"$work/log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/fuzz-work/$t/log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $t: no crash in ${seconds} s, $runs inputs"
  else
    failed=1
    echo "fuzz: $t FAILED; the log ends:"
    tail -n 30 "$build/fuzz-work/$t/log"
    echo "fuzz: crash inputs: $(ls "$build/fuzz-work/$t/artifacts/")"
  fi
done
exit "$failed"
