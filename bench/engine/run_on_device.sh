#!/usr/bin/env bash
# Issue #5 on the GPU, in one call: the engine's GPU tests, then the benchmarks, then a table.
#   (a) small requests (B=1 S=128 H=16 d=128 bf16 forward) at concurrency 1/8/64/256 under four
#       engines: no batcher, batching with --max_queue_delay_us=0, 1000 and 2000
#   (b) large requests (B=1 S=4096): latency breakdown against the raw gRPC echo of the same bytes
#   (c) driver allocations in steady state: GetStats per step, and the c=64 and c=256 steps run
#       again on the same, now warm, daemon (a step's own delta includes its warm-up)
#   (d) the transport baseline: bench/transport's plain gRPC echo of the same payload bytes
#   (e) shared-memory regions (registered with cudaHostRegister): H2D/D2H by DMA, not staged;
#       proto S=16384 for the front end's (parallel) gather of 192 MiB
#   plus the device memory pool against cudaMalloc / cudaMallocAsync.
# The last table printed is issue 5's three targets, each with its measured value and MET / NOT MET.
# Programs are built on the development machine (gRPC) and bundled by bench/engine/make_bundle.sh:
#   POOL_BENCH=1 STEP_S=2 OUT=$OUT bash .devbundle-engine/run_on_device.sh   (carry .devbundle-engine)
# Env: ATTND_BACKEND (cuda), STEP_S (3, seconds per load step), SKIP_TESTS, POOL_BENCH (unset),
#      LARGE_SEQLEN (4096) and E_CALLS ("shm:4096 shm:16384 proto:16384"): smaller for a CPU check.
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
  if [[ $name != delay1000 ]]; then  # (c): the same steps again, warm
    attn_loadgen --target=127.0.0.1:$port $small --concurrency=64,256 --warmup=0.5 --duration="$step_s" \
      --progress=false --json > "$OUT/steady_$name.json" 2> "$OUT/steady_$name.err" || rc=1
  fi
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
  attn_loadgen --target=127.0.0.1:$port --seqlen_q="${LARGE_SEQLEN:-4096}" --heads_q=16 --head_dim=128 --dtype=bf16 \
    --concurrency=1,4 --warmup=1 --duration="$step_s" --progress=false --json > "$OUT/large.json" 2> "$OUT/large.err" || rc=1
  stop_daemon large
} || rc=1

# (e) shared memory (registered for DMA) vs proto at large sizes, one call at a time.
sock=/tmp/attnd-engine.sock; rm -f "$sock"
start_daemon shm --max_queue_delay_us=0 --region_socket="$sock" && {
  for t in ${E_CALLS:-shm:4096 shm:16384 proto:16384}; do
    IFS=: read -r transport seqlen <<< "$t"
    name=${transport}_$seqlen
    attn_loadgen --target=127.0.0.1:$port --seqlen_q="$seqlen" --heads_q=16 --head_dim=128 --dtype=bf16 \
      --transport="$transport" --concurrency=1 --requests=12 --warmup=0.5 --progress=false --json \
      > "$OUT/e_$name.json" 2> "$OUT/e_$name.err" || rc=1
  done
  stop_daemon shm
} || rc=1

if [[ -f $OUT/pool.md ]]; then echo; cat "$OUT/pool.md"; fi
for m in "$OUT"/metrics_*.txt; do  # each daemon's pools and copy routes at its end
  grep -h "driver_allocations_total\|attnd_gpu_copy_bytes_total" "$m" 2>/dev/null | grep -v '^#' |
    sed "s/^/$(basename "$m" .txt): /"
done
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
    # transport_bench rows, no header: mode, payload, request bytes, response bytes, calls, median s, ...
    for r in csv.reader(open(os.path.join(out, "echo.csv"))): echo[r[1]] = float(r[5]) * 1e3
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

def step(d, c):
    for s in (d or {}).get("steps", []):
        if s["concurrency"] == c: return s
    return None
print("\n(c) steady state: the c=64 and c=256 steps again on the warm daemon (driver allocations in the step)")
steady = {}
for name in ("nobatch", "delay0", "delay2000"):
    d = load(f"steady_{name}.json")
    if not d: continue
    steady[name] = [s.get("server", {}).get("driver_allocations", -1) for s in d["steps"]]
    print("%-10s" % name + "".join("  c=%d: %.0f req/s, %.2f req/launch, %d allocs" % (
        s["concurrency"], s["requests_per_s"], s.get("server", {}).get("requests_per_launch", 0),
        s.get("server", {}).get("driver_allocations", -1)) for s in d["steps"]))

print("\n(e) one call at a time: server H2D / D2H (ms, GB/s of the tensors moved), compute (ms)")
import glob
for path in sorted(glob.glob(os.path.join(out, "e_*.json"))):
    name = os.path.basename(path)[2:-5]
    seqlen = int(name.split("_")[1])
    mib_in, mib_out = 3 * seqlen * 4096 / 2**20, (seqlen * 4096 + seqlen * 64) / 2**20  # H=16 d=128 bf16
    d = load(os.path.basename(path))
    s = d if d and "server" in d else ((d or {}).get("steps") or [None])[0]
    if not s: continue
    v = s.get("server", {})
    h2d, d2h = v.get("h2d_ms", 0), v.get("d2h_ms", 0)
    gbs = lambda mib, ms: mib * 1.048576e-3 / (ms * 1e-3) if ms else 0
    print("%-12s ok %s  p50 %.2f ms  H2D %.2f ms = %.1f GB/s  D2H %.2f ms = %.1f GB/s  kernel %.3f  compute %.2f  server %.2f" % (
        name, s.get("ok"), s["latency_ms"]["p50"], h2d, gbs(mib_in, h2d), d2h, gbs(mib_out, d2h), v.get("kernel_ms", 0),
        v.get("compute_ms", 0), v.get("server_total_ms", 0)))

print("\n== issue 5 targets (%s) ==" % (open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "no GPU name"))
verdict = lambda ok: "MET" if ok else "NOT MET"
a2, a0 = step(load("small_delay2000.json"), 64), step(load("small_delay0.json"), 64)
if a2 and a0:
    rpl = a2.get("server", {}).get("requests_per_launch", 0)
    print("(a) c=64, --max_queue_delay_us=2000: %.2f requests/launch (>= 8): %s; %.0f req/s vs %.0f without waiting (delay 0): %s" % (
        rpl, verdict(rpl >= 8), a2["requests_per_s"], a0["requests_per_s"], verdict(a2["requests_per_s"] >= a0["requests_per_s"])))
d = load("large.json")
if d:
    shares = []
    for s in d["steps"]:
        v = s.get("server", {}); L = s["latency_ms"]["mean"]
        over = v.get("queue_ms", 0) + v.get("other_ms", 0) + v.get("worker_queue_ms", 0) + v.get("compute_ms", 0) - v.get("engine_ms", 0)
        shares.append((s["concurrency"], 100 * over / L if L else 100))
    print("(b) S=4096 engine overhead outside transfer and kernel (< 10%%): %s: %s" % (
        ", ".join("c=%d %.1f%%" % x for x in shares), verdict(all(p < 10 for _, p in shares))))
if steady:
    print("(c) driver allocations in warm steady-state steps (c=64, c=256) == 0: %s: %s" % (
        ", ".join("%s %s" % (k, v) for k, v in steady.items()), verdict(all(x == 0 for v in steady.values() for x in v))))
PY
tar -C "$OUT" -czf "$FINAL/engine_results.tar.gz" .
exit $rc
