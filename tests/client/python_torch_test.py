"""RemoteAttention and remote_scaled_dot_product_attention (client/python/attnd_torch.py) against a
local PyTorch float64 reference, and the asyncio client (AsyncAttndClient), on a spawned
`attnd --backend=cpu`. Run by ctest with Debian's /usr/bin/python3 -E (python3-torch):

    python3 python_torch_test.py --attnd build/bin/attnd --stubs_dir build/... \
        --client_dir client/python --proto_root proto
"""

import argparse
import asyncio
import math
import os
import signal
import sys
import unittest

import numpy as np
import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client_test import OUTPUT, start_daemon  # noqa: E402  (the daemon, started the same way)

ARGS = None
CLIENT = None
ADDRESS = None


# The reference: plain softmax(Q K^T * scale + mask) V in float64 ------------------------------------

def reference_sdpa(q, k, v, causal, scale):
    """SDPA layout [b, h, s, d], float64, differentiable. GQA by repeat_interleave of the KV heads;
    the causal mask is aligned bottom-right (query i sees key j iff j <= i + sk - sq); a query that
    sees no key gives 0, as attnd's does."""
    hq, hkv, sq, sk, d = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scale = scale or 1.0 / math.sqrt(d)
    s = (q @ k.transpose(-1, -2)) * scale
    visible = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        visible = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)
    seen = visible.any(dim=1)[:, None]  # rows with at least one key
    s = s.masked_fill(~visible, float("-inf")).masked_fill(~seen, 0.0)  # keep unseen rows finite
    p = torch.softmax(s, dim=-1) * seen
    return p @ v


def rel_l2(got, want):
    got, want = got.detach().to(torch.float64), want.detach().to(torch.float64)
    assert got.shape == want.shape, "shape %s, reference %s" % (tuple(got.shape), tuple(want.shape))
    assert torch.isfinite(got).all(), "non-finite values in the result"
    return (torch.linalg.norm(got - want) / torch.linalg.norm(want)).item()


# Relative L2 bounds per dtype: fp32 accumulates like float64 up to ~1e-6; bf16 rounds out (8 bits of
# mantissa: ~4e-3 per element) and the backward works from the rounded out and grad_out.
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 4e-2), torch.float64: (1e-5, 1e-4)}


