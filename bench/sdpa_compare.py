#!/usr/bin/env python3
"""Times PyTorch SDPA (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION = cuDNN) on the shapes
attn_bench measured, in the same device session, and puts the three side by side.

Shapes: B*N = --tokens, H*d = --hidden, seqlens/dims/dtypes/causal as attn_bench. Inputs are laid
out like attnd's ([B, N, H, d], viewed as [B, H, N, d] without a copy), random normal, rotated over
--sets copies; CUDA events, warm-up, median of --iters. FLOPs = 4*B*H*N^2*d, half when causal.

Also measures the peak device memory of a naive attention that materialises softmax(QK^T) (what
attnd avoids) against attnd's allocations (read from attn_bench's CSV: inputs, output, lse).

Writes (under --out-dir, named with --tag): <tag>.csv, <tag>.md, <tag>_tflops.png,
<tag>_memory.png; prints the table last.
"""
import argparse
import csv
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flops(b, h, n, d, causal):
    return 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)


def time_sdpa(backend, dtype, d, causal, n, args):
    b, h = args.tokens // n, args.hidden // d
    sets = []
    for _ in range(args.sets):
        q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(3))
        sets.append((q, k, v))
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            for i in range(args.warmup):
                q, k, v = sets[i % len(sets)]
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            for i in range(args.iters):
                q, k, v = sets[i % len(sets)]
                start.record()
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
    except RuntimeError as e:  # backend unavailable for this shape
        print(f"{backend} {dtype} d={d} causal={causal} N={n}: {e}".splitlines()[0], file=sys.stderr)
        return None
    finally:
        del sets
        torch.cuda.empty_cache()
    med = statistics.median(times)
    return med, flops(b, h, n, d, causal) / (med * 1e-3) / 1e12


def naive_peak_bytes(dtype, d, n, args):
    """Peak memory of softmax(QK^T/sqrt(d)) V with the score matrix materialised (one forward)."""
    b, h = args.tokens // n, args.hidden // d
    torch.cuda.empty_cache()
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype) for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() - 3 * q.numel() * q.element_size()
    try:
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        p = torch.softmax(s.float(), dim=-1).to(dtype)
        del s
        o = torch.matmul(p, v)
        del p, o
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    except torch.OutOfMemoryError:
        peak = float("nan")
    del q, k, v
    torch.cuda.empty_cache()
    return peak


def hmean(xs):
    xs = [x for x in xs if x and x > 0]
    return len(xs) / sum(1.0 / x for x in xs) if xs else float("nan")


