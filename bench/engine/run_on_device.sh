#!/usr/bin/env bash
# Issue #5 on the GPU, in one call: the engine's GPU tests, then the benchmarks, then a table.
#   (a) small requests (B=1 S=128 H=16 d=128 bf16 forward) at concurrency 1/8/64/256 under four
#       engines: no batcher, batching with --max_queue_delay_us=0, 1000 and 2000
#   (b) large requests (B=1 S=4096): latency breakdown against the raw gRPC echo of the same bytes
#   (c) driver allocations in steady state (GetStats per step, /metrics at the end)
#   (d) the transport baseline: bench/transport's plain gRPC echo of the same payload bytes
#   plus the device memory pool against cudaMalloc / cudaMallocAsync.
# Programs are built on the development machine (gRPC) and bundled (see bench/engine/README.md):
#   OUT=$OUT bash .devbundle-engine/run_on_device.sh
# Env: ATTND_BACKEND (cuda), STEP_S (3, seconds per load step), SKIP_TESTS, POOL_BENCH (unset).
# Logs and JSON go to $OUT/engine_results.tar.gz (the device returns few files); the table is printed.
set -uo pipefail
FINAL=${OUT:-/tmp/out}; mkdir -p "$FINAL"
OUT=$(mktemp -d /tmp/engine_results.XXXX)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $here/bundle.tar.xz ]]; then tar -C /tmp -xJf "$here/bundle.tar.xz" && source /tmp/.devbundle/env.sh; fi
backend=${ATTND_BACKEND:-cuda}
step_s=${STEP_S:-3}
port=7300
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rc=0

if [[ -z ${SKIP_TESTS:-} ]]; then
  for t in cuda_engine_test cuda_backend_test; do
    timeout 150 "$t" > "$OUT/$t.log" 2>&1 || { echo "$t: exit $?"; rc=1; }
    echo "$t: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$t.log" | tr '\n' ' ')"
  done
  grep -E '^\[  FAILED|Failure' -A4 "$OUT"/cuda_engine_test.log | head -40
  grep -E '^\[       OK|^\[  FAILED' "$OUT"/cuda_engine_test.log | sed 's/^/  /'
fi
if [[ -n ${POOL_BENCH:-} ]]; then timeout 120 device_pool_bench > "$OUT/pool.md" 2>&1 || rc=1; fi
timeout 120 transport_bench --payloads=fwd_s128,fwd_s4096 --modes=grpc_echo --stream_mib=0 --min_seconds=1 \
  --csv="$OUT/echo.csv" > "$OUT/echo.md" 2>&1 || rc=1

start_daemon() {  # name, flags...
  local name=$1; shift
  attnd --backend="$backend" --listen=127.0.0.1:$port --workers=512 --metrics_listen=127.0.0.1:$((port + 1)) \
    --streams=2 --batch_executors=2 "$@" > "$OUT/attnd_$name.log" 2>&1 &
  daemon=$!
  for _ in $(seq 100); do grep -q "attnd listening" "$OUT/attnd_$name.log" && return 0; sleep 0.2; done
  echo "attnd ($name) did not start"; cat "$OUT/attnd_$name.log"; return 1
}
stop_daemon() {
  curl -s 127.0.0.1:$((port + 1))/metrics > "$OUT/metrics_$1.txt" 2>/dev/null ||
    python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$((port + 1))/metrics').read().decode())" > "$OUT/metrics_$1.txt"
  kill -TERM "$daemon"; wait "$daemon"; port=$((port + 2))
}
small="--seqlen_q=128 --heads_q=16 --head_dim=128 --dtype=bf16 --batch=1"

# (a) small requests under each engine configuration.
while read -r name flags; do
  start_daemon "$name" $flags || { rc=1; continue; }
  attn_loadgen --target=127.0.0.1:$port $small --concurrency=1,8,64,256 --warmup=0.5 --duration="$step_s" \
    --progress=false --json > "$OUT/small_$name.json" 2> "$OUT/small_$name.err" || rc=1
  if [[ $name == delay2000 ]]; then  # every checked answer of a batched launch against the CPU backend
    attn_loadgen --target=127.0.0.1:$port $small --concurrency=64 --requests=512 --check --check_every=4 \
      --progress=false --json > "$OUT/check_batched.json" 2> "$OUT/check_batched.err" || rc=1
  fi
  stop_daemon "$name"
