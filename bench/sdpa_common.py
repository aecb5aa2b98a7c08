"""What the SDPA comparison scripts share (sdpa_compare.py: forward, sdpa_compare_bwd.py: backward).

Both time PyTorch SDPA's FLASH_ATTENTION (FlashAttention-2) and CUDNN_ATTENTION backends on the
shapes an attnd benchmark measured (its CSV), in the same device session, and write the three side
by side: <tag>.csv, <tag>.md (per-seqlen table and harmonic means), <tag>_tflops.png.

Shapes: B*N = --tokens, H*d = --hidden; inputs laid out like attnd's ([B, N, H, d], viewed as
[B, H, N, d] without a copy), random normal, rotated over --sets copies; CUDA events, warm-up,
median of --iters.
"""
import argparse
import csv
import os
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FIELDS = ["dtype", "head_dim", "causal", "seqlen", "ours_ms", "fa2_ms", "cudnn_ms", "ours", "fa2", "cudnn",
          "vs_fa2", "vs_cudnn"]


def arg_parser(description, default_tag, ours_help):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--ours", required=True, help=ours_help)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--tag", default=default_tag)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--command", default="", help="the command line that produced these results")
    return ap


def hmean(xs):
    xs = [x for x in xs if x and x > 0]
    return len(xs) / sum(1.0 / x for x in xs) if xs else float("nan")


def batch_heads(args, n, d):
    return args.tokens // n, args.hidden // d


def random_bnhd(args, n, d, dtype, requires_grad=False):
    """One [B, H, N, d] view of a random [B, N, H, d] tensor (attnd's layout)."""
    b, h = batch_heads(args, n, d)
    x = torch.randn(b, n, h, d, device="cuda", dtype=dtype).transpose(1, 2)
    return x.requires_grad_() if requires_grad else x


def time_backend(backend, label, make_sets, step, args):
    """Median milliseconds of step(sets, i) under one SDPA backend, or None if it cannot run."""
    times = []
    sets = None
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            sets = make_sets()
            for i in range(args.warmup):
                step(sets, i)
            torch.cuda.synchronize()
            for i in range(args.iters):
                start.record()
                step(sets, i)
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
    except RuntimeError as e:  # backend unavailable for this shape
        print(f"{backend} {label}: {e}".splitlines()[0], file=sys.stderr)
        return None
    finally:
        del sets
        torch.cuda.empty_cache()
    return statistics.median(times)


def read_ours(path, keep=lambda row: True):
    """attnd benchmark CSV rows keyed by (dtype, head_dim, causal, seqlen)."""
    ours = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            if keep(r):
                ours[(r["dtype"], int(r["head_dim"]), int(r["causal"]), int(r["seqlen"]))] = r
    return ours


def compare(ours, time_fn, flops_fn, args):
    """One row per measured shape: ours against both backends. time_fn(backend, dtype, d, causal,
    n) gives median ms or None; flops_fn(b, h, n, d, causal) the FLOPs of one call."""
    rows = []
    for key in sorted(ours):
        dt, d, causal, n = key
        b, h = batch_heads(args, n, d)
        row = {"dtype": dt, "head_dim": d, "causal": causal, "seqlen": n,
               "ours_ms": float(ours[key]["median_ms"]), "ours": float(ours[key]["tflops"])}
        for backend in BACKENDS:
            ms = time_fn(backend, DTYPES[dt], d, bool(causal), n)
            row[f"{backend}_ms"] = ms if ms else float("nan")
            row[backend] = flops_fn(b, h, n, d, bool(causal)) / (ms * 1e-3) / 1e12 if ms else float("nan")
        row["vs_fa2"] = row["ours"] / row["fa2"]
        row["vs_cudnn"] = row["ours"] / row["cudnn"]
        rows.append(row)
        print(f"{dt} d={d} causal={causal} N={n}: ours {row['ours']:.1f} fa2 {row['fa2']:.1f} "
              f"cudnn {row['cudnn']:.1f}", file=sys.stderr, flush=True)
    return rows


def groups_of(rows):
    return sorted({(r["dtype"], r["head_dim"], r["causal"]) for r in rows})


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in FIELDS})


def report(rows, args, title, flops_text, who_text):
    """Writes <out-dir>/<tag>.csv; returns that path's stem and the Markdown lines of the tables
    (title, the measuring rule, who is who, the command, per-seqlen table, harmonic means)."""
    base = os.path.join(args.out_dir, args.tag)
    os.makedirs(args.out_dir, exist_ok=True)
    write_csv(rows, base + ".csv")
    rule = (f"B*N = {args.tokens} tokens, H*d = {args.hidden}; TFLOP/s = {flops_text} / t (half when causal); "
            f"median of {args.iters} runs after {args.warmup} warm-up, inputs rotated over {args.sets} copies.")
    return base, table_lines(rows, title, [rule, who_text], args.command)


def table_lines(rows, title, preamble, command):
    """Markdown: title, preamble lines, the command, the per-seqlen table and the harmonic means."""
    lines = [title, ""] + preamble + [""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += ["| dtype | d | causal | seqlen | ours | FA2 | cuDNN | ours/FA2 | ours/cuDNN |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['head_dim']} | {r['causal']} | {r['seqlen']} | {r['ours']:.1f} | "
                     f"{r['fa2']:.1f} | {r['cudnn']:.1f} | {r['vs_fa2']:.3f} | {r['vs_cudnn']:.3f} |")
    lines += ["", "Harmonic means over the seqlens (TFLOP/s):", "",
              "| dtype | d | causal | ours | FA2 | cuDNN | ours/FA2 | ours/cuDNN |", "|---|---|---|---|---|---|---|---|"]
    for g in groups_of(rows):
        rs = [r for r in rows if (r["dtype"], r["head_dim"], r["causal"]) == g]
        o, a, c = hmean([r["ours"] for r in rs]), hmean([r["fa2"] for r in rs]), hmean([r["cudnn"] for r in rs])
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {o:.1f} | {a:.1f} | {c:.1f} | {o / a:.3f} | {o / c:.3f} |")
    return lines


def pyplot():
    """matplotlib.pyplot with a file backend, or None (and a note) where it is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError as e:
        print(f"no plots: {e}", file=sys.stderr)
        return None


def plot_tflops(rows, path, title):
    """One panel per (dtype, d, causal): TFLOP/s against seqlen for attnd, FA2 and cuDNN."""
    plt = pyplot()
    if plt is None:
        return
    groups = groups_of(rows)
    cols = max(1, (len(groups) + 1) // 2)
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 9), sharex=True, squeeze=False)
    for ax, g in zip(axes.flat, groups):
        rs = sorted([r for r in rows if (r["dtype"], r["head_dim"], r["causal"]) == g], key=lambda r: r["seqlen"])
        xs = [r["seqlen"] for r in rs]
        for name, label in (("ours", "attnd"), ("fa2", "FlashAttention-2 (SDPA)"), ("cudnn", "cuDNN (SDPA)")):
            ax.plot(xs, [r[name] for r in rs], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{g[0]} d={g[1]} {'causal' if g[2] else 'non-causal'}")
        ax.set_xlabel("seqlen")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def finish(lines, base):
    """Writes <base>.md and prints the tables (the end of a device call's output)."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    first = next(i for i, l in enumerate(lines) if l.startswith("| dtype"))
    print("\n".join(lines[first:]))
