"""A client that is not ours gets the same numbers.

Starts the real attnd executable (--backend=cpu --listen=127.0.0.1:0), talks to it with grpcio and
stubs generated from proto/attnd/v1/attention.proto (client/python/attnd_client.py), and compares
Forward/Backward results with a numpy float64 reference computed here, independently of the C++
oracle. Run by ctest with Debian's /usr/bin/python3:

    python3 python_client_test.py --attnd build/bin/attnd --stubs_dir build/... \
        --client_dir client/python --proto_root proto
"""

import argparse
import math
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

import grpc
import numpy as np

ARGS = None
CLIENT = None
DAEMON = None
OUTPUT = []  # the daemon's output lines, for failure messages


# The numpy float64 reference -----------------------------------------------------------------------

def sequences(total_q, total_k, cu_q, cu_k, dense_batch):
    """(q rows, k rows) slices of each sequence."""
    if cu_q is None:
        sq, sk = total_q // dense_batch, total_k // dense_batch
        return [(slice(b * sq, (b + 1) * sq), slice(b * sk, (b + 1) * sk)) for b in range(dense_batch)]
    return [(slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])) for b in range(len(cu_q) - 1)]


def flatten(x):
    """Dense [b, s, h, d] -> packed [b*s, h, d]; packed stays."""
    x = np.asarray(x, dtype=np.float64)
    return (x.reshape(-1, x.shape[-2], x.shape[-1]), x.shape[0]) if x.ndim == 4 else (x, None)


def reference_forward(q, k, v, causal, scale, cu_q=None, cu_k=None):
    """out like q, lse dense [b, h, sq] / packed [h, total_q]; rows seeing no key: out 0, lse +inf."""
    qf, batch = flatten(q)
    kf, _ = flatten(k)
    vf, _ = flatten(v)
    hq, hkv, d = qf.shape[1], kf.shape[1], qf.shape[2]
    scale = scale or 1.0 / math.sqrt(d)
    out = np.zeros_like(qf)
    lse = np.full((hq, qf.shape[0]), np.inf)
    for rq, rk in sequences(qf.shape[0], kf.shape[0], cu_q, cu_k, batch):
        sq, sk = rq.stop - rq.start, rk.stop - rk.start
        visible = np.ones((sq, sk), dtype=bool)
        if causal:  # bottom-right aligned: query i sees key j iff j <= i + sk - sq
            visible = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        for h in range(hq):
            g = h // (hq // hkv)
            s = scale * qf[rq, h, :] @ kf[rk, g, :].T
            s = np.where(visible, s, -np.inf)
            m = s.max(axis=1, initial=-np.inf, keepdims=True)
            seen = np.isfinite(m[:, 0])
            p = np.where(seen[:, None], np.exp(s - np.where(seen[:, None], m, 0)), 0.0)
            l = p.sum(axis=1)
            out[rq, h, :] = np.where(seen[:, None], (p / np.where(seen, l, 1)[:, None]) @ vf[rk, g, :], 0.0)
            lse[h, rq] = np.where(seen, m[:, 0] + np.log(np.where(seen, l, 1)), np.inf)
    if batch is not None:
        out = out.reshape(np.shape(q))
        lse = lse.reshape(hq, batch, -1).transpose(1, 0, 2)
    return out, lse


def reference_backward(q, k, v, grad_out, causal, scale):
    """Dense only: (dq, dk, dv) of sum(out * grad_out), dK/dV summed over each KV group."""
    qf, batch = flatten(q)
    kf, _ = flatten(k)
    vf, _ = flatten(v)
    gf, _ = flatten(grad_out)
    hq, hkv, d = qf.shape[1], kf.shape[1], qf.shape[2]
    scale = scale or 1.0 / math.sqrt(d)
    dq, dk, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(vf)
    for rq, rk in sequences(qf.shape[0], kf.shape[0], None, None, batch):
        sq, sk = rq.stop - rq.start, rk.stop - rk.start
        visible = np.ones((sq, sk), dtype=bool)
        if causal:
            visible = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        for h in range(hq):
            g = h // (hq // hkv)
            s = np.where(visible, scale * qf[rq, h, :] @ kf[rk, g, :].T, -np.inf)
            m = s.max(axis=1, initial=-np.inf, keepdims=True)
            seen = np.isfinite(m)
            p = np.where(seen, np.exp(s - np.where(seen, m, 0)), 0.0)
            p = p / np.where(seen, p.sum(axis=1, keepdims=True), 1)
            o = p @ vf[rk, g, :]
            do = gf[rq, h, :]
            dv[rk, g, :] += p.T @ do
            dp = do @ vf[rk, g, :].T
            ds = p * (dp - (do * o).sum(axis=1, keepdims=True))
            dq[rq, h, :] += scale * ds @ kf[rk, g, :]
            dk[rk, g, :] += scale * ds.T @ qf[rq, h, :]
    return dq.reshape(np.shape(q)), dk.reshape(np.shape(k)), dv.reshape(np.shape(v))


