"""Plots an attn_loadgen sweep (--csv=FILE) as one PNG: throughput against p99 latency over the
steps, and the latency percentiles (p50/p90/p95/p99/max) of each step.

    /usr/bin/python3 client/loadgen/plot_sweep.py sweep.csv --out sweep.png

Needs Debian's python3-matplotlib (scripts/install_deps.sh); draws off-screen (Agg).
"""

import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def step_label(row):
    return ("rate %s" % row["rate"]) if row["mode"] == "open" else ("c=%s" % row["concurrency"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--out", help="PNG to write (default: the CSV's name with .png)")
    parser.add_argument("--check_min_bytes", type=int, default=0, help="exit 1 unless the PNG has at least this size")
    args = parser.parse_args()
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit("plot_sweep: %s has no steps" % args.csv)
    out = args.out or os.path.splitext(args.csv)[0] + ".png"
    labels = [step_label(r) for r in rows]
    rps = [float(r["requests_per_s"]) for r in rows]
    p99 = [float(r["p99_ms"]) for r in rows]
    first = rows[0]
    title = "attnd %s %s b=%s sq=%s sk=%s hq=%s hkv=%s d=%s causal=%s" % (
        first["direction"], first["dtype"], first["batch"], first["seqlen_q"], first["seqlen_k"], first["heads_q"],
        first["heads_kv"], first["head_dim"], first["causal"])

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.plot(rps, p99, "o-")
    for x, y, label in zip(rps, p99, labels):
        left.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.set_xlabel("throughput (requests/s)")
    left.set_ylabel("p99 latency (ms)")
    left.set_title("throughput vs p99 latency")
    left.grid(True, alpha=0.3)

    xs = range(len(rows))
    for key, marker in (("p50_ms", "o"), ("p90_ms", "s"), ("p95_ms", "^"), ("p99_ms", "D"), ("max_ms", "x")):
        right.plot(xs, [float(r[key]) for r in rows], marker=marker, label=key.replace("_ms", ""))
    right.set_xticks(list(xs))
    right.set_xticklabels(labels, rotation=30)
    right.set_ylabel("latency (ms)")
    right.set_yscale("log")
    right.set_title("latency percentiles per step")
    right.legend()
    right.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    size = os.path.getsize(out)
    print("plot_sweep: wrote %s (%d bytes, %d steps)" % (out, size, len(rows)))
    if size < args.check_min_bytes:
        sys.exit("plot_sweep: %s is only %d bytes" % (out, size))
    with open(out, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            sys.exit("plot_sweep: %s is not a PNG" % out)


if __name__ == "__main__":
    main()
