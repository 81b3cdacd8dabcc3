"""Byte streams that carry frames: the seam between the codec and the OS.

A `Stream` moves bytes and nothing else. `recv_into` writes what has arrived
into the buffer it is given (the decoder's current stage), `send` writes a
frame's parts without copying the payload. Timeouts belong to the callers.

Failures come out as kvmesh errors, never as the OS's: a closed, reset or
broken connection raises `StreamClosed`, a dial that cannot connect raises
`TransferError`, so callers above the streams catch `KvmeshError` only.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, Sequence

from kvmesh.errors import StreamClosed, TransferError

__all__ = ["RCVLOWAT_MAX", "Stream", "StreamClosed", "TcpStream"]

# A reader waiting for a big buffer is woken once this many bytes are queued
# (SO_RCVLOWAT), not on every few segments: each wake-up is a loop turn.
RCVLOWAT_MAX = 256 << 10


class Stream(Protocol):
    kind: str  # "tcp", "tls" (TCP under TLS, kvmesh.transfer.tls) or "ucx"

    async def recv_into(self, buf: memoryview) -> int:
        """Write at least one byte into `buf` and return how many, or raise
        StreamClosed. A message-framed stream (UCX) fills `buf` whole."""

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write one encoded frame; the parts may be reused once this returns."""

    def close(self) -> None:
        """Close at once; pending sends and receives fail."""


def configure_socket(sock: socket.socket) -> None:
    """Non-blocking, no Nagle delay, 4 MiB kernel buffers: a frame stream's socket."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)


async def connect_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first address `host` resolves to.
    Unbounded: the caller's timeout bounds it; the socket is closed on any
    failure, and a failure to reach the peer raises TransferError."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
    except OSError as exc:
        raise TransferError(f"cannot reach {host}:{port}: {exc}") from None
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, addr)
    except OSError as exc:
        sock.close()
        raise TransferError(f"cannot reach {host}:{port}: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def close_socket(sock: socket.socket) -> None:
    """Shut down both ways (a reader blocked in another task wakes) and close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class TcpStream:
    """A TCP socket driven by the loop's sock_* calls, so payloads are read
    straight into their destination and written from their source."""

    kind = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        configure_socket(sock)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._lowat = 1

    @classmethod
    async def connect(cls, host: str, port: int) -> "TcpStream":
        return cls(await connect_socket(host, port))

    async def recv_into(self, buf: memoryview) -> int:
        try:
            try:
                n = self._sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                self._wake_at(min(len(buf), RCVLOWAT_MAX))
                n = await self._loop.sock_recv_into(self._sock, buf)
        except OSError as exc:  # reset, or the socket was closed under us
            raise StreamClosed(f"connection lost: {exc}") from None
        if n == 0:
            raise StreamClosed("connection closed by peer")
        return n

    def _wake_at(self, lowat: int) -> None:
        """Set SO_RCVLOWAT; only before a wait, and never above the bytes the
        reader asked for, so a short frame still wakes it (EOF always does)."""
        if lowat != self._lowat:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            self._lowat = lowat

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        try:
            for part in parts:
                await self._loop.sock_sendall(self._sock, part)
        except OSError as exc:  # EPIPE, ECONNRESET, or closed under us
            raise StreamClosed(f"connection lost: {exc}") from None

    def close(self) -> None:
        close_socket(self._sock)
