"""The Python client's TLS and token options against the real attnd daemon.

Makes certificates with make_test_certs.sh (openssl), starts attnd with mutual TLS, bearer tokens
and a plaintext health-only listener, and checks with client/python/attnd_client.py: a client with
certificate and token gets the right answer; no token is UNAUTHENTICATED, a wrong one
PERMISSION_DENIED, no client certificate fails the handshake (UNAVAILABLE); the health listener
answers SERVING in plaintext; SIGHUP reloads the tokens file; SIGTERM drains and exits 0.

    python3 python_tls_test.py --attnd build/bin/attnd --stubs_dir DIR --client_dir client/python \
        --proto_root proto --make_certs tests/reliability/make_test_certs.sh
"""

import argparse
import math
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc
import numpy as np

ARGS = None
TOKEN_A = "dHJhaW5lci1hLXRva2VuLTAx"
TOKEN_B = "bm90ZWJvb2stdG9rZW4tMDI="


class Daemon:
    """attnd as a child process; its stderr lines are collected for waiting and for failure messages."""

    def __init__(self, flags):
        self.proc = subprocess.Popen([ARGS.attnd, "--backend=cpu", "--threads=1", "--listen=127.0.0.1:0"] + flags,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()
        self.address = re.search(r"attnd listening on (\S+)", self.wait_for("attnd listening on")).group(1)
        self.health_address = re.search(r"health_address=(\S+)", self.wait_for("health_address=")).group(1)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text, timeout=30):
        deadline = time.time() + timeout
        for line in self.seen:
            if text in line:
                return line
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError("attnd never logged %r; it logged:\n%s" % (text, "\n".join(self.seen)))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def attention(q, k, v):
    """float64 dense attention, non-causal, scale 1/sqrt(d), k/v heads equal to q heads."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


class TlsAndTokens(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.client_dir)
        import attnd_client
        cls.attnd_client = attnd_client
        cls.dir = tempfile.mkdtemp(prefix="attnd-pytls-")
        subprocess.run(["bash", ARGS.make_certs, cls.dir], check=True)
        cls.tokens = os.path.join(cls.dir, "tokens")
        with open(cls.tokens, "w") as f:
            f.write("trainer-a %s\n" % TOKEN_A)
        cls.daemon = Daemon(["--tls_cert=" + cls.path("server.pem"), "--tls_key=" + cls.path("server.key"),
                             "--tls_client_ca=" + cls.path("ca.pem"), "--auth_tokens_file=" + cls.tokens,
                             "--health_listen=127.0.0.1:0"])

    @classmethod
    def tearDownClass(cls):
        if cls.daemon.proc.poll() is None:
            cls.daemon.proc.kill()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)

    def client(self, **tls):
        return self.attnd_client.AttndClient(self.daemon.address, stubs_dir=ARGS.stubs_dir, proto_root=ARGS.proto_root,
                                             connect_timeout=0, retry=False, timeout=30, **tls)

    def mtls(self, token):
        return dict(tls_ca_file=self.path("ca.pem"), tls_cert_file=self.path("client.pem"),
                    tls_key_file=self.path("client.key"), bearer_token=token)

    def forward_code(self, **tls):
        rng = np.random.default_rng(3)
        q, k, v = (rng.standard_normal((1, 9, 2, 16)).astype(np.float32) for _ in range(3))
        with self.client(**tls) as c:
            try:
                out, _ = c.forward(q, k, v)
            except grpc.RpcError as e:
                return e.code()
        err = np.linalg.norm(out - attention(q, k, v)) / np.linalg.norm(attention(q, k, v))
        self.assertLess(err, 1e-5)
        return grpc.StatusCode.OK

    def test_1_mutual_tls_and_token_gets_the_right_answer(self):
        self.assertEqual(self.forward_code(**self.mtls(TOKEN_A)), grpc.StatusCode.OK)

    def test_2_missing_or_wrong_token_and_missing_certificate_are_refused(self):
        self.assertEqual(self.forward_code(**self.mtls(None)), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.forward_code(**self.mtls(TOKEN_B)), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.forward_code(tls_ca_file=self.path("ca.pem"), bearer_token=TOKEN_A),
                         grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(ValueError):
            self.client(bearer_token=TOKEN_A)  # a token never goes over plaintext

    def test_3_health_listener_is_plaintext_and_serving(self):
        with grpc.insecure_channel(self.daemon.health_address) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
            self.assertEqual(check(b"", timeout=10), b"\x08\x01")  # HealthCheckResponse{status: SERVING}

    def test_4_sighup_reloads_the_tokens(self):
        with open(self.tokens, "w") as f:
            f.write("notebook %s\n" % TOKEN_B)
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for("auth tokens reloaded")
        self.assertEqual(self.forward_code(**self.mtls(TOKEN_B)), grpc.StatusCode.OK)
        self.assertEqual(self.forward_code(**self.mtls(TOKEN_A)), grpc.StatusCode.PERMISSION_DENIED)

    def test_5_sigterm_exits_zero(self):
        self.assertEqual(self.daemon.stop(), 0)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    for flag in ("--attnd", "--stubs_dir", "--client_dir", "--proto_root", "--make_certs"):
        parser.add_argument(flag, required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