done <<'CONFIGS'
nobatch --batching=false
delay0 --max_queue_delay_us=0
delay1000 --max_queue_delay_us=1000
delay2000 --max_queue_delay_us=2000
CONFIGS

# (b) large requests, one at a time then four; (c) allocations come with every step's GetStats.
start_daemon large --max_queue_delay_us=0 && {
  attn_loadgen --target=127.0.0.1:$port --seqlen_q=4096 --heads_q=16 --head_dim=128 --dtype=bf16 \
    --concurrency=1,4 --warmup=1 --duration="$step_s" --progress=false --json > "$OUT/large.json" 2> "$OUT/large.err" || rc=1
  stop_daemon large
} || rc=1

python3 - "$OUT" <<'PY'
import csv, json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        print(f"(no {name}: {e})"); return None
echo = {}
try:
    for r in csv.DictReader(open(os.path.join(out, "echo.csv"))): echo[r["payload"]] = float(r["median_s"]) * 1e3
except Exception as e: print("(no echo.csv)", e)
print("\n(a) small forward B=1 S=128 H=16 d=128 bf16: req/s | p50 ms | p99 ms | requests/launch | driver allocs")
print("%-10s" % "engine" + "".join("%44s" % f"c={c}" for c in (1, 8, 64, 256)))
for name in ("nobatch", "delay0", "delay1000", "delay2000"):
    d = load(f"small_{name}.json")
    if not d: continue
    row = "%-10s" % name
    for s in d["steps"]:
        sv = s.get("server", {})
        row += "%44s" % ("%7.0f %6.2f %7.2f %6.2f %3d" % (s["requests_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
                          sv.get("requests_per_launch", 0), sv.get("driver_allocations", -1)))
    print(row)
c = load("check_batched.json")
if c: print(f"batched answers checked vs CPU backend: {c.get('checked')} checked, {c.get('mismatches')} mismatches, max rel L2 {c.get('max_rel_l2')}")
d = load("large.json")
if d:
    print("\n(b) large forward B=1 S=4096 (64 MiB in, 16.25 MiB out); echo of the same bytes: %.2f ms median" % echo.get("fwd_s4096", float("nan")))
    print("conc  req/s  p50ms  mean  | queue  h2d  kernel  d2h  other | worker_q compute server_total | "
          "transfer=mean-compute-worker_q  overhead=queue+other+worker_q+(compute-engine) (% of mean)")
    for s in d["steps"]:
        v = s.get("server", {}); L = s["latency_ms"]["mean"]
        transfer = L - v.get("compute_ms", 0) - v.get("worker_queue_ms", 0)  # gRPC both ways, protobuf
        over = v.get("queue_ms", 0) + v.get("other_ms", 0) + v.get("worker_queue_ms", 0) + v.get("compute_ms", 0) - v.get("engine_ms", 0)
        print("%4d %6.1f %6.2f %6.2f | %5.2f %5.2f %6.3f %5.2f %5.2f | %6.2f %7.2f %8.2f | %7.2f  %5.2f ms = %4.1f%%  allocs %d" % (
            s["concurrency"], s["requests_per_s"], s["latency_ms"]["p50"], L, v.get("queue_ms", 0), v.get("h2d_ms", 0),
            v.get("kernel_ms", 0), v.get("d2h_ms", 0), v.get("other_ms", 0), v.get("worker_queue_ms", 0),
            v.get("compute_ms", 0), v.get("server_total_ms", 0), transfer, over, 100 * over / L if L else 0,
            v.get("driver_allocations", -1)))
print("\n(d) gRPC echo medians ms:", {k: round(v, 3) for k, v in echo.items()})
PY
if [[ -f $OUT/pool.md ]]; then echo; cat "$OUT/pool.md"; fi
grep -h "driver_allocations_total" "$OUT"/metrics_*.txt 2>/dev/null | sed 's/^/final: /'
tar -C "$OUT" -czf "$FINAL/engine_results.tar.gz" .
exit $rc
