"""The Python client of attnd, on grpcio and numpy, with stubs generated from the .proto.

    import attnd_client
    client = attnd_client.AttndClient("127.0.0.1:7100", stubs_dir="/tmp/attnd_stubs")
    out, lse = client.forward(q, k, v, causal=True)          # numpy in, numpy float32 out
    dq, dk, dv = client.backward(q, k, v, out, lse, grad_out, causal=True)

    async with attnd_client.AsyncAttndClient("127.0.0.1:7100", stubs_dir=...) as aclient:
        out, lse = await aclient.forward(q, k, v, causal=True)   # grpc.aio, same arguments

Torch tensors and autograd: attnd_torch.py (RemoteAttention, remote_scaled_dot_product_attention).
Shared memory with a co-located daemon (no tensor bytes on the socket): attnd_shm.py.

Nothing here is generated into the source tree: generate_stubs() runs grpc_tools.protoc on
proto/attnd/v1/attention.proto into a directory the caller names (a build directory) and imports
the result from there.

Layouts are the wire protocol's (proto/attnd/v1/attention.proto): dense q [batch, seqlen_q,
heads_q, head_dim], k/v [batch, seqlen_k, heads_kv, head_dim]; packed q [total_q, heads_q,
head_dim] with cu_seqlens_q/cu_seqlens_k. Arrays are sent as given (float32 -> FP32, float16 ->
FP16); dtype="bf16" rounds float arrays to bfloat16 (nearest even), and a uint16 array with
dtype="bf16" is taken as raw bfloat16 bits.

Copies: a request costs the one copy protobuf needs (array -> bytes field; none more when the
array is already contiguous little-endian in the wire dtype). Responses come back as float32
arrays; with raw=True they come back in the wire dtype (bf16 as uint16 bits) as read-only
np.frombuffer views of the response's bytes: no copy at all.

Options mirror the C++ client's ClientOptions (client/attnd/client.h): target, default_timeout
(per-call deadline, None for none), connect_timeout (0: connect lazily), max_send/receive message
bytes (-1: unlimited), keepalive, wait_for_ready, and further grpc.* channel arguments; and for
scale-out load_balancing ("round_robin" over every address of a multi-address or DNS target,
"pick_first", or None for no service config) and retry (UNAVAILABLE retried up to
retry_max_attempts; retry=False turns it off); and for a daemon with TLS or tokens (its --tls_cert,
--tls_client_ca, --auth_tokens_file): use_tls, tls_ca_file (the CA that signed the daemon's
certificate; None: the system's roots), tls_cert_file + tls_key_file (this client's, for mutual
TLS), tls_server_name (the name to check the certificate for instead of the target's host) and
bearer_token (sent as "authorization: Bearer ..."; TLS only).

    client = attnd_client.AttndClient("attnd.example:7100", stubs_dir=..., tls_ca_file="ca.pem",
                                      bearer_token=open("token").read().strip())
"""

import importlib
import json
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