def random_case(gen, dtype, b, hq, hkv, sq, sk, d):
    shape = lambda h, s: (b, h, s, d)  # noqa: E731
    q, k, v = (torch.randn(*shape(h, s), generator=gen).to(dtype) for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    grad = torch.randn(*shape(hq, sq), generator=gen).to(dtype)
    return q, k, v, grad


def remote_and_reference(q, k, v, grad, causal, scale, gqa):
    """Runs the remote SDPA and the reference on the same (already rounded) values; returns both
    outputs and both (dq, dk, dv)."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = CLIENT_SDPA(*leaves, is_causal=causal, scale=scale, enable_gqa=gqa)
    (out * grad).sum().backward()
    ref_leaves = [t.detach().to(torch.float64).requires_grad_() for t in (q, k, v)]
    ref = reference_sdpa(*ref_leaves, causal, scale)
    (ref * grad.to(torch.float64)).sum().backward()
    return out, ref, [t.grad for t in leaves], [t.grad for t in ref_leaves]


def CLIENT_SDPA(*args, **kwargs):
    import attnd_torch
    return attnd_torch.remote_scaled_dot_product_attention(*args, client=CLIENT, **kwargs)


# Tests -------------------------------------------------------------------------------------------------

class RemoteAttentionMatchesTorchReference(unittest.TestCase):

    def check(self, dtype, b, hq, hkv, sq, sk, d, causal=False, scale=None, seed=0):
        gen = torch.Generator().manual_seed(seed)
        q, k, v, grad = random_case(gen, dtype, b, hq, hkv, sq, sk, d)
        out, ref, grads, ref_grads = remote_and_reference(q, k, v, grad, causal, scale, hq != hkv)
        out_tol, grad_tol = TOL[dtype]
        case = "%s b=%d hq=%d hkv=%d sq=%d sk=%d d=%d causal=%s scale=%s" % (dtype, b, hq, hkv, sq, sk, d, causal, scale)
        self.assertEqual(out.dtype, dtype, case)
        self.assertEqual(out.shape, (b, hq, sq, d), case)
        self.assertLessEqual(rel_l2(out, ref), out_tol, "out: " + case)
        for name, got, want in zip(("q.grad", "k.grad", "v.grad"), grads, ref_grads):
            self.assertIsNotNone(got, name)
            self.assertEqual(got.dtype, dtype, name)
            self.assertLessEqual(rel_l2(got, want), grad_tol, "%s: %s" % (name, case))
        return out, ref

    def test_fp32_dense(self):
        self.check(torch.float32, 2, 4, 4, 17, 17, 32)

    def test_fp32_gqa_causal_seqlen_q_shorter_custom_scale(self):
        self.check(torch.float32, 2, 6, 2, 13, 29, 64, causal=True, scale=0.2, seed=1)

    def test_fp32_mqa_causal_seqlen_q_longer_rows_without_keys(self):
        out, _ = self.check(torch.float32, 1, 4, 1, 24, 10, 16, causal=True, seed=2)
        self.assertTrue((out[:, :, :14] == 0).all())  # queries 0..13 see no key

    def test_bf16_gqa_causal_unequal_lengths(self):
        self.check(torch.bfloat16, 2, 8, 2, 33, 47, 64, causal=True, seed=3)

    def test_bf16_dense_odd_length(self):
        self.check(torch.bfloat16, 1, 2, 2, 1, 17, 128, seed=4)

    def test_float64_travels_as_fp32_and_comes_back_float64(self):
        self.check(torch.float64, 1, 2, 1, 9, 12, 32, causal=True, seed=5)

    def test_random_shapes(self):
        rng = np.random.default_rng(2024)
        for i in range(6):
            hkv = int(rng.choice([1, 2, 4]))
            hq = hkv * int(rng.choice([1, 2, 3]))
            dtype = torch.float32 if i % 2 == 0 else torch.bfloat16
            with self.subTest(i=i):
                self.check(dtype, int(rng.integers(1, 3)), hq, hkv, int(rng.integers(1, 40)), int(rng.integers(1, 40)),
                           int(rng.choice([16, 32, 64, 80])), causal=bool(rng.integers(0, 2)), seed=100 + i)

    def test_comparison_detects_a_wrong_result(self):
        # The check above must be able to fail: a single perturbed element, a wrong scale and the
        # other causal alignment (torch's top-left) all break the bound.
        gen = torch.Generator().manual_seed(6)
        q, k, v, grad = random_case(gen, torch.float32, 1, 4, 2, 12, 20, 32)
        out, ref, grads, ref_grads = remote_and_reference(q, k, v, grad, True, None, True)
        self.assertLessEqual(rel_l2(out, ref), TOL[torch.float32][0])
        perturbed = out.detach().clone()
        perturbed[0, 1, 5, 7] += 0.05
        self.assertGreater(rel_l2(perturbed, ref), TOL[torch.float32][0])
        wrong_grad = grads[1].clone()
        wrong_grad[0, 0, 3, 3] += 0.05
        self.assertGreater(rel_l2(wrong_grad, ref_grads[1]), TOL[torch.float32][1])
        qd, kd, vd = (t.to(torch.float64) for t in (q, k, v))
        self.assertGreater(rel_l2(out, reference_sdpa(qd, kd, vd, True, 0.3)), 1e-2)
        top_left = torch.softmax(((qd @ kd.repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(32)).masked_fill(
            torch.ones(12, 20, dtype=torch.bool).triu(1), float("-inf")), -1) @ vd.repeat_interleave(2, 1)
        self.assertGreater(rel_l2(out, top_left), 1e-2)

    def test_remote_attention_on_attnd_layout(self):
        import attnd_torch
        gen = torch.Generator().manual_seed(7)
        q, k, v = (torch.randn(2, 11, 4, 32, generator=gen).requires_grad_() for _ in range(3))
        out = attnd_torch.RemoteAttention.apply(q, k, v, False, None, CLIENT)  # [b, s, h, d]
        ref = reference_sdpa(*(t.detach().double().transpose(1, 2) for t in (q, k, v)), False, None).transpose(1, 2)
        self.assertLessEqual(rel_l2(out, ref), 1e-5)
        out.sum().backward()
        self.assertEqual(q.grad.shape, q.shape)

    def test_unsupported_arguments_are_refused(self):
        q = torch.randn(1, 4, 8, 16)
        kv = torch.randn(1, 2, 8, 16)
        with self.assertRaises(ValueError):
            CLIENT_SDPA(q, kv, kv)  # GQA without enable_gqa, as torch does
        with self.assertRaises(NotImplementedError):
            CLIENT_SDPA(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool))
        with self.assertRaises(NotImplementedError):
            CLIENT_SDPA(q, q, q, dropout_p=0.1)
        with self.assertRaises(ValueError):
            CLIENT_SDPA(q[0], q[0], q[0])


class AsyncClient(unittest.TestCase):

    def test_concurrent_forwards_and_a_backward_on_asyncio(self):
        import attnd_client
        gen = torch.Generator().manual_seed(8)
        cases = [random_case(gen, torch.float32, 1, 4, 2, 10 + i, 15 + 2 * i, 32) for i in range(4)]

        async def run():
            async with attnd_client.AsyncAttndClient(ADDRESS, stubs_dir=ARGS.stubs_dir,
                                                     proto_root=ARGS.proto_root) as aclient:
                info = await aclient.server_info()
                self.assertEqual(info.backend, "cpu")
                # attnd layout for the wire: [b, s, h, d]
                wire = [[t.transpose(1, 2).contiguous().numpy() for t in c[:3]] for c in cases]
                results = await asyncio.gather(*(aclient.forward(q, k, v, causal=True) for q, k, v in wire))
                q, k, v = wire[0]
                out, lse = results[0]
                grad = cases[0][3].transpose(1, 2).contiguous().numpy()
                grads = await aclient.backward(q, k, v, out, lse, grad, causal=True)
                return results, grads

        results, grads = asyncio.run(run())
        for (q, k, v, _), (out, lse) in zip(cases, results):
            ref = reference_sdpa(q.double(), k.double(), v.double(), True, None)
            self.assertLessEqual(rel_l2(torch.from_numpy(out.copy()).transpose(1, 2), ref), 1e-5)
            self.assertEqual(lse.shape, (1, 4, q.shape[2]))
        q, k, v, grad = cases[0]
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        (reference_sdpa(*leaves, True, None) * grad.double()).sum().backward()
        for got, leaf in zip(grads, leaves):
            self.assertLessEqual(rel_l2(torch.from_numpy(got.copy()).transpose(1, 2), leaf.grad), 1e-4)

    def test_unreachable_daemon_is_a_connection_error(self):
        import attnd_client

        async def run():
            async with attnd_client.AsyncAttndClient("127.0.0.1:1", stubs_dir=ARGS.stubs_dir,
                                                     proto_root=ARGS.proto_root, connect_timeout=0.5):
                pass

        with self.assertRaises(ConnectionError):
            asyncio.run(run())


def main():
    global ARGS, CLIENT, ADDRESS
    parser = argparse.ArgumentParser()
    parser.add_argument("--attnd", required=True)
    parser.add_argument("--stubs_dir", required=True)
    parser.add_argument("--client_dir", required=True)
    parser.add_argument("--proto_root", required=True)
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.client_dir)
    import attnd_client

    torch.set_num_threads(1)
    daemon, ADDRESS = start_daemon(ARGS.attnd)
    ok = False
    try:
        CLIENT = attnd_client.AttndClient(ADDRESS, stubs_dir=ARGS.stubs_dir, proto_root=ARGS.proto_root)
        result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
        ok = result.wasSuccessful() and result.testsRun > 0
        CLIENT.close()
        daemon.send_signal(signal.SIGTERM)
        if daemon.wait(timeout=30) != 0:
            print("attnd exited %d after SIGTERM" % daemon.returncode)
            ok = False
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if not ok:
            print("attnd output:\n" + "\n".join(OUTPUT[-50:]))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
