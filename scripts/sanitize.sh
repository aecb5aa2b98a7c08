#!/usr/bin/env bash
# The test suite under sanitizers, for CI (scripts/test.sh runs it after the normal suite):
#   address  ASan + UBSan + LeakSanitizer build of the CPU path (no CUDA): CPU backend, batcher,
#            validation, service and daemon, clients, limits, auth, shutdown, fuzz replays.
#   thread   TSan build of the daemon and the batcher: batcher, worker pool, service, daemon,
#            clients, limits, shutdown under load.
# Both also soak their own attnd for ${ATTND_SANITIZER_SOAK_SECONDS:-20} s with SIGTERM rounds
# (attnd_soak): a report from the daemon makes it exit non-zero, which fails the soak.
# Usage: scripts/sanitize.sh [address|thread]... (default: both). Builds go to
# ${ATTND_BUILD_DIR:-build}-asan / -tsan; ATTND_SANITIZERS=0 skips everything. Sanitizer reports fail
# the test that made them; suppressions (third-party code only) live in tests/sanitizers/.
# -O1 -g1 (line tables): half the compile time of -O2 -g, and stack traces still name lines.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${ATTND_SANITIZERS:-1} == 0 ]]; then echo "sanitize: skipped (ATTND_SANITIZERS=0)"; exit 0; fi
modes=("$@")
((${#modes[@]})) || modes=(address thread)
base=${ATTND_BUILD_DIR:-build}
jobs=${ATTND_JOBS:-$(( $(nproc) + 1 ))}
supp=$PWD/tests/sanitizers

# What each build compiles. ctest runs every test of those programs: a program not built shows up
# as TARGET_NOT_BUILT, excluded below with the tests that are not C++ programs of ours.
address_targets=(cpu_backend_test engine_test request_validation_test attention_server_test attnd_daemon_test attnd
  service_metrics_test client_unit_test client_end_to_end_test client_scale_out_test token_file_test auth_test
  limits_test shutdown_under_load_test request_validation_fuzz_replay tensor_decoding_fuzz_replay attnd_soak)
address_skip='_NOT_BUILT|python|prometheus|deploy|plot_sweep'
thread_targets=(engine_test attention_server_test attnd_daemon_test attnd client_end_to_end_test client_scale_out_test
  limits_test shutdown_under_load_test attnd_soak)
thread_skip='_NOT_BUILT|python|prometheus|deploy|plot_sweep|fuzz_replay'

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$supp/tsan.supp"

for mode in "${modes[@]}"; do
  case $mode in
    address) build=$base-asan; targets=("${address_targets[@]}"); skip=$address_skip ;;
    thread) build=$base-tsan; targets=("${thread_targets[@]}"); skip=$thread_skip ;;
    *) echo "sanitize: unknown mode '$mode' (address or thread)" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DATTND_WITH_CUDA=OFF \
    -DATTND_SANITIZE="$mode" -DATTND_SOAK_SECONDS="${ATTND_SANITIZER_SOAK_SECONDS:-20}" -DATTND_SOAK_RSS_LIMIT=$((1 << 30)) ${ATTND_CMAKE_ARGS:-} >/dev/null
  ninja -C "$build" -j "$jobs" "${targets[@]}"
  built=$(date +%s)
  # Sanitized code runs several times slower: longer per-test timeouts, same parallelism.
  ctest --test-dir "$build" --output-on-failure --timeout 600 -j "$(nproc)" -E "$skip" -LE gpu
  echo "sanitize: $mode: build $((built - start)) s, tests $(( $(date +%s) - built )) s"
done
