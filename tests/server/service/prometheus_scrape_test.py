#!/usr/bin/python3
"""A real Prometheus (Debian's package) scrapes attnd under load; the test asks Prometheus's HTTP
query API whether attnd's series are there and move.

  prometheus_scrape_test.py ATTND_BINARY ATTN_LOADGEN_BINARY

Everything runs on 127.0.0.1: attnd (CPU backend) with --metrics_listen on a free port, a
Prometheus scraping it every second from a temporary storage directory, and attn_loadgen sending
bounded bursts of small forward and backward calls. Bounded to about 40 s; every process it
started is killed at the end and the temporary directory removed. Exit 77 (ctest: skipped) when
no prometheus binary is installed.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

DEADLINE = time.monotonic() + 50  # the whole test, processes included
PROCS = []


def fail(msg):
    print("FAIL:", msg, flush=True)
    raise SystemExit(1)


def start(args, log_path):
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    PROCS.append(proc)
    return proc


def stop_all():
    for proc in PROCS:
        if proc.poll() is None:
            proc.terminate()
    for proc in PROCS:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(what, check, timeout):
    end = min(time.monotonic() + timeout, DEADLINE)
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    fail(f"timed out waiting for {what}")


def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prom, expr):
    """Instant query: list of (labels, value)."""
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        fail(f"query {expr!r}: {body}")
    return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]


def scalar(prom, expr):
    result = query(prom, expr)
    return result[0][1] if len(result) == 1 else None


def loadgen(loadgen_bin, target, direction, requests):
    cmd = [loadgen_bin, f"--target={target}", f"--direction={direction}", f"--requests={requests}",
           "--concurrency=4", "--batch=1", "--seqlen_q=64", "--heads_q=2", "--head_dim=32",
           "--dtype=fp32", "--timeout=20", "--max_time=20", "--progress=false"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    if out.returncode != 0:
        fail(f"attn_loadgen failed ({out.returncode}):\n{out.stdout.decode(errors='replace')}")


def main():
    attnd_bin, loadgen_bin = sys.argv[1], sys.argv[2]
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("SKIP: no prometheus binary (Debian package 'prometheus'; scripts/install_deps.sh installs it)")
        return 77
    tmp = tempfile.mkdtemp(prefix="attnd-prom-")
    try:
        attnd_log = os.path.join(tmp, "attnd.log")
        attnd = start([attnd_bin, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0", "--backend=cpu",
                       "--threads=1", "--workers=2", "--shutdown_grace=5s"], attnd_log)

        def addresses():
            text = read(attnd_log)
            if attnd.poll() is not None:
                fail(f"attnd exited early:\n{text}")
            grpc_addr = re.search(r"attnd listening on (\S+)", text)
            metrics_addr = re.search(r"metrics_address=(\S+)", text)
            return grpc_addr and metrics_addr and (grpc_addr.group(1), metrics_addr.group(1))

        target, metrics = wait_for("attnd's addresses", addresses, 20)

        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: attnd\n    static_configs:\n"
                    f"      - targets: ['{metrics}']\n")
        prom_log = os.path.join(tmp, "prometheus.log")
        for attempt in range(3):  # the free port may be taken between probe and bind
            prom = f"127.0.0.1:{free_port()}"
            server = start([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                            f"--web.listen-address={prom}", "--log.level=warn"], prom_log)

            def ready():
                if server.poll() is not None:
                    return "exited"
                try:
                    with urllib.request.urlopen(f"http://{prom}/-/ready", timeout=1) as r:
                        return "ready" if r.status == 200 else None
                except OSError:
                    return None

            state = wait_for("Prometheus to be ready", ready, 20)
            if state == "ready":
                break
        else:
            fail(f"prometheus did not start:\n{read(prom_log)}")

        # The target is up and the gauges are there before any load.
        wait_for("Prometheus to scrape attnd", lambda: scalar(prom, 'up{job="attnd"}') == 1, 15)
        for series in ("attnd_queue_depth", "attnd_workers_busy", "attnd_workers", "attnd_calls_in_flight"):
            if not query(prom, series):
                fail(f"series {series} missing")
        if scalar(prom, "attnd_workers") != 2:
            fail("attnd_workers is not 2")

        ok_forward = 'attnd_requests_total{method="Forward",code="OK"}'
        loadgen(loadgen_bin, target, "forward", 40)
        first = wait_for("the first forward calls to be scraped",
                         lambda: (scalar(prom, ok_forward) or 0) >= 40 and scalar(prom, ok_forward), 10)
        loadgen(loadgen_bin, target, "forward", 40)
        loadgen(loadgen_bin, target, "backward", 20)
        second = wait_for("the counter to move", lambda: (scalar(prom, ok_forward) or 0) >= first + 40
                          and scalar(prom, ok_forward), 10)
        wait_for("backward calls", lambda: (scalar(prom, 'attnd_requests_total{method="Backward",code="OK"}')
                                            or 0) >= 20, 10)

        checks = {
            'attnd_request_bytes_total{method="Forward"}': lambda v: v > 0,
            'attnd_response_bytes_total{method="Backward"}': lambda v: v > 0,
            'attnd_request_stage_seconds_count{method="Forward",stage="compute"}': lambda v: v >= second,
            'attnd_request_stage_seconds_count{method="Forward",stage="queue_wait"}': lambda v: v >= second,
            'attnd_request_stage_seconds_count{method="Backward",stage="total"}': lambda v: v >= 20,
            'increase(attnd_requests_total{method="Forward",code="OK"}[1m])': lambda v: v > 0,
            # Buckets that PromQL can read: a median compute time that is a positive number.
            'histogram_quantile(0.5, sum by (le) (attnd_request_stage_seconds_bucket'
            '{method="Forward",stage="compute"}))': lambda v: 0 < v < 60,
        }
        report = []
        for expr, ok in checks.items():
            value = scalar(prom, expr)
            report.append(f"{expr} = {value}")
            if value is None or not ok(value):
                fail(f"{expr} = {value}\n" + "\n".join(report))
        print("\n".join(report))
        print(f"Forward OK calls seen by Prometheus: {first:g} then {second:g}")
        attnd.send_signal(signal.SIGTERM)
        if attnd.wait(timeout=15) != 0:
            fail(f"attnd did not exit cleanly:\n{read(attnd_log)}")
        print("1 passed, 0 failed")
        return 0
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
