#!/usr/bin/env bash
# The transport benchmark of issue #6, in one device call (loopback, same run):
#   1. baselines: raw TCP (one stream, and a round trip per payload) and a plain gRPC unary echo of
#      protobuf `bytes` (transport_bench, stock settings, untuned heap);
#   2. attnd's transport alone in process (transport_bench attnd_proto: transport-only backend), with
#      gRPC's HTTP/2 defaults (what attnd uses) and with large windows/frames/reads for comparison;
#   3. attnd --backend=cuda with attn_loadgen: Forward over proto, shm and cuda_ipc (B=1, H=16,
#      d=128, bf16, seqlen 1k/4k/16k), and training steps (forward + backward at 4k) resending
#      everything vs through a resident handle. Kernel times from the daemon's GetStats.
# Usage: bench/transport/run_on_device.sh BUNDLE_DIR   (BUNDLE_DIR/env.sh from device-bundle)
# Writes logs, CSV and JSON under $OUT and prints the summary table last.
set -uo pipefail
bundle=$(cd "$1" && pwd)
source "$bundle/env.sh"
out=${OUT:-/tmp/transport-out}
backend=${ATTND_BENCH_BACKEND:-cuda}             # cpu: a dry run of the plumbing here
seqlens=${ATTND_BENCH_SEQLENS:-1024 4096 16384}
train_seqlen=${ATTND_BENCH_TRAIN_SEQLEN:-4096}
payloads=${ATTND_BENCH_PAYLOADS:-fwd_s1024,fwd_s4096,fwd_s16384}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/device.txt"
nproc | sed 's/^/cores: /' | tee -a "$out/device.txt"

echo "== 1. baselines"
transport_bench --modes=tcp,grpc_echo --payloads=$payloads,${ATTND_BENCH_ECHO:-echo_32MiB,echo_128MiB} \
  --min_seconds=0.3 --min_calls=3 --stream_mib=2048 --csv="$out/baseline.csv" 2>&1 | tee "$out/baseline.txt"

echo "== 2. attnd transport in process (gRPC's HTTP/2 defaults; then 64 MiB windows, 16 MiB frames, 1-8 MiB reads)"
transport_bench --tune_malloc --modes=attnd_proto --payloads=$payloads --stream_mib=0 \
  --min_seconds=0.3 --min_calls=5 --csv="$out/attnd_inproc.csv" 2>&1 | grep -v "^attnd listening" | tee "$out/attnd_inproc.txt"
transport_bench --tune_malloc --modes=attnd_proto --payloads=$payloads --stream_mib=0 \
  --min_seconds=0.3 --min_calls=5 --csv="$out/attnd_inproc_big_windows.csv" \
  --channel_args=grpc.http2.lookahead_bytes=67108864,grpc.http2.max_frame_size=16777215,grpc.experimental.tcp_read_chunk_size=1048576,grpc.experimental.tcp_min_read_chunk_size=262144,grpc.experimental.tcp_max_read_chunk_size=8388608 \
  2>&1 | grep -v "^attnd listening" | tee "$out/attnd_inproc_big_windows.txt"

echo "== 3. attnd --backend=cuda + attn_loadgen"
sock=/tmp/attnd-transport.sock
rm -f "$sock"
: > "$out/attnd.log"
attnd --listen=127.0.0.1:7400 --backend=$backend --region_socket="$sock" --log_level=warning \
  --access_log="$out/access.log" 2> "$out/attnd.log" &
daemon=$!
for _ in $(seq 100); do grep -q "attnd listening" "$out/attnd.log" && break; sleep 0.1; done
lg() {  # name, then attn_loadgen flags
  local name=$1; shift
  attn_loadgen --target=127.0.0.1:7400 --batch=1 --heads_q=16 --head_dim=128 --dtype=bf16 --payloads=2 \
    --warmup=0.3 --progress=false --json "$@" > "$out/lg_$name.json" 2> "$out/lg_$name.err" \
    || echo "attn_loadgen $name failed: $(tail -c 300 "$out/lg_$name.err")"
}
for s in $seqlens; do
  n=$(( s == 16384 ? 8 : 20 ))
  lg "fwd_proto_$s" --seqlen_q=$s --requests=$n --transport=proto
  lg "fwd_shm_$s" --seqlen_q=$s --requests=$n --transport=shm
  lg "fwd_cuda_ipc_$s" --seqlen_q=$s --requests=$n --transport=cuda_ipc
done
lg train_proto_full_$train_seqlen --seqlen_q=$train_seqlen --requests=10 --direction=train
lg train_proto_resident_$train_seqlen --seqlen_q=$train_seqlen --requests=10 --direction=train --resident
lg train_shm_resident_$train_seqlen --seqlen_q=$train_seqlen --requests=10 --direction=train --resident --transport=shm
kill "$daemon"; wait "$daemon"

python3 - "$out" <<'PY'
import csv, glob, json, os, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    if not os.path.exists(p): return []
    return list(csv.reader(open(p)))
base = {(r[0], r[1]): float(r[8]) for r in rows("baseline.csv")}
inproc = {r[1]: float(r[8]) for r in rows("attnd_inproc.csv")}
inproc_big = {r[1]: float(r[8]) for r in rows("attnd_inproc_big_windows.csv")}
print("\n| payload | raw TCP GB/s | gRPC echo GB/s | attnd in-process GB/s (big windows) | vs echo | vs TCP |")
print("|---|---|---|---|---|---|")
for p in sorted(inproc, key=lambda n: int(n[5:])):
    t, e, a = base.get(("tcp", p), 0), base.get(("grpc_echo", p), 0), inproc.get(p, 0)
    print(f"| {p} | {t:.2f} | {e:.2f} | {a:.2f} ({inproc_big.get(p, 0):.2f}) | {a/e if e else 0:.2f}x | {100*a/t if t else 0:.0f}% |")
for p in [k[1] for k in base if k[0] == "tcp" and k[1].startswith("echo_")]:
    print(f"| {p} | {base.get(('tcp', p), 0):.2f} | {base.get(('grpc_echo', p), 0):.2f} | | | |")
print("\n| attn_loadgen (attnd --backend=cuda) | ok | errors | payload GB/s | p50 ms | server kernel ms | server h2d+d2h ms | wire B/call |")
print("|---|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(out, "lg_*.json"))):
    name = os.path.basename(f)[3:-5]
    try: j = json.load(open(f))
    except Exception: print(f"| {name} | failed | | | | | | |"); continue
    s = j.get("server", {})
    k = s.get("kernel_ms", -1); hd = s.get("h2d_ms", 0) + s.get("d2h_ms", 0) if s else -1
    print(f"| {name} | {j['ok']} | {j['errors']} | {j['payload_gb_per_s']:.2f} | {j['latency_ms']['p50']:.3f} | {k:.3f} | {hd:.3f} | {j.get('wire_bytes_per_call', 0):.0f} |")
PY
