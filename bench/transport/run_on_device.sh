#!/usr/bin/env bash
# The transport benchmark of issue #6, in one device call (loopback, same run):
#   1. baselines: raw TCP (one stream, and a round trip per payload) and a plain gRPC unary echo of
#      protobuf `bytes` (transport_bench, stock settings, untuned heap);
#   2. attnd's transport alone in process (transport_bench attnd_proto: transport-only backend):
#      what attnd does now (received tensors gathered over ParallelCopy's helpers, requests above
#      8 MiB streamed so the daemon copies chunks while the rest arrives) against each of those
#      off (--parallel_copy=false, --stream_above_mib=0; both off = the previous transport), and the
#      gather alone without sockets (transport_bench gather, serial vs parallel);
#   3. tiny calls (B=1, H=16, d=128, seqlen 1 and 16): the plain gRPC echo on the sync and the
#      callback API against attnd with its engine in process, lone calls computed on the worker
#      (--lone_calls_on_caller) or handed to an executor and back, with a per-call server breakdown;
#   4. attnd --backend=cuda with attn_loadgen: Forward over proto (streamed above 8 MiB, and one
#      unary message for comparison), shm and cuda_ipc (B=1, H=16, d=128, bf16, seqlen 1k/4k/16k),
#      training steps (forward + backward at 4k) resending everything vs through a resident handle,
#      then cuda_ipc again on a daemon with --lone_calls_on_caller=false. Kernel times from GetStats.
# Usage: bench/transport/run_on_device.sh BUNDLE_DIR   (BUNDLE_DIR/env.sh from device-bundle)
# The bundle: a build of this tree (CUDA on, sm_90) on the development machine, then
#   /work/shared/tools/device-bundle DIR build/bin/{attnd,attn_loadgen,transport_bench}
# and this script from the same tree (it runs from the checkout the device call ships).
# Writes logs, CSV and JSON under $OUT and prints the summary tables last.
set -uo pipefail
bundle=$(cd "$1" && pwd)
source "$bundle/env.sh"
out=${OUT:-/tmp/transport-out}
backend=${ATTND_BENCH_BACKEND:-cuda}             # cpu: a dry run of the plumbing here
seqlens=${ATTND_BENCH_SEQLENS:-1024 4096 16384}
train_seqlen=${ATTND_BENCH_TRAIN_SEQLEN:-4096}
payloads=${ATTND_BENCH_PAYLOADS:-fwd_s1024,fwd_s4096,fwd_s16384}
tiny=${ATTND_BENCH_TINY:-fwd_s1,fwd_s16}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/device.txt"
nproc | sed 's/^/cores: /' | tee -a "$out/device.txt"

echo "== 1. baselines"
transport_bench --modes=tcp,grpc_echo --payloads=$payloads,${ATTND_BENCH_ECHO:-echo_32MiB,echo_128MiB} \
  --min_seconds=0.3 --min_calls=3 --stream_mib=2048 --csv="$out/baseline.csv" 2>&1 | tee "$out/baseline.txt"

echo "== 2. attnd transport in process: now, and with parallel gather / streaming off"
inproc() {  # name, then transport_bench flags
  local name=$1; shift
  transport_bench --tune_malloc --modes=attnd_proto --payloads=$payloads --stream_mib=0 --min_seconds=0.3 \
    --min_calls=5 --csv="$out/inproc_$name.csv" "$@" 2>&1 | grep -v "^attnd listening" | tee "$out/inproc_$name.txt"
}
inproc now
inproc before --parallel_copy=false --stream_above_mib=0
inproc parallel_only --stream_above_mib=0
inproc stream_only --parallel_copy=false
for pc in false true; do
  transport_bench --modes=gather --parallel_copy=$pc --payloads=$payloads --stream_mib=0 --min_seconds=0.3 \
    --min_calls=10 --csv="$out/gather_parallel_$pc.csv" 2>&1 | tee "$out/gather_parallel_$pc.txt"
done

echo "== 3. tiny calls"
tiny_run() {  # name, then transport_bench flags
  local name=$1; shift
  transport_bench --payloads=$tiny --stream_mib=0 --min_seconds=1 --min_calls=2000 --max_calls=5000 \
    --csv="$out/tiny_$name.csv" "$@" 2>&1 | grep -v "^attnd listening" | tee "$out/tiny_$name.txt"
}
tiny_run echo --modes=grpc_echo,grpc_echo_callback
tiny_run engine_lone --tune_malloc --modes=attnd_proto --engine --lone_calls_on_caller=true \
  --access_log="$out/tiny_engine_lone_access.log"
tiny_run engine_handoff --tune_malloc --modes=attnd_proto --engine --lone_calls_on_caller=false \
  --access_log="$out/tiny_engine_handoff_access.log"
tiny_run engine_lone_nodeadlockdetect --tune_malloc --modes=attnd_proto --engine --mutex_deadlock_detection=false