# Helpers ---------------------------------------------------------------------------------------------

def as_sent(x, dtype):
    """What the daemon receives for float32 x sent as dtype, as float64."""
    import attnd_client
    if dtype == "bf16":
        return attnd_client.bf16_bits_to_float32(attnd_client.float32_to_bf16_bits(x)).astype(np.float64)
    if dtype == "fp16":
        return x.astype(np.float16).astype(np.float64)
    return x.astype(np.float64)


def rel_l2(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, "shape %s, reference %s" % (got.shape, want.shape)
    assert not np.isnan(got).any(), "NaN in the response"
    inf = np.isinf(want) | np.isinf(got)
    assert np.array_equal(got[inf], want[inf]), "infinities differ from the reference"
    diff = np.linalg.norm(got[~inf] - want[~inf])
    ref = np.linalg.norm(want[~inf])
    return diff / ref if ref > 0 else diff


OUT_TOL = {"bf16": 1e-2, "fp16": 2e-3, "fp32": 1e-5}
LSE_TOL = 1e-5


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# Tests -----------------------------------------------------------------------------------------------

class ForwardMatchesNumpy(unittest.TestCase):

    def check_forward(self, dtype, q, k, v, causal=False, scale=0.0, cu_q=None, cu_k=None):
        out, lse = CLIENT.forward(q, k, v, causal=causal, scale=scale, dtype=dtype, cu_seqlens_q=cu_q,
                                  cu_seqlens_k=cu_k)
        want_out, want_lse = reference_forward(as_sent(q, dtype), as_sent(k, dtype), as_sent(v, dtype), causal,
                                               scale, cu_q, cu_k)
        self.assertEqual(out.shape, q.shape)
        err_out, err_lse = rel_l2(out, want_out), rel_l2(lse, want_lse)
        self.assertLessEqual(err_out, OUT_TOL[dtype], "out")
        self.assertLessEqual(err_lse, LSE_TOL, "lse")
        return out, lse

    def test_fp32_dense(self):
        rng = np.random.default_rng(1)
        self.check_forward("fp32", randn(rng, 2, 33, 4, 64), randn(rng, 2, 33, 4, 64), randn(rng, 2, 33, 4, 64))

    def test_bf16_causal_seqlen_q_shorter(self):
        rng = np.random.default_rng(2)
        q, k, v = randn(rng, 1, 17, 4, 64), randn(rng, 1, 40, 4, 64), randn(rng, 1, 40, 4, 64)
        self.check_forward("bf16", q, k, v, causal=True)

    def test_bf16_sent_as_uint16_bits_is_the_same_call(self):
        import attnd_client
        rng = np.random.default_rng(3)
        q, k, v = randn(rng, 1, 9, 2, 32), randn(rng, 1, 9, 2, 32), randn(rng, 1, 9, 2, 32)
        bits = [attnd_client.float32_to_bf16_bits(x) for x in (q, k, v)]
        out_bits, lse_bits = CLIENT.forward(*bits, dtype="bf16")
        out_float, lse_float = CLIENT.forward(q, k, v, dtype="bf16")
        np.testing.assert_array_equal(out_bits, out_float)
        np.testing.assert_array_equal(lse_bits, lse_float)

    def test_fp32_causal_seqlen_q_longer_rows_without_keys(self):
        rng = np.random.default_rng(4)
        q, k, v = randn(rng, 1, 30, 2, 32), randn(rng, 1, 12, 2, 32), randn(rng, 1, 12, 2, 32)
        out, lse = self.check_forward("fp32", q, k, v, causal=True)
        self.assertTrue(np.isinf(lse[0, 0, :18]).all())  # queries 0..17 see no key
        self.assertTrue((out[0, :18] == 0).all())

    def test_fp16_gqa_custom_scale(self):
        rng = np.random.default_rng(5)
        self.check_forward("fp16", randn(rng, 2, 20, 8, 64), randn(rng, 2, 31, 2, 64), randn(rng, 2, 31, 2, 64),
                           scale=0.3)

    def test_bf16_packed_varlen_causal(self):
        rng = np.random.default_rng(6)
        lq, lk = [1, 17, 5, 30], [3, 17, 40, 30]
        cu_q, cu_k = np.cumsum([0] + lq), np.cumsum([0] + lk)
        q = randn(rng, cu_q[-1], 4, 64)
        k, v = randn(rng, cu_k[-1], 2, 64), randn(rng, cu_k[-1], 2, 64)
        out, lse = self.check_forward("bf16", q, k, v, causal=True, cu_q=list(cu_q), cu_k=list(cu_k))
        self.assertEqual(lse.shape, (4, cu_q[-1]))

    def test_long_sequence_1000(self):
        rng = np.random.default_rng(7)
        self.check_forward("bf16", randn(rng, 1, 1000, 2, 64), randn(rng, 1, 1000, 2, 64), randn(rng, 1, 1000, 2, 64),
                           causal=True)


class BackwardMatchesNumpy(unittest.TestCase):

    def test_fp32_gqa_causal(self):
        rng = np.random.default_rng(8)
        q, k, v = randn(rng, 2, 17, 4, 32), randn(rng, 2, 23, 2, 32), randn(rng, 2, 23, 2, 32)
        grad_out = randn(rng, 2, 17, 4, 32)
        out, lse = CLIENT.forward(q, k, v, causal=True, dtype="fp32")
        dq, dk, dv = CLIENT.backward(q, k, v, out, lse, grad_out, causal=True, dtype="fp32")
        want = reference_backward(q, k, v, grad_out, True, 0.0)
        for name, got, ref in zip(("grad_q", "grad_k", "grad_v"), (dq, dk, dv), want):
            self.assertLessEqual(rel_l2(got, ref), 1e-4, name)


class Service(unittest.TestCase):

    def test_server_info(self):
        info = CLIENT.server_info()
        self.assertEqual(info.backend, "cpu")
        self.assertTrue(info.version)
        pb2 = CLIENT.pb2
        self.assertTrue({pb2.DTYPE_BF16, pb2.DTYPE_FP16, pb2.DTYPE_FP32} <= set(info.supported_dtypes))
        self.assertEqual(info.limits.max_head_dim, 256)
        self.assertGreater(info.limits.max_request_bytes, 0)

    def test_bad_request_names_the_field_and_the_daemon_serves_on(self):
        pb2 = CLIENT.pb2
        rng = np.random.default_rng(9)
        x = randn(rng, 1, 8, 2, 16)
        request = pb2.ForwardRequest(q=CLIENT.tensor(x), k=CLIENT.tensor(x), v=CLIENT.tensor(randn(rng, 1, 8, 3, 16)))
        with self.assertRaises(grpc.RpcError) as caught:
            CLIENT.stub.Forward(request, timeout=30)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("v", caught.exception.details())
        ForwardMatchesNumpy("test_fp32_dense").test_fp32_dense()


# The daemon ------------------------------------------------------------------------------------------

def start_daemon(attnd):
    proc = subprocess.Popen([attnd, "--backend=cpu", "--listen=127.0.0.1:0", "--threads=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()

    def drain():
        for line in proc.stdout:
            OUTPUT.append(line.rstrip())
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        m = re.search(r"attnd listening on (\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("attnd printed no 'attnd listening on' line:\n" + "\n".join(OUTPUT))


def main():
    global ARGS, CLIENT, DAEMON
    parser = argparse.ArgumentParser()
    parser.add_argument("--attnd", required=True)
    parser.add_argument("--stubs_dir", required=True)
    parser.add_argument("--client_dir", required=True)
    parser.add_argument("--proto_root", required=True)
    ARGS, rest = parser.parse_known_args()
    sys.dont_write_bytecode = True  # no __pycache__ in the source tree's client/python
    sys.path.insert(0, ARGS.client_dir)
    import attnd_client

    DAEMON, address = start_daemon(ARGS.attnd)
    ok = False
    try:
        CLIENT = attnd_client.AttndClient(address, stubs_dir=ARGS.stubs_dir, proto_root=ARGS.proto_root)
        result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
        ok = result.wasSuccessful() and result.testsRun > 0
        CLIENT.close()
        # SIGTERM: the daemon drains and exits 0.
        DAEMON.send_signal(signal.SIGTERM)
        code = DAEMON.wait(timeout=30)
        if code != 0:
            print("attnd exited %d after SIGTERM" % code)
            ok = False
    finally:
        if DAEMON.poll() is None:
            DAEMON.kill()
            DAEMON.wait()
        DAEMON.stdout.close()
        if not ok:
            print("attnd output:\n" + "\n".join(OUTPUT[-50:]))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
