"""Shared memory with a co-located attnd, from Python (the C++ twin: client/attnd/region_session.h).

    session = attnd_shm.RegionSession.open(client)            # the lease: regions live while it does
    region = attnd_shm.SharedMemoryRegion(client, session, 64 << 20, "kv")
    q_view = region.array(0, q.shape, np.uint16)               # numpy view of the shared bytes
    q_view[...] = q_bits                                       # the only copy q ever takes
    request = client.pb2.ForwardRequest(q=region.tensor(0, q.shape, "bf16"), ...,
                                        out_region=region.span(out_offset, out_bytes))
    client.stub.Forward(request)                               # out appears in region.array(out_offset, ...)

The region is a memfd sealed against shrinking, passed to the daemon over its region socket
(SCM_RIGHTS) and registered with RegisterSharedMemory; closing the session (or the process ending)
releases everything registered in it.
"""

import fcntl
import mmap
import os
import socket

import numpy as np


class RegionSession:
    """One connection to the daemon's region socket (attnd --region_socket)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self.token = self._expect("SESSION")

    @classmethod
    def open(cls, client):
        path = client.server_info().transports.region_socket
        if not path:
            raise RuntimeError("the daemon serves no shared-memory regions (no --region_socket)")
        return cls(path)

    def _expect(self, word):
        reply = self.sock.recv(512).decode()
        if reply.startswith(word + " "):
            return reply[len(word) + 1:]
        raise RuntimeError("region socket: " + (reply or "closed by the daemon"))

    def pass_fd(self, fd):
        """Hands the daemon a descriptor (ours stays open); returns its token."""
        socket.send_fds(self.sock, [b"FD"], [fd])
        return self._expect("FD")

    def close(self):
        """Ends the session; returns once the daemon has released its regions (up to 5 s).

        A handshake, not a bare close: our end stops sending, the daemon releases the regions and
        closes its end, and we wait for that, so no later request can still reach them."""
        if self.sock is None:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(5.0)
            while self.sock.recv(512):
                pass
        except OSError:
            pass
        finally:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SharedMemoryRegion:
    """A zero-filled region of `size` bytes mapped here and in the daemon."""

    _WIRE = {"bf16": np.dtype("<u2"), "fp16": np.dtype("<f2"), "fp32": np.dtype("<f4")}

    def __init__(self, client, session, size, label="python"):
        fd = os.memfd_create("attnd-" + label, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            self.memory = mmap.mmap(fd, size)
            pb2 = client.pb2
            self.info = client.stub.RegisterSharedMemory(pb2.RegisterSharedMemoryRequest(
                session=session.token, fd_token=session.pass_fd(fd), size=size, label=label))
        finally:
            os.close(fd)  # the mappings keep the memory
        self.pb2 = client.pb2
        self.size = size

    def array(self, offset, shape, dtype):
        """A numpy view of the bytes at `offset` (writes go straight to the shared memory)."""
        count = int(np.prod(shape))
        return np.frombuffer(self.memory, dtype=dtype, count=count, offset=offset).reshape(shape)

    def span(self, offset, size):
        return self.pb2.RegionSpan(region_id=self.info.region_id, key=self.info.key, offset=offset, size=size)

    def tensor(self, offset, shape, dtype):
        """A Tensor message naming the bytes at `offset` (shape in the wire layout, dtype bf16/fp16/fp32)."""
        size = int(np.prod(shape)) * self._WIRE[dtype].itemsize
        wire = {"bf16": self.pb2.DTYPE_BF16, "fp16": self.pb2.DTYPE_FP16, "fp32": self.pb2.DTYPE_FP32}[dtype]
        return self.pb2.Tensor(dtype=wire, shape=list(shape), region=self.span(offset, size))