echo "== 4. attnd --backend=$backend + attn_loadgen"
sock=/tmp/attnd-transport.sock
start_daemon() {  # log name, extra flags
  local log=$1; shift
  rm -f "$sock"
  : > "$out/$log.log"
  attnd --listen=127.0.0.1:7400 --backend=$backend --region_socket="$sock" --log_level=warning \
    --access_log="$out/access_$log.log" "$@" 2> "$out/$log.log" &
  daemon=$!
  for _ in $(seq 100); do grep -q "attnd listening" "$out/$log.log" && break; sleep 0.1; done
}
lg() {  # name, then attn_loadgen flags
  local name=$1; shift
  attn_loadgen --target=127.0.0.1:7400 --batch=1 --heads_q=16 --head_dim=128 --dtype=bf16 --payloads=2 \
    --warmup=0.3 --progress=false --json "$@" > "$out/lg_$name.json" 2> "$out/lg_$name.err" \
    || echo "attn_loadgen $name failed: $(tail -c 300 "$out/lg_$name.err")"
}
start_daemon attnd
for s in $seqlens; do
  n=$(( s == 16384 ? 8 : 20 ))
  lg "fwd_proto_$s" --seqlen_q=$s --requests=$n --transport=proto
  lg "fwd_proto_unary_$s" --seqlen_q=$s --requests=$n --transport=proto --stream_above_mib=0
  lg "fwd_shm_$s" --seqlen_q=$s --requests=$n --transport=shm
  lg "fwd_cuda_ipc_$s" --seqlen_q=$s --requests=$n --transport=cuda_ipc
done
lg fwd_cuda_ipc_lone_1024_x200 --seqlen_q=1024 --requests=200 --transport=cuda_ipc
lg train_proto_full_$train_seqlen --seqlen_q=$train_seqlen --requests=10 --direction=train
lg train_proto_resident_$train_seqlen --seqlen_q=$train_seqlen --requests=10 --direction=train --resident
lg train_shm_resident_$train_seqlen --seqlen_q=$train_seqlen --requests=10 --direction=train --resident --transport=shm
kill "$daemon"; wait "$daemon"
start_daemon attnd_handoff --lone_calls_on_caller=false
lg fwd_cuda_ipc_handoff_1024_x200 --seqlen_q=1024 --requests=200 --transport=cuda_ipc
lg fwd_cuda_ipc_handoff_4096 --seqlen_q=4096 --requests=20 --transport=cuda_ipc
kill "$daemon"; wait "$daemon"

python3 - "$out" <<'PY'
import csv, glob, json, os, re, statistics, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    return list(csv.reader(open(p))) if os.path.exists(p) else []
base = {(r[0], r[1]): float(r[8]) for r in rows("baseline.csv")}
inproc = {v: {r[1]: float(r[8]) for r in rows(f"inproc_{v}.csv")} for v in ("now", "before", "parallel_only", "stream_only")}
print("\n| payload | raw TCP GB/s | gRPC echo GB/s | attnd in process now | vs echo | vs TCP | before (serial, unary) | parallel gather only | streaming only |")
print("|---|---|---|---|---|---|---|---|---|")
for p in sorted(inproc["now"], key=lambda n: int(n[5:])):
    t, e, a = base.get(("tcp", p), 0), base.get(("grpc_echo", p), 0), inproc["now"].get(p, 0)
    print(f"| {p} | {t:.2f} | {e:.2f} | {a:.2f} | {a/e if e else 0:.2f}x | {100*a/t if t else 0:.0f}% | "
          f"{inproc['before'].get(p, 0):.2f} | {inproc['parallel_only'].get(p, 0):.2f} | {inproc['stream_only'].get(p, 0):.2f} |")
for p in [k[1] for k in base if k[0] == "tcp" and k[1].startswith("echo_")]:
    print(f"| {p} | {base.get(('tcp', p), 0):.2f} | {base.get(('grpc_echo', p), 0):.2f} | | | | | | |")
g = {pc: {r[1]: float(r[5]) * 1e3 for r in rows(f"gather_parallel_{pc}.csv")} for pc in ("false", "true")}
print("\n| gather of the request from 64 KiB slices (no sockets) | one thread ms | ParallelCopy ms |")
print("|---|---|---|")
for p in sorted(g["false"], key=lambda n: int(n[5:])):
    print(f"| {p} | {g['false'][p]:.2f} | {g['true'].get(p, 0):.2f} |")
print("\n| tiny call | payload | p50 ms | p10 ms |")
print("|---|---|---|---|")
for name in ("echo", "engine_lone", "engine_handoff", "engine_lone_nodeadlockdetect"):
    for r in rows(f"tiny_{name}.csv"):
        print(f"| {name} {r[0]} | {r[1]} | {float(r[5])*1e3:.3f} | {float(r[9])*1e3:.3f} |")
for name in ("engine_lone", "engine_handoff"):
    p = os.path.join(out, f"tiny_{name}_access.log")
    if not os.path.exists(p): continue
    recs = [dict(kv.split("=", 1) for kv in re.findall(r"(\w+=\S+)", l)) for l in open(p) if "log=access" in l]
    for size in sorted({r["request_bytes"] for r in recs}, key=int):
        rs = [r for r in recs if r["request_bytes"] == size]
        med = lambda k: statistics.median([float(r[k]) * 1e3 for r in rs if r.get(k, "-") != "-"] or [float("nan")])
        print(f"  {name} request {size} B: worker queue {med('queue_ms'):.1f} us, compute {med('compute_ms'):.1f} us, batch queue {med('batch_queue_ms'):.1f} us (server, median of {len(rs)})")
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