def service_config(load_balancing="round_robin", retry=True, retry_max_attempts=4):
    """The gRPC service config the C++ client sets (client/attnd/client.h): load_balancing over the
    addresses the target resolves to ("ipv4:h:p1,h:p2", "dns:///headless-service:7100"), and with
    `retry` a retry of attnd.v1.Attention calls failing UNAVAILABLE (or CANCELLED by a daemon that
    stops) with backoff 0.05 s .. 1 s; attention calls are pure, so a retry is safe."""
    if load_balancing not in ("round_robin", "pick_first"):
        raise ValueError(f"load_balancing must be round_robin or pick_first, not {load_balancing!r}")
    config = {"loadBalancingConfig": [{load_balancing: {}}]}
    if retry:
        if not 2 <= retry_max_attempts <= 5:
            raise ValueError(f"retry_max_attempts must be in [2, 5], not {retry_max_attempts}")
        config["methodConfig"] = [{
            "name": [{"service": "attnd.v1.Attention"}],
            "retryPolicy": {"maxAttempts": int(retry_max_attempts), "initialBackoff": "0.05s", "maxBackoff": "1s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]
    return json.dumps(config)


def channel_options(max_send_message_bytes=-1, max_receive_message_bytes=-1, keepalive_time=None,
                    keepalive_timeout=20.0, extra=(), load_balancing="round_robin", retry=True,
                    retry_max_attempts=4, retry_buffer_bytes=64 << 20):
    """grpc channel arguments for ClientOptions-like settings (seconds; None/0 disables keepalive).
    load_balancing=None sets no service config at all (gRPC's pick_first, no retry policy)."""
    # gRPC's default receive limit is 4 MiB: far too small for attention tensors.
    options = [("grpc.max_send_message_length", int(max_send_message_bytes)),
               ("grpc.max_receive_message_length", int(max_receive_message_bytes))]
    if keepalive_time:
        options += [("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
                    ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000))]
    if load_balancing is not None:
        options.append(("grpc.service_config", service_config(load_balancing, retry, retry_max_attempts)))
    options.append(("grpc.enable_retries", 1 if retry else 0))
    if retry:
        # gRPC keeps each request to send it again only up to this size (default 256 KiB).
        options.append(("grpc.per_rpc_retry_buffer_size", int(retry_buffer_bytes)))
    return options + list(extra)


def channel_credentials(use_tls=False, tls_ca_file=None, tls_cert_file=None, tls_key_file=None,
                        bearer_token=None):
    """grpc.ChannelCredentials for these options (as the C++ client's ClientOptions), or None for
    plaintext. TLS is on when use_tls is set or any tls_* file is named."""
    tls = use_tls or any(f is not None for f in (tls_ca_file, tls_cert_file, tls_key_file))
    if not tls:
        if bearer_token:
            raise ValueError("bearer_token needs TLS (use_tls or tls_ca_file): grpc sends no token over plaintext")
        return None
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ValueError("tls_cert_file and tls_key_file go together (mutual TLS)")

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls_ca_file) if tls_ca_file else None,
        private_key=read(tls_key_file) if tls_key_file else None,
        certificate_chain=read(tls_cert_file) if tls_cert_file else None)
    if bearer_token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(bearer_token))
    return credentials


def _security(credentials, use_tls, tls_ca_file, tls_cert_file, tls_key_file, tls_server_name, bearer_token):
    """The credentials (None: plaintext) and extra channel options a client's TLS arguments ask for."""
    own = channel_credentials(use_tls, tls_ca_file, tls_cert_file, tls_key_file, bearer_token)
    if credentials is not None and own is not None:
        raise ValueError("pass either credentials or the tls_*/bearer_token arguments, not both")
    options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
    return (credentials if credentials is not None else own), options


