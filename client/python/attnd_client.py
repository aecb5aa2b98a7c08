"""A thin Python client of attnd, on grpcio and numpy, with stubs generated from the .proto.

    import attnd_client
    client = attnd_client.AttndClient("127.0.0.1:7100", stubs_dir="/tmp/attnd_stubs")
    out, lse = client.forward(q, k, v, causal=True)          # numpy in, numpy float32 out
    dq, dk, dv = client.backward(q, k, v, out, lse, grad_out, causal=True)

Nothing here is generated into the source tree: generate_stubs() runs grpc_tools.protoc on
proto/attnd/v1/attention.proto into a directory the caller names (a build directory) and imports
the result from there.

Layouts are the wire protocol's (proto/attnd/v1/attention.proto): dense q [batch, seqlen_q,
heads_q, head_dim], k/v [batch, seqlen_k, heads_kv, head_dim]; packed q [total_q, heads_q,
head_dim] with cu_seqlens_q/cu_seqlens_k. Arrays are sent as given (float32 -> FP32, float16 ->
FP16); dtype="bf16" rounds float arrays to bfloat16 (nearest even), and a uint16 array with
dtype="bf16" is taken as raw bfloat16 bits. Responses come back as float32 arrays.
"""

import importlib
import os
import sys

import grpc
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(_HERE, "..", "..", "proto"))
_PROTO = os.path.join("attnd", "v1", "attention.proto")


def generate_stubs(out_dir, proto_root=DEFAULT_PROTO_ROOT):
    """Generates attnd/v1/attention_pb2{,_grpc}.py under out_dir (when missing or stale)."""
    proto = os.path.join(proto_root, _PROTO)
    target = os.path.join(out_dir, "attnd", "v1", "attention_pb2_grpc.py")
    if os.path.exists(target) and os.path.getmtime(target) >= os.path.getmtime(proto):
        return out_dir
    from grpc_tools import protoc  # only needed to generate

    os.makedirs(out_dir, exist_ok=True)
    rc = protoc.main(["grpc_tools.protoc", "-I" + proto_root, "--python_out=" + out_dir,
                      "--grpc_python_out=" + out_dir, proto])
    if rc != 0:
        raise RuntimeError("grpc_tools.protoc failed (%d) on %s" % (rc, proto))
    return out_dir


def load_stubs(stubs_dir, proto_root=DEFAULT_PROTO_ROOT):
    """Returns the (attention_pb2, attention_pb2_grpc) modules, generating them if needed."""
    generate_stubs(stubs_dir, proto_root)
    if stubs_dir not in sys.path:
        sys.path.insert(0, stubs_dir)
    pb2 = importlib.import_module("attnd.v1.attention_pb2")
    pb2_grpc = importlib.import_module("attnd.v1.attention_pb2_grpc")
    return pb2, pb2_grpc


def float32_to_bf16_bits(x):
    """Rounds float32 values to bfloat16 (nearest, ties to even; NaN stays NaN); returns uint16 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    bits[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return bits


def bf16_bits_to_float32(bits):
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class AttndClient:
    """One channel to an attnd daemon. Thread-safe as grpc channels and stubs are."""

    _NUMPY_DTYPES = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}

    def __init__(self, target, stubs_dir, proto_root=DEFAULT_PROTO_ROOT, timeout=60.0, connect_timeout=10.0):
        self.pb2, pb2_grpc = load_stubs(stubs_dir, proto_root)
        self.timeout = timeout
        # gRPC's default receive limit is 4 MiB: far too small for attention tensors.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=options)
        grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        self.stub = pb2_grpc.AttentionStub(self.channel)
        self._wire = {"bf16": self.pb2.DTYPE_BF16, "fp16": self.pb2.DTYPE_FP16, "fp32": self.pb2.DTYPE_FP32}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Tensors -------------------------------------------------------------------------------------

    def tensor(self, array, dtype=None):
        """A Tensor message from a numpy array; dtype "bf16"/"fp16"/"fp32" or None (from the array)."""
        array = np.asarray(array)
        if dtype is None:
            dtype = self._NUMPY_DTYPES.get(array.dtype)
            if dtype is None:
                raise ValueError("cannot send a %s array without dtype=" % array.dtype)
        if dtype == "bf16":
            data = array if array.dtype == np.uint16 else float32_to_bf16_bits(array)
            payload = np.ascontiguousarray(data, dtype="<u2").tobytes()
        elif dtype == "fp16":
            payload = np.ascontiguousarray(array, dtype="<f2").tobytes()
        elif dtype == "fp32":
            payload = np.ascontiguousarray(array, dtype="<f4").tobytes()
        else:
            raise ValueError("dtype %r is not one of bf16, fp16, fp32" % (dtype,))
        return self.pb2.Tensor(dtype=self._wire[dtype], shape=list(array.shape), data=payload)

    def to_numpy(self, tensor):
        """A response Tensor as a float32 array of its shape."""
        shape = tuple(tensor.shape)
        if tensor.dtype == self.pb2.DTYPE_FP32:
            values = np.frombuffer(tensor.data, dtype="<f4")
        elif tensor.dtype == self.pb2.DTYPE_FP16:
            values = np.frombuffer(tensor.data, dtype="<f2").astype(np.float32)
        elif tensor.dtype == self.pb2.DTYPE_BF16:
            values = bf16_bits_to_float32(np.frombuffer(tensor.data, dtype="<u2"))
        else:
            raise ValueError("response tensor has dtype %d" % tensor.dtype)
        return values.reshape(shape).astype(np.float32, copy=False)

    def params(self, causal=False, scale=0.0, cu_seqlens_q=None, cu_seqlens_k=None, deterministic=False):
        p = self.pb2.AttentionParams(causal=causal, softmax_scale=scale, deterministic=deterministic)
        if cu_seqlens_q is not None:
            p.cu_seqlens_q.extend(int(x) for x in cu_seqlens_q)
            p.cu_seqlens_k.extend(int(x) for x in cu_seqlens_k)
        return p

    # Calls ---------------------------------------------------------------------------------------

    def forward(self, q, k, v, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None, cu_seqlens_k=None,
                timeout=None):
        """Returns (out, lse) as float32 arrays. scale 0: the daemon uses 1/sqrt(head_dim)."""
        request = self.pb2.ForwardRequest(
            q=self.tensor(q, dtype), k=self.tensor(k, dtype), v=self.tensor(v, dtype),
            params=self.params(causal, scale, cu_seqlens_q, cu_seqlens_k))
        response = self.stub.Forward(request, timeout=timeout or self.timeout)
        return self.to_numpy(response.out), self.to_numpy(response.lse)

    def backward(self, q, k, v, out, lse, grad_out, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None,
                 cu_seqlens_k=None, deterministic=False, timeout=None):
        """Returns (grad_q, grad_k, grad_v) as float32 arrays."""
        request = self.pb2.BackwardRequest(
            q=self.tensor(q, dtype), k=self.tensor(k, dtype), v=self.tensor(v, dtype),
            out=self.tensor(out, dtype), lse=self.tensor(np.asarray(lse, dtype=np.float32), "fp32"),
            grad_out=self.tensor(grad_out, dtype),
            params=self.params(causal, scale, cu_seqlens_q, cu_seqlens_k, deterministic))
        response = self.stub.Backward(request, timeout=timeout or self.timeout)
        return tuple(self.to_numpy(t) for t in (response.grad_q, response.grad_k, response.grad_v))

    def server_info(self, timeout=None):
        return self.stub.GetServerInfo(self.pb2.GetServerInfoRequest(), timeout=timeout or self.timeout)
