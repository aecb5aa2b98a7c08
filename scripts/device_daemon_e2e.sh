#!/usr/bin/env bash
# On the GPU machine: the daemon-side programs, built on a development machine (which has gRPC)
# and bundled by ../shared/tools/device-bundle into .devbundle (carried with the run):
#   cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90
#   ninja -C build-gpu cuda_backend_test flash_bwd_backend_test attnd attn_loadgen
#   ../shared/tools/device-bundle .devbundle build-gpu/bin/{attnd,attn_loadgen,cuda_backend_test,flash_bwd_backend_test}
#   mkdir -p .devbundle-e2e && tar -cJf .devbundle-e2e/bundle.tar.xz .devbundle   # carry .devbundle-e2e
# Runs the CUDA backend's tests (forward and backward against the CPU backend and the float64
# oracle), then attnd --backend=cuda answering attn_loadgen --check (every checked response is
# compared with attn_loadgen's own CPU backend), forward and backward, through the batcher.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tar -C /tmp -xJf .devbundle-e2e/bundle.tar.xz && source /tmp/.devbundle/env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
rc=0
for t in cuda_backend_test flash_bwd_backend_test; do
  $t > "$OUT/$t.log" 2>&1 || rc=1
  echo "$t: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$t.log" | tr '\n' ' ')"
done
attnd --backend=cuda --listen=127.0.0.1:7100 --workers=64 --metrics_listen=127.0.0.1:7101 > "$OUT/attnd.log" 2>&1 &
daemon=$!
sleep 2
summary=()
while read -r name args; do
  if attn_loadgen --target=127.0.0.1:7100 --check --json $args > "$OUT/lg_$name.json" 2> "$OUT/lg_$name.err"; then s=ok; else s=FAIL; rc=1; fi
  summary+=("$(printf '%-22s %-4s %s' "$name" "$s" "$(python3 -c "import json,sys; d=json.load(open('$OUT/lg_$name.json')); print('req/s=%.1f p50=%.2fms ok=%s checked=%s mismatches=%s max_rel_l2=%s' % (d.get('requests_per_s',0), d.get('latency_ms',{}).get('p50',0), d.get('ok'), d.get('checked'), d.get('mismatches'), d.get('check',{}).get('max_rel_l2') if isinstance(d.get('check'),dict) else d.get('max_rel_l2')))" 2>/dev/null || head -c 300 "$OUT/lg_$name.json")")")
done <<'CASES'
fwd_bf16_gqa_causal   --dtype=bf16 --batch=2 --seqlen_q=1000 --heads_q=8 --heads_kv=2 --head_dim=128 --causal --requests=16 --concurrency=8
fwd_fp16_varlen       --dtype=fp16 --varlen --batch=4 --seqlen_q=700 --heads_q=4 --head_dim=64 --requests=16 --concurrency=8
fwd_fp32_sq_ne_sk     --dtype=fp32 --batch=1 --seqlen_q=300 --seqlen_k=500 --heads_q=4 --heads_kv=1 --head_dim=96 --causal --requests=8
fwd_small_batched     --dtype=bf16 --batch=1 --seqlen_q=128 --heads_q=16 --head_dim=128 --requests=256 --concurrency=64 --check_every=8
bwd_bf16_gqa_causal   --direction=backward --dtype=bf16 --batch=2 --seqlen_q=1000 --heads_q=8 --heads_kv=2 --head_dim=128 --causal --requests=8 --concurrency=4
bwd_fp16_varlen       --direction=backward --dtype=fp16 --varlen --batch=3 --seqlen_q=513 --heads_q=4 --head_dim=64 --requests=8 --concurrency=4
bwd_fp32_sq_gt_sk     --direction=backward --dtype=fp32 --batch=1 --seqlen_q=400 --seqlen_k=250 --heads_q=4 --heads_kv=2 --head_dim=64 --causal --requests=4
bwd_bf16_d256         --direction=backward --dtype=bf16 --batch=1 --seqlen_q=257 --heads_q=2 --head_dim=256 --requests=4
CASES
curl -s 127.0.0.1:7101/metrics 2>/dev/null | grep -E '^attnd_requests_total' > "$OUT/metrics.txt" || python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:7101/metrics').read().decode())" | grep -E '^attnd_requests_total' > "$OUT/metrics.txt"
kill -TERM $daemon; wait $daemon; echo "attnd exit code after SIGTERM: $?"
cat "$OUT/metrics.txt"
printf '%s\n' "${summary[@]}"
exit $rc