class _Messages:
    """Builds request messages from arrays and reads response tensors; shared by both clients."""

    _NUMPY_DTYPES = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}
    _WIRE_NUMPY = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "bf16": np.dtype("<u2")}

    def _init_messages(self, pb2):
        self.pb2 = pb2
        self._wire = {"bf16": pb2.DTYPE_BF16, "fp16": pb2.DTYPE_FP16, "fp32": pb2.DTYPE_FP32}
        self._wire_name = {v: k for k, v in self._wire.items()}

    def tensor(self, array, dtype=None):
        """A Tensor message from a numpy array; dtype "bf16"/"fp16"/"fp32" or None (from the array)."""
        array = np.asarray(array)
        if dtype is None:
            dtype = self._NUMPY_DTYPES.get(array.dtype)
            if dtype is None:
                raise ValueError("cannot send a %s array without dtype=" % array.dtype)
        if dtype not in self._WIRE_NUMPY:
            raise ValueError("dtype %r is not one of bf16, fp16, fp32" % (dtype,))
        if dtype == "bf16" and array.dtype not in (np.uint16, np.int16):
            array = float32_to_bf16_bits(array)
        # No copy when the array already is contiguous in the wire dtype; then one into the message.
        if dtype == "bf16":
            data = np.ascontiguousarray(array).view("<u2")  # int16 (torch's bf16 bits) reads the same
        else:
            data = np.ascontiguousarray(array, dtype=self._WIRE_NUMPY[dtype])
        return self.pb2.Tensor(dtype=self._wire[dtype], shape=list(array.shape), data=data.tobytes())

    def to_numpy(self, tensor, raw=False):
        """A response Tensor as an array of its shape: float32, or (raw) its wire dtype without a copy
        (bf16 as uint16 bits). Raw arrays are read-only views of the message's bytes."""
        name = self._wire_name.get(tensor.dtype)
        if name is None:
            raise ValueError("response tensor has dtype %d" % tensor.dtype)
        values = np.frombuffer(tensor.data, dtype=self._WIRE_NUMPY[name]).reshape(tuple(tensor.shape))
        if raw or name == "fp32":
            return values
        return bf16_bits_to_float32(values) if name == "bf16" else values.astype(np.float32)

    def params(self, causal=False, scale=0.0, cu_seqlens_q=None, cu_seqlens_k=None, deterministic=False):
        p = self.pb2.AttentionParams(causal=causal, softmax_scale=scale or 0.0, deterministic=deterministic)
        if (cu_seqlens_q is None) != (cu_seqlens_k is None):
            raise ValueError("cu_seqlens_q and cu_seqlens_k go together")
        if cu_seqlens_q is not None:
            p.cu_seqlens_q.extend(int(x) for x in cu_seqlens_q)
            p.cu_seqlens_k.extend(int(x) for x in cu_seqlens_k)
        return p

    def forward_request(self, q, k, v, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None, cu_seqlens_k=None):
        return self.pb2.ForwardRequest(
            q=self.tensor(q, dtype), k=self.tensor(k, dtype), v=self.tensor(v, dtype),
            params=self.params(causal, scale, cu_seqlens_q, cu_seqlens_k))

    def backward_request(self, q, k, v, out, lse, grad_out, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None,
                         cu_seqlens_k=None, deterministic=False):
        return self.pb2.BackwardRequest(
            q=self.tensor(q, dtype), k=self.tensor(k, dtype), v=self.tensor(v, dtype),
            out=self.tensor(out, dtype), lse=self.tensor(np.asarray(lse, dtype=np.float32), "fp32"),
            grad_out=self.tensor(grad_out, dtype),
            params=self.params(causal, scale, cu_seqlens_q, cu_seqlens_k, deterministic))

    def _timeout(self, timeout):
        return self.default_timeout if timeout is None else timeout


class AttndClient(_Messages):
    """One channel to an attnd daemon (blocking calls). Thread-safe as grpc channels and stubs are."""

    def __init__(self, target, stubs_dir, proto_root=DEFAULT_PROTO_ROOT, timeout=60.0, connect_timeout=10.0,
                 max_send_message_bytes=-1, max_receive_message_bytes=-1, keepalive_time=None,
                 keepalive_timeout=20.0, wait_for_ready=False, channel_args=(), credentials=None,
                 load_balancing="round_robin", retry=True, retry_max_attempts=4, use_tls=False, tls_ca_file=None,
                 tls_cert_file=None, tls_key_file=None, tls_server_name=None, bearer_token=None):
        pb2, pb2_grpc = load_stubs(stubs_dir, proto_root)
        self._init_messages(pb2)
        self.target = target
        self.default_timeout = timeout
        self.wait_for_ready = wait_for_ready
        credentials, tls_options = _security(credentials, use_tls, tls_ca_file, tls_cert_file, tls_key_file,
                                             tls_server_name, bearer_token)
        options = channel_options(max_send_message_bytes, max_receive_message_bytes, keepalive_time,
                                  keepalive_timeout, list(channel_args) + tls_options, load_balancing=load_balancing,
                                  retry=retry, retry_max_attempts=retry_max_attempts)
        self.channel = (grpc.secure_channel(target, credentials, options=options) if credentials
                        else grpc.insecure_channel(target, options=options))
        if connect_timeout:
            try:
                grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
            except grpc.FutureTimeoutError:
                self.channel.close()
                raise ConnectionError("attnd at %s not reachable within %g s" % (target, connect_timeout))
        self.stub = pb2_grpc.AttentionStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def forward(self, q, k, v, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None, cu_seqlens_k=None,
                timeout=None, raw=False):
        """Returns (out, lse): float32 arrays (raw: out in the wire dtype, zero-copy). scale 0: 1/sqrt(head_dim)."""
        request = self.forward_request(q, k, v, causal, scale, dtype, cu_seqlens_q, cu_seqlens_k)
        response = self.stub.Forward(request, timeout=self._timeout(timeout), wait_for_ready=self.wait_for_ready)
        return self.to_numpy(response.out, raw), self.to_numpy(response.lse)

    def backward(self, q, k, v, out, lse, grad_out, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None,
                 cu_seqlens_k=None, deterministic=False, timeout=None, raw=False):
        """Returns (grad_q, grad_k, grad_v): float32 arrays (raw: the wire dtype, zero-copy)."""
        request = self.backward_request(q, k, v, out, lse, grad_out, causal, scale, dtype, cu_seqlens_q,
                                        cu_seqlens_k, deterministic)
        response = self.stub.Backward(request, timeout=self._timeout(timeout), wait_for_ready=self.wait_for_ready)
        return tuple(self.to_numpy(t, raw) for t in (response.grad_q, response.grad_k, response.grad_v))

    def server_info(self, timeout=None):
        return self.stub.GetServerInfo(self.pb2.GetServerInfoRequest(), timeout=self._timeout(timeout))


