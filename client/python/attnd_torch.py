"""attnd for PyTorch: attention computed by a remote attnd daemon, with autograd.

    import attnd_client, attnd_torch
    attnd_torch.set_default_client(attnd_client.AttndClient("127.0.0.1:7100", stubs_dir="/tmp/attnd_stubs"))
    out = attnd_torch.remote_scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out.sum().backward()                    # q.grad, k.grad, v.grad come from the daemon's Backward

remote_scaled_dot_product_attention takes torch.nn.functional.scaled_dot_product_attention's
layout [batch, heads, seqlen, head_dim] and its common arguments (is_causal, scale, enable_gqa).
Differences from torch's: attn_mask and dropout_p other than None/0 are refused; with
is_causal and seqlen_q != seqlen_k the mask is aligned to the bottom-right corner (query i sees
keys j <= i + seqlen_k - seqlen_q, flash-attn's convention and attnd's), where torch's is aligned
top-left; the two agree when seqlen_q == seqlen_k.

RemoteAttention.apply(q, k, v, causal, scale, client) is the autograd Function on attnd's own
layout [batch, seqlen, heads, head_dim]: forward calls Forward and keeps out and lse, backward
calls Backward with them. Tensors travel in their own dtype (float32, float16, bfloat16 as raw
bits); float64 travels as float32 and comes back as float64. Results share memory with the
response messages (torch.from_numpy over np.frombuffer): no copy after the one out of gRPC.
CUDA tensors are copied to the host and back.

Without a client argument, the default client is the one set_default_client() set, or one made on
first use from $ATTND_TARGET (default 127.0.0.1:7100) with stubs generated into $ATTND_STUBS_DIR
(default: a directory under the system's temporary directory).
"""

import os
import tempfile
import threading
import warnings

import numpy as np
import torch

import attnd_client

_default = None
_default_lock = threading.Lock()


def set_default_client(client):
    global _default
    with _default_lock:
        _default = client


def default_client():
    global _default
    with _default_lock:
        if _default is None:
            stubs = os.environ.get("ATTND_STUBS_DIR") or os.path.join(tempfile.gettempdir(),
                                                                      "attnd_stubs-%d" % os.getuid())
            _default = attnd_client.AttndClient(os.environ.get("ATTND_TARGET", "127.0.0.1:7100"), stubs_dir=stubs)
        return _default


# Tensors <-> arrays ------------------------------------------------------------------------------

_WIRE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def to_wire(t):
    """(numpy array, wire dtype) for a tensor; no copy when it is a contiguous CPU tensor of a wire dtype."""
    t = t.detach()
    if t.dtype not in _WIRE:
        t = t.to(torch.float32)
    t = t.cpu().contiguous()
    dtype = _WIRE[t.dtype]
    if dtype == "bf16":
        return t.view(torch.int16).numpy(), dtype  # the raw bits; numpy has no bfloat16
    return t.numpy(), dtype


def from_wire(array, like):
    """A tensor of `like`'s dtype and device over a raw response array (bf16 as uint16 bits)."""
    with warnings.catch_warnings():
        # np.frombuffer over the response bytes is read-only; the bytes belong to this tensor alone.
        warnings.simplefilter("ignore", UserWarning)
        if array.dtype == np.uint16:
            t = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(array)
    return t.to(device=like.device, dtype=like.dtype)  # no-op (no copy) on CPU in the same dtype


class RemoteAttention(torch.autograd.Function):
    """Attention on attnd's layout q [b, sq, hq, d], k/v [b, sk, hkv, d]; returns out [b, sq, hq, d]."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, scale=None, client=None):
        client = client or default_client()
        (qa, dtype), (ka, _), (va, _) = to_wire(q), to_wire(k), to_wire(v)
        if not (to_wire_dtype(k) == to_wire_dtype(v) == dtype):
            raise ValueError("q, k and v must have one dtype, got %s, %s, %s" % (q.dtype, k.dtype, v.dtype))
        out, lse = client.forward(qa, ka, va, causal=causal, scale=scale or 0.0, dtype=dtype, raw=True)
        out = from_wire(out, q)
        lse = _readonly_tensor(lse)  # float32, a view of the response; only read again, by backward
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.client = causal, scale, client
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        (qa, dtype), (ka, _), (va, _), (oa, _) = to_wire(q), to_wire(k), to_wire(v), to_wire(out)
        ga, _ = to_wire(grad_out.to(out.dtype))
        dq, dk, dv = ctx.client.backward(qa, ka, va, oa, lse.numpy(), ga, causal=ctx.causal, scale=ctx.scale or 0.0,
                                         dtype=dtype, raw=True)
        return from_wire(dq, q), from_wire(dk, k), from_wire(dv, v), None, None, None


def to_wire_dtype(t):
    return _WIRE.get(t.dtype, "fp32")


def _readonly_tensor(array):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def remote_scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                        scale=None, enable_gqa=False, client=None):
    """torch.nn.functional.scaled_dot_product_attention on attnd: [batch, heads, seqlen, head_dim] in and out."""
    if attn_mask is not None:
        raise NotImplementedError("attnd takes no attn_mask: use is_causal, or pass None")
    if dropout_p:
        raise NotImplementedError("attnd has no attention dropout: dropout_p must be 0")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError("%s must be [batch, heads, seqlen, head_dim], got shape %s" % (name, tuple(t.shape)))
    hq, hkv = query.shape[1], key.shape[1]
    if hq != hkv and not enable_gqa:
        raise ValueError("query has %d heads and key %d: pass enable_gqa=True for grouped-query attention" % (hq, hkv))
    out = RemoteAttention.apply(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), is_causal,
                                scale, client)
    return out.transpose(1, 2)
