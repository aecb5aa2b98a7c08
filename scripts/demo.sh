#!/usr/bin/env bash
# One command for a newcomer: install, build, start attnd (CUDA backend when a GPU is visible,
# else the CPU backend), send it demo requests whose results are checked against the local CPU
# reference, then stop the daemon with SIGTERM (it drains and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh attnd attn_loadgen
bin=${ATTND_BUILD_DIR:-build}/bin
log=$(mktemp -t attnd-demo.XXXXXX)
"$bin/attnd" --listen=127.0.0.1:0 --backend="${ATTND_BACKEND:-auto}" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's/.*attnd listening on \([^ ]*\).*/\1/p' "$log" | head -1)
  [[ -n $addr ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "demo: attnd exited early" >&2; exit 1; }
  sleep 0.1
done
[[ -n $addr ]] || { cat "$log"; echo "demo: attnd did not report its address" >&2; exit 1; }
cat "$log"
echo "demo: attnd is serving on $addr; sending checked forward and backward requests"
"$bin/attn_loadgen" --target="$addr" --requests=8 --concurrency=2 --batch=2 --seqlen_q=256 \
  --heads_q=8 --heads_kv=2 --head_dim=64 --dtype=bf16 --causal --check
"$bin/attn_loadgen" --target="$addr" --requests=4 --concurrency=2 --batch=1 --seqlen_q=128 \
  --heads_q=4 --head_dim=64 --dtype=fp32 --direction=backward --check
kill -TERM "$pid"
wait "$pid"
echo "demo: attnd drained and exited cleanly; every response matched the reference"