class AsyncAttndClient(_Messages):
    """The same calls on grpc.aio, for asyncio programs: `await client.forward(...)`.

    Create it inside the running event loop (grpc.aio channels belong to one loop); `await
    client.wait_ready()` connects up front (the constructor cannot await), close with `await
    client.close()` or use `async with`.
    """

    def __init__(self, target, stubs_dir, proto_root=DEFAULT_PROTO_ROOT, timeout=60.0, connect_timeout=10.0,
                 max_send_message_bytes=-1, max_receive_message_bytes=-1, keepalive_time=None,
                 keepalive_timeout=20.0, wait_for_ready=False, channel_args=(), credentials=None,
                 load_balancing="round_robin", retry=True, retry_max_attempts=4, use_tls=False, tls_ca_file=None,
                 tls_cert_file=None, tls_key_file=None, tls_server_name=None, bearer_token=None):
        pb2, pb2_grpc = load_stubs(stubs_dir, proto_root)
        self._init_messages(pb2)
        self.target = target
        self.default_timeout = timeout
        self.connect_timeout = connect_timeout
        self.wait_for_ready = wait_for_ready
        credentials, tls_options = _security(credentials, use_tls, tls_ca_file, tls_cert_file, tls_key_file,
                                             tls_server_name, bearer_token)
        options = channel_options(max_send_message_bytes, max_receive_message_bytes, keepalive_time,
                                  keepalive_timeout, list(channel_args) + tls_options, load_balancing=load_balancing,
                                  retry=retry, retry_max_attempts=retry_max_attempts)
        self.channel = (grpc.aio.secure_channel(target, credentials, options=options) if credentials
                        else grpc.aio.insecure_channel(target, options=options))
        self.stub = pb2_grpc.AttentionStub(self.channel)

    async def wait_ready(self, timeout=None):
        import asyncio
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise ConnectionError("attnd at %s not reachable within %g s" % (self.target, timeout))

    async def close(self):
        await self.channel.close()

    async def __aenter__(self):
        if self.connect_timeout:
            await self.wait_ready()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def forward(self, q, k, v, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None, cu_seqlens_k=None,
                      timeout=None, raw=False):
        request = self.forward_request(q, k, v, causal, scale, dtype, cu_seqlens_q, cu_seqlens_k)
        response = await self.stub.Forward(request, timeout=self._timeout(timeout), wait_for_ready=self.wait_for_ready)
        return self.to_numpy(response.out, raw), self.to_numpy(response.lse)

    async def backward(self, q, k, v, out, lse, grad_out, causal=False, scale=0.0, dtype=None, cu_seqlens_q=None,
                       cu_seqlens_k=None, deterministic=False, timeout=None, raw=False):
        request = self.backward_request(q, k, v, out, lse, grad_out, causal, scale, dtype, cu_seqlens_q,
                                        cu_seqlens_k, deterministic)
        response = await self.stub.Backward(request, timeout=self._timeout(timeout),
                                            wait_for_ready=self.wait_for_ready)
        return tuple(self.to_numpy(t, raw) for t in (response.grad_q, response.grad_k, response.grad_v))

    async def server_info(self, timeout=None):
        return await self.stub.GetServerInfo(self.pb2.GetServerInfoRequest(), timeout=self._timeout(timeout))
