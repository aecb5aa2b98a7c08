#!/usr/bin/env python3
"""Times PyTorch SDPA (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION = cuDNN) forward on the
shapes attn_bench measured, in the same device session, and puts the three side by side
(bench/sdpa_common.py: shapes, timing rule, outputs). FLOPs = 4*B*H*N^2*d, half when causal.

Also measures the peak device memory of a naive attention that materialises softmax(QK^T) (what
attnd avoids) against attnd's allocations (read from attn_bench's CSV: inputs, output, lse).

Writes (under --out-dir, named with --tag): <tag>.csv, <tag>.md, <tag>_tflops.png,
<tag>_memory.png; prints the table last.
"""
import math

import torch
import torch.nn.functional as F

import sdpa_common as common


def flops(b, h, n, d, causal):
    return 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)


def time_sdpa(args):
    def time_fn(backend, dtype, d, causal, n):
        def make_sets():
            return [tuple(common.random_bnhd(args, n, d, dtype) for _ in range(3)) for _ in range(args.sets)]

        def step(sets, i):
            q, k, v = sets[i % len(sets)]
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return common.time_backend(backend, f"{dtype} d={d} causal={causal} N={n}", make_sets, step, args)

    return time_fn


def naive_peak_bytes(dtype, d, n, args):
    """Peak memory of softmax(QK^T/sqrt(d)) V with the score matrix materialised (one forward)."""
    b, h = common.batch_heads(args, n, d)
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


def plot_memory(mem, path, args):
    plt = common.pyplot()
    if plt is None:
        return
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
    fig.savefig(path, dpi=90)


def main():
    args = common.arg_parser(__doc__.splitlines()[0], "fwd", "attn_bench CSV").parse_args()
    ours = common.read_ours(args.ours)
    device = torch.cuda.get_device_name(0)
    rows = common.compare(ours, time_sdpa(args), flops, args)

    # Peak memory against seqlen: ours (allocations) vs naive materialised softmax, bf16 d=128.
    mem = []
    for key in sorted(ours):
        dt, d, causal, n = key
        if dt == "bf16" and d == 128 and causal == 0:
            mem.append({"seqlen": n, "ours_bytes": int(ours[key]["alloc_bytes"]),
                        "naive_bytes": naive_peak_bytes(torch.bfloat16, d, n, args)})

    base, lines = common.report(rows, args, f"# Forward attention, {device}", "4*B*H*N^2*d",
                                "fa2 = torch SDPA FLASH_ATTENTION backend (FlashAttention-2), cudnn = CUDNN_ATTENTION.")
    if mem:
        lines += ["", "Peak device memory, bf16 d=128 non-causal (GiB): attnd allocations vs naive materialised softmax", "",
                  "| seqlen | attnd | naive |", "|---|---|---|"]
        for m in mem:
            lines.append(f"| {m['seqlen']} | {m['ours_bytes'] / 2**30:.3f} | {m['naive_bytes'] / 2**30:.3f} |")
        plot_memory(mem, base + "_memory.png", args)
    common.plot_tflops(rows, base + "_tflops.png", f"Forward attention TFLOP/s, {device}")
    common.finish(lines, base)


if __name__ == "__main__":
    main()
