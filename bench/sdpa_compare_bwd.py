#!/usr/bin/env python3
"""Times the backward of PyTorch SDPA (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION = cuDNN)
on the shapes attn_bench_bwd measured, in the same device session, and puts the three side by side
(bench/sdpa_common.py: shapes, timing rule, outputs).

Each input set has its own forward graph; only the backward is timed (torch.autograd.grad with
retain_graph). FLOPs = 2.5 * 4*B*H*N^2*d, half when causal (the convention of the brief and of
FlashAttention).

Writes (under --out-dir, named with --tag): <tag>.csv, <tag>.md, <tag>_tflops.png; prints the
table last.
"""
import torch
import torch.nn.functional as F

import sdpa_common as common


def flops(b, h, n, d, causal):
    return 2.5 * 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)


def time_sdpa_bwd(args):
    def time_fn(backend, dtype, d, causal, n):
        def make_sets():
            sets = []
            for _ in range(args.sets):
                q, k, v = (common.random_bnhd(args, n, d, dtype, requires_grad=True) for _ in range(3))
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                sets.append((q, k, v, out, torch.randn_like(out)))
            return sets

        def step(sets, i):
            q, k, v, out, dout = sets[i % len(sets)]
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

        return common.time_backend(backend, f"{dtype} d={d} causal={causal} N={n}", make_sets, step, args)

    return time_fn


def main():
    args = common.arg_parser(__doc__.splitlines()[0], "bwd", "attn_bench_bwd CSV").parse_args()
    ours = common.read_ours(args.ours, keep=lambda r: not int(r.get("deterministic", 0)))
    device = torch.cuda.get_device_name(0)
    rows = common.compare(ours, time_sdpa_bwd(args), flops, args)

    base, lines = common.report(
        rows, args, f"# Backward attention, {device}", "2.5*4*B*H*N^2*d",
        "ours = attnd FlashBwd (whole call: dQ clear, pre-pass, main kernel, dQ conversion); "
        "fa2 = torch SDPA FLASH_ATTENTION backward (FlashAttention-2), cudnn = CUDNN_ATTENTION backward.")
    common.plot_tflops(rows, base + "_tflops.png", f"Backward attention TFLOP/s, {device}")
    common.finish(lines, base)


if __name__ == "__main__":
    main()
