"""Python over shared memory: a forward whose q, k, v and out, lse live in a region matches the same
forward over protobuf bytes bit for bit, and a misused span gets the daemon's clear status.

    python3 python_shm_test.py --attnd build/bin/attnd --stubs_dir DIR --client_dir client/python \
        --proto_root proto
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import unittest

import grpc
import numpy as np

ARGS = None


class SharedMemoryForward(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="attnd-pyshm-")
        cls.daemon = subprocess.Popen(
            [ARGS.attnd, "--backend=cpu", "--threads=2", "--listen=127.0.0.1:0",
             "--region_socket=" + os.path.join(cls.dir, "regions.sock")],
            stderr=subprocess.PIPE, text=True)
        for line in cls.daemon.stderr:
            m = re.match(r"attnd listening on (\S+)", line)
            if m:
                break
        else:
            raise RuntimeError("attnd did not start")
        cls.client = attnd_client.AttndClient(m.group(1), ARGS.stubs_dir, ARGS.proto_root)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.terminate()
        cls.daemon.wait(timeout=30)
        os.rmdir(cls.dir)

    def test_region_forward_matches_bytes_forward_bit_for_bit(self):
        rng = np.random.default_rng(3)
        b, s, h, d = 1, 57, 2, 32
        q, k, v = (rng.standard_normal((b, s, h, d)).astype(np.float32) for _ in range(3))
        out_bytes, lse = self.client.forward(q, k, v, causal=True, dtype="bf16", raw=True)
        with attnd_shm.RegionSession.open(self.client) as session:
            region = attnd_shm.SharedMemoryRegion(self.client, session, 1 << 20, "pytest")
            n = b * s * h * d * 2
            offsets = [0, 4096 * 4, 4096 * 8, 4096 * 12, 4096 * 16]
            for off, x in zip(offsets, (q, k, v)):
                region.array(off, x.shape, np.uint16)[...] = attnd_client.float32_to_bf16_bits(x)
            pb2 = self.client.pb2
            request = pb2.ForwardRequest(
                q=region.tensor(offsets[0], q.shape, "bf16"), k=region.tensor(offsets[1], k.shape, "bf16"),
                v=region.tensor(offsets[2], v.shape, "bf16"), params=self.client.params(causal=True),
                out_region=region.span(offsets[3], n), lse_region=region.span(offsets[4], b * h * s * 4))
            response = self.client.stub.Forward(request)
            self.assertEqual(response.out.data, b"")
            self.assertEqual(response.out.region.region_id, region.info.region_id)
            np.testing.assert_array_equal(region.array(offsets[3], q.shape, np.uint16), out_bytes)
            np.testing.assert_array_equal(region.array(offsets[4], (b, h, s), np.float32), lse)

            bad = pb2.ForwardRequest()
            bad.CopyFrom(request)
            bad.q.region.key = "0" * 32
            with self.assertRaises(grpc.RpcError) as e:
                self.client.stub.Forward(bad)
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("q.region.key", e.exception.details())
        # The session closed: its region is gone.
        with self.assertRaises(grpc.RpcError) as e:
            self.client.stub.Forward(request)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--attnd", required=True)
    parser.add_argument("--stubs_dir", required=True)
    parser.add_argument("--client_dir", required=True)
    parser.add_argument("--proto_root", required=True)
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.client_dir)
    import attnd_client  # noqa: E402
    import attnd_shm  # noqa: E402
    attnd_client.generate_stubs(ARGS.stubs_dir, ARGS.proto_root)
    unittest.main(argv=[sys.argv[0]] + rest)
