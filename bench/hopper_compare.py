#!/usr/bin/env python3
"""Puts several attnd forward implementations (attn_bench --impls ..., e.g. the Hopper kernel's
schedules and the mma.sync kernel) beside PyTorch SDPA's FLASH_ATTENTION (FlashAttention-2) and
CUDNN_ATTENTION backends, timed in the same device session on the same shapes (sdpa_compare.py's
timing rule: random inputs rotated over --sets copies, CUDA events, warm-up, median).

Writes <out-dir>/<tag>.csv and <tag>.md (per-shape TFLOP/s, harmonic means over the seqlens, and
each implementation's ratio to FA2 and cuDNN); prints the harmonic-mean table last.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdpa_common as common  # noqa: E402
from sdpa_common import BACKENDS, DTYPES, hmean  # noqa: E402
from sdpa_compare import flops, time_sdpa  # noqa: E402

import torch  # noqa: E402


def main():
    args = common.arg_parser(__doc__.splitlines()[0], "hopper_fwd",
                             "attn_bench CSV (impl column names each implementation)").parse_args()
    time_fn = time_sdpa(args)

    tflops, impls = {}, []
    with open(args.ours) as f:
        for r in csv.DictReader(f):
            key = (r["dtype"], int(r["head_dim"]), int(r["causal"]), int(r["seqlen"]))
            tflops.setdefault(key, {})[r["impl"]] = float(r["tflops"])
            if r["impl"] not in impls:
                impls.append(r["impl"])
    cols = impls + list(BACKENDS)
    for key in sorted(tflops):
        dt, d, causal, n = key
        b, h = common.batch_heads(args, n, d)
        for backend in BACKENDS:
            ms = time_fn(backend, DTYPES[dt], d, bool(causal), n)
            tflops[key][backend] = flops(b, h, n, d, bool(causal)) / (ms * 1e-3) / 1e12 if ms else float("nan")
        print(f"{key}: " + " ".join(f"{c} {tflops[key].get(c, float('nan')):.1f}" for c in cols), file=sys.stderr,
              flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, args.tag)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dtype", "head_dim", "causal", "seqlen"] + cols)
        for key in sorted(tflops):
            w.writerow(list(key) + [f"{tflops[key].get(c, float('nan')):.1f}" for c in cols])

    names = {"fa2": "FA2", "cudnn": "cuDNN"}
    head = [names.get(c, c) for c in cols]
    lines = [f"# Forward attention, {torch.cuda.get_device_name(0)}: attnd implementations vs SDPA", "",
             f"B*N = {args.tokens} tokens, H*d = {args.hidden}; TFLOP/s = 4*B*H*N^2*d / t (half when causal); "
             f"median of {args.iters} runs after {args.warmup} warm-up, inputs rotated over {args.sets} copies. "
             "FA2 = torch SDPA FLASH_ATTENTION, cuDNN = CUDNN_ATTENTION, same session.", ""]
    if args.command:
        lines += ["Command:", "", "```", args.command, "```", ""]
    lines += ["| dtype | d | causal | seqlen | " + " | ".join(head) + " |", "|---" * (4 + len(cols)) + "|"]
    for key in sorted(tflops):
        lines.append("| " + " | ".join(map(str, key)) + " | " +
                     " | ".join(f"{tflops[key].get(c, float('nan')):.1f}" for c in cols) + " |")
    lines += ["", "Harmonic means over the seqlens (TFLOP/s), and each attnd implementation's ratio to cuDNN and FA2:",
              "", "| dtype | d | causal | " + " | ".join(head) + " | " +
              " | ".join(f"{i}/cuDNN" for i in impls) + " | " + " | ".join(f"{i}/FA2" for i in impls) + " |",
              "|---" * (3 + len(cols) + 2 * len(impls)) + "|"]
    for g in sorted({k[:3] for k in tflops}):
        h = {c: hmean([v.get(c) for k, v in tflops.items() if k[:3] == g]) for c in cols}
        lines.append("| " + " | ".join(map(str, g)) + " | " + " | ".join(f"{h[c]:.1f}" for c in cols) + " | " +
                     " | ".join(f"{h[i] / h['cudnn']:.3f}" for i in impls) + " | " +
                     " | ".join(f"{h[i] / h['fa2']:.3f}" for i in impls) + " |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    first = next(i for i, l in enumerate(lines) if l.startswith("Harmonic"))
    print("\n".join(lines[first:]))


if __name__ == "__main__":
    main()
