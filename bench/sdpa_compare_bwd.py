#!/usr/bin/env python3
"""Times the backward of PyTorch SDPA (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION = cuDNN)
on the shapes attn_bench_bwd measured, in the same device session, and puts the three side by side.

Shapes: B*N = --tokens, H*d = --hidden, from attn_bench_bwd's CSV. Inputs laid out like attnd's
([B, N, H, d], viewed as [B, H, N, d] without a copy), random normal, rotated over --sets copies
(each with its own forward graph); only the backward is timed (torch.autograd.grad with
retain_graph), CUDA events, warm-up, median of --iters.
FLOPs = 2.5 * 4*B*H*N^2*d, half when causal (the convention of the brief and of FlashAttention).

Writes (under --out-dir, named with --tag): <tag>.csv, <tag>.md, <tag>_tflops.png; prints the
table last.
"""
import argparse
import csv
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flops(b, h, n, d, causal):
    return 2.5 * 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)


def time_sdpa_bwd(backend, dtype, d, causal, n, args):
    b, h = args.tokens // n, args.hidden // d
    sets = []
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            for _ in range(args.sets):
                q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_()
                           for _ in range(3))
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                dout = torch.randn_like(out)
                sets.append((q, k, v, out, dout))

            def step(i):
                q, k, v, out, dout = sets[i % len(sets)]
                torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

            for i in range(args.warmup):
                step(i)
            torch.cuda.synchronize()
            for i in range(args.iters):
                start.record()
                step(i)
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


def hmean(xs):
    xs = [x for x in xs if x and x > 0]
    return len(xs) / sum(1.0 / x for x in xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="attn_bench_bwd CSV")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--tag", default="bwd")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--command", default="", help="the command line that produced these results")
    args = ap.parse_args()

    ours = {}
    with open(args.ours) as f:
        for r in csv.DictReader(f):
            if int(r.get("deterministic", 0)):
                continue
            ours[(r["dtype"], int(r["head_dim"]), int(r["causal"]), int(r["seqlen"]))] = r
    device = torch.cuda.get_device_name(0)

    rows = []
    for key in sorted(ours):
        dt, d, causal, n = key
        row = {"dtype": dt, "head_dim": d, "causal": causal, "seqlen": n,
               "ours_ms": float(ours[key]["median_ms"]), "ours": float(ours[key]["tflops"])}
        for backend in BACKENDS:
            r = time_sdpa_bwd(backend, DTYPES[dt], d, bool(causal), n, args)
            row[f"{backend}_ms"], row[backend] = r if r else (float("nan"), float("nan"))
        row["vs_fa2"] = row["ours"] / row["fa2"]
        row["vs_cudnn"] = row["ours"] / row["cudnn"]
        rows.append(row)
        print(f"{dt} d={d} causal={causal} N={n}: ours {row['ours']:.1f} fa2 {row['fa2']:.1f} "
              f"cudnn {row['cudnn']:.1f}", file=sys.stderr, flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, args.tag)
    fields = ["dtype", "head_dim", "causal", "seqlen", "ours_ms", "fa2_ms", "cudnn_ms", "ours", "fa2", "cudnn",
              "vs_fa2", "vs_cudnn"]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in fields})

    lines = [f"# Backward attention, {device}", "",
             f"B*N = {args.tokens} tokens, H*d = {args.hidden}; TFLOP/s = 2.5*4*B*H*N^2*d / t (half when causal); "
             f"median of {args.iters} runs after {args.warmup} warm-up, inputs rotated over {args.sets} copies.",
             "ours = attnd FlashBwd (whole call: dQ clear, pre-pass, main kernel, dQ conversion); "
             "fa2 = torch SDPA FLASH_ATTENTION backward (FlashAttention-2), cudnn = CUDNN_ATTENTION backward.", ""]
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
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
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
        fig.suptitle(f"Backward attention TFLOP/s, {device}")
        fig.tight_layout()
        fig.savefig(base + "_tflops.png", dpi=90)
    except ImportError as e:
        print(f"no plots: {e}", file=sys.stderr)

    first = next(i for i, l in enumerate(lines) if l.startswith("| dtype"))
    print("\n".join(lines[first:]))


if __name__ == "__main__":
    main()
