#!/usr/bin/env bash
# One command for a newcomer: build attnd and attn_loadgen, start attnd (CPU backend unless
# ATTND_BACKEND says otherwise), run a closed-loop concurrency sweep, write CSV + PNG, stop attnd.
#
#   scripts/sweep.sh                      # -> sweep/sweep.csv, sweep/sweep.png
#   SWEEP_OUT=/tmp/s scripts/sweep.sh --concurrency=1,2,4,8,16 --seqlen_q=2048 --dtype=bf16
#
# Extra arguments go to attn_loadgen (they override the defaults below); attn_loadgen --help lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${ATTND_BUILD_DIR:-build}
out=${SWEEP_OUT:-sweep}
bash scripts/build.sh attnd attn_loadgen
mkdir -p "$out"
log="$out/attnd.log"
"$build/bin/attnd" --backend="${ATTND_BACKEND:-cpu}" --listen=127.0.0.1:0 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
target=""
for _ in $(seq 1 100); do
  target=$(sed -n 's/.*attnd listening on \([^ ]*\).*/\1/p' "$log" | head -1)
  [[ -n "$target" ]] && break
  kill -0 "$pid" 2>/dev/null || { echo "sweep: attnd exited:"; cat "$log"; exit 1; }
  sleep 0.1
done
[[ -n "$target" ]] || { echo "sweep: attnd did not start:"; cat "$log"; exit 1; }
echo "sweep: attnd listening on $target"
"$build/bin/attn_loadgen" --target="$target" --concurrency=1,2,4,8 --window=1 --stable_windows=3 --duration=10 \
  --warmup=1 --max_time=120 --batch=1 --seqlen_q=512 --heads_q=8 --head_dim=64 --dtype=bf16 --causal \
  --csv="$out/sweep.csv" "$@"
MPLCONFIGDIR="${MPLCONFIGDIR:-$out/.matplotlib}" /usr/bin/python3 -E client/loadgen/plot_sweep.py \
  "$out/sweep.csv" --out "$out/sweep.png"
echo "sweep: $out/sweep.csv and $out/sweep.png"