def add_timing_args(ap):
    """The shape and timing flags time_sdpa reads (shared with hopper_compare.py)."""
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--command", default="", help="the command line that produced these results")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="attn_bench CSV")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--tag", default="fwd")
    add_timing_args(ap)
    args = ap.parse_args()

    ours = {}
    with open(args.ours) as f:
        for r in csv.DictReader(f):
            key = (r["dtype"], int(r["head_dim"]), int(r["causal"]), int(r["seqlen"]))
            ours[key] = r
    device = torch.cuda.get_device_name(0)

    rows = []
    for key in sorted(ours, key=lambda k: (k[0], k[1], k[2], k[3])):
        dt, d, causal, n = key
        row = {"dtype": dt, "head_dim": d, "causal": causal, "seqlen": n,
               "ours_ms": float(ours[key]["median_ms"]), "ours": float(ours[key]["tflops"])}
        for backend in BACKENDS:
            r = time_sdpa(backend, DTYPES[dt], d, bool(causal), n, args)
            row[f"{backend}_ms"], row[backend] = r if r else (float("nan"), float("nan"))
        row["vs_fa2"] = row["ours"] / row["fa2"]
        row["vs_cudnn"] = row["ours"] / row["cudnn"]
        rows.append(row)
        print(f"{dt} d={d} causal={causal} N={n}: ours {row['ours']:.1f} fa2 {row['fa2']:.1f} "
              f"cudnn {row['cudnn']:.1f}", file=sys.stderr, flush=True)

    # Peak memory against seqlen: ours (allocations) vs naive materialised softmax, bf16 d=128.
    mem = []
    for key in sorted(ours):
        dt, d, causal, n = key
        if dt == "bf16" and d == 128 and causal == 0:
            mem.append({"seqlen": n, "ours_bytes": int(ours[key]["alloc_bytes"]),
                        "naive_bytes": naive_peak_bytes(torch.bfloat16, d, n, args)})

    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, args.tag)
    fields = ["dtype", "head_dim", "causal", "seqlen", "ours_ms", "fa2_ms", "cudnn_ms", "ours", "fa2", "cudnn",
              "vs_fa2", "vs_cudnn"]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in fields})

    lines = [f"# Forward attention, {device}", "",
             f"B*N = {args.tokens} tokens, H*d = {args.hidden}; TFLOP/s = 4*B*H*N^2*d / t (half when causal); "
             f"median of {args.iters} runs after {args.warmup} warm-up, inputs rotated over {args.sets} copies.",
             "fa2 = torch SDPA FLASH_ATTENTION backend (FlashAttention-2), cudnn = CUDNN_ATTENTION.", ""]
    if args.command:
        lines += ["Command:", "", "```", args.command, "```", ""]
    lines += ["| dtype | d | causal | seqlen | ours | FA2 | cuDNN | ours/FA2 | ours/cuDNN |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['head_dim']} | {r['causal']} | {r['seqlen']} | {r['ours']:.1f} | "
                     f"{r['fa2']:.1f} | {r['cudnn']:.1f} | {r['vs_fa2']:.3f} | {r['vs_cudnn']:.3f} |")
    lines += ["", "Harmonic means over the seqlens (TFLOP/s):", "",
              "| dtype | d | causal | ours | FA2 | cuDNN | ours/FA2 | ours/cuDNN |", "|---|---|---|---|---|---|---|---|"]
    groups = sorted({(r["dtype"], r["head_dim"], r["causal"]) for r in rows})
    for g in groups:
        rs = [r for r in rows if (r["dtype"], r["head_dim"], r["causal"]) == g]
        o, a, c = hmean([r["ours"] for r in rs]), hmean([r["fa2"] for r in rs]), hmean([r["cudnn"] for r in rs])
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {o:.1f} | {a:.1f} | {c:.1f} | {o / a:.3f} | {o / c:.3f} |")
    if mem:
        lines += ["", "Peak device memory, bf16 d=128 non-causal (GiB): attnd allocations vs naive materialised softmax", "",
                  "| seqlen | attnd | naive |", "|---|---|---|"]
        for m in mem:
            lines.append(f"| {m['seqlen']} | {m['ours_bytes'] / 2**30:.3f} | {m['naive_bytes'] / 2**30:.3f} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(2, 4, figsize=(20, 9), sharex=True)
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
        fig.suptitle(f"Forward attention TFLOP/s, {device}")
        fig.tight_layout()
        fig.savefig(base + "_tflops.png", dpi=90)
        if mem:
            fig, ax = plt.subplots(figsize=(7, 5))
            xs = [m["seqlen"] for m in mem]
            ax.plot(xs, [m["ours_bytes"] / 2**30 for m in mem], marker="o", label="attnd (inputs, out, lse)")
            ax.plot(xs, [m["naive_bytes"] / 2**30 for m in mem], marker="o", label="naive materialised softmax")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("seqlen (B*N = %d, H*d = %d, bf16, d=128)" % (args.tokens, args.hidden))
            ax.set_ylabel("peak device memory (GiB)")
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(base + "_memory.png", dpi=90)
    except ImportError as e:
        print(f"no plots: {e}", file=sys.stderr)

    first = next(i for i, l in enumerate(lines) if l.startswith("| dtype"))
    print("\n".join(lines[first:]))


if __name__ == "__main__":
    main()
