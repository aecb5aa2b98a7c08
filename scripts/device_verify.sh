#!/usr/bin/env bash
# One device call that checks merged main on the GPU: every GPU test binary (kernels: mma.sync and
# Hopper forward, backward; CUDA backend; engine), the daemon answering checked forwards and
# backwards on --backend=cuda, the pool cap turning a too-large request into RESOURCE_EXHAUSTED
# while the daemon keeps serving, attnd under compute-sanitizer memcheck through a short checked
# load, and the engine benchmark (bench/engine/run_on_device.sh).
#
# Built on the development machine (gRPC is not on the GPU machine), then bundled:
#   source /work/ccache.env; cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
#     $ATTND_CCACHE_ARGS -DCMAKE_CUDA_ARCHITECTURES=90
#   ninja -C build-dev attnd attn_loadgen flash_fwd_test flash_fwd_hopper_test flash_bwd_test \
#     cuda_backend_test flash_bwd_backend_test cuda_engine_test
#   ../shared/tools/device-bundle .devbundle build-dev/bin/{attnd,attn_loadgen,flash_fwd_test,...}
#   strip .devbundle/bin/*; mkdir -p .devbundle-verify && tar -cJf .devbundle-verify/bundle.tar.xz .devbundle
# Device call (carry .devbundle-verify): bash scripts/device_verify.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
logs=$(mktemp -d /tmp/verify.XXXX)
tar -C /tmp -xJf .devbundle-verify/bundle.tar.xz && source /tmp/.devbundle/env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
rc=0
summary=()
note() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }

# 1. GPU test binaries.
for t in flash_fwd_test flash_fwd_hopper_test flash_bwd_test cuda_backend_test flash_bwd_backend_test cuda_engine_test; do
  timeout 240 "$t" > "$logs/$t.log" 2>&1; code=$?
  [[ $code == 0 ]] || rc=1
  note "$t" "exit $code $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$logs/$t.log" | tr '\n' ' ')"
done
grep -hE '^\[  FAILED' "$logs"/*.log | head -20

daemon_up() {  # log file
  for _ in $(seq 150); do grep -q "attnd listening" "$1" && return 0; sleep 0.2; done
  return 1
}
status_of() { python3 -c "import json,sys; d=json.load(open('$1')); print('ok=%s errors=%s codes=%s checked=%s mismatches=%s' % (d.get('ok'), d.get('errors'), d.get('errors_by_code'), d.get('checked'), d.get('mismatches')))" 2>/dev/null; }

# 2. The pool cap: a 64 MiB-input request on a 48 MiB pool is refused, small ones keep passing.
attnd --backend=cuda --listen=127.0.0.1:7400 --workers=64 --gpu_memory_bytes=50331648 > "$logs/attnd_cap.log" 2>&1 &
daemon=$!
if daemon_up "$logs/attnd_cap.log"; then
  attn_loadgen --target=127.0.0.1:7400 --dtype=bf16 --seqlen_q=4096 --heads_q=16 --head_dim=128 --requests=4 \
    --concurrency=2 --progress=false --json > "$logs/cap_big.json" 2> "$logs/cap_big.err"
  note "cap: too-large requests" "$(status_of "$logs/cap_big.json")"
  attn_loadgen --target=127.0.0.1:7400 --dtype=bf16 --seqlen_q=256 --heads_q=16 --head_dim=128 --requests=64 \
    --concurrency=8 --check --progress=false --json > "$logs/cap_small.json" 2> "$logs/cap_small.err" || rc=1
  note "cap: small requests afterwards" "$(status_of "$logs/cap_small.json")"
  grep -o 'RESOURCE_EXHAUSTED[^"]*' "$logs/cap_big.json" | head -1
  kill -TERM $daemon; wait $daemon; note "cap: attnd exit after SIGTERM" "$?"
else
  rc=1; note "cap" "attnd did not start"; tail -5 "$logs/attnd_cap.log"
fi

# 3. attnd under compute-sanitizer memcheck, a short checked load (forward and backward, batched).
compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
  attnd --backend=cuda --listen=127.0.0.1:7410 --workers=64 --max_queue_delay_us=500 > "$logs/attnd_memcheck.log" 2>&1 &
daemon=$!
if daemon_up "$logs/attnd_memcheck.log"; then
  while read -r name args; do
    attn_loadgen --target=127.0.0.1:7410 --check --progress=false --json $args > "$logs/mc_$name.json" 2> "$logs/mc_$name.err" || rc=1
    note "memcheck load: $name" "$(status_of "$logs/mc_$name.json")"
  done <<'CASES'
fwd_batched    --dtype=bf16 --batch=1 --seqlen_q=128 --heads_q=16 --head_dim=128 --requests=96 --concurrency=16 --check_every=4
fwd_gqa_causal --dtype=fp16 --batch=2 --seqlen_q=300 --seqlen_k=500 --heads_q=8 --heads_kv=2 --head_dim=64 --causal --requests=8 --concurrency=4
bwd_varlen     --direction=backward --dtype=bf16 --varlen --batch=3 --seqlen_q=257 --heads_q=4 --head_dim=128 --requests=6 --concurrency=3
CASES
  kill -TERM $daemon; wait $daemon; code=$?
  [[ $code == 0 ]] || rc=1
  note "memcheck: attnd exit" "$code; $(grep -E 'ERROR SUMMARY' "$logs/attnd_memcheck.log" | tail -1)"
else
  rc=1; note "memcheck" "attnd did not start"; tail -5 "$logs/attnd_memcheck.log"
fi

# 4. The engine benchmark (issue 5), with its own table.
mkdir -p /tmp/engine_out
cp bench/engine/run_on_device.sh /tmp/engine_run.sh
SKIP_TESTS=1 STEP_S=${STEP_S:-2} OUT=/tmp/engine_out bash /tmp/engine_run.sh > "$logs/engine.txt" 2>&1 || echo "(engine script exit $?)"
cp /tmp/engine_out/engine_results.tar.gz "$OUT/" 2>/dev/null
tar -C "$logs" -czf "$OUT/verify_logs.tar.gz" .
cat "$logs/engine.txt"
echo
printf '%s\n' "${summary[@]}"
exit $rc
