"""Byte streams that carry frames: the seam between the codec and the OS.

A `Stream` moves bytes and nothing else. `recv_into` writes what has arrived
into the buffer it is given (the decoder's current stage), `send` writes a
frame's parts without copying the payload. Timeouts belong to the callers.

Failures come out as kvmesh errors, never as the OS's: a closed, reset or
broken connection raises `StreamClosed`, a dial that cannot connect raises
`TransferError`, so callers above the streams catch `KvmeshError` only.

`close()` ends a stream at once, a receive or send waiting on it included:
they raise `StreamClosed`. (Closing a socket under a waiting asyncio
receive left the receive waiting forever, with its task and buffers.)
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
    remote: str  # the other end's IP as this end sees it; "" when unknown

    async def recv_into(self, buf: memoryview) -> int:
        """Write at least one byte into `buf` and return how many, or raise
        StreamClosed. A message-framed stream (UCX) fills `buf` whole."""

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write one encoded frame; the parts may be reused once this returns."""

    def close(self) -> None:
        """Close at once; pending sends and receives raise StreamClosed."""


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


class SocketLife:
    """A stream's hold on its socket. Closing a descriptor the loop is still
    waiting on leaves the waiter stuck forever, so `close()` shuts the socket
    down at once (a waiting receive sees EOF, a waiting send EPIPE) and closes
    the descriptor once no wait holds it. Subclasses count each wait with
    `_waiting()` ... `_waited()`."""

    def _own(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._waits = 0  # receives and sends waiting on the loop for this socket
        self._closed = False
        try:
            self.remote = str(sock.getpeername()[0])
        except (OSError, IndexError):  # already reset; or not an IP socket
            self.remote = ""

    def close(self) -> None:
        """Shut the socket down now; the descriptor goes once no wait holds it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if not self._waits:
            self._sock.close()

    def _waiting(self) -> None:
        self._waits += 1

    def _waited(self) -> None:
        self._waits -= 1
        if self._closed and not self._waits:
            self._sock.close()


class TcpStream(SocketLife):
    """A TCP socket driven by the loop's sock_* calls, so payloads are read
    straight into their destination and written from their source."""

    kind = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        configure_socket(sock)
        self._own(sock)
        self._lowat = 1

    @classmethod
    async def connect(cls, host: str, port: int) -> "TcpStream":
        return cls(await connect_socket(host, port))

    async def recv_into(self, buf: memoryview) -> int:
        if self._closed:
            raise StreamClosed("connection closed")
        try:
            try:
                n = self._sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                self._wake_at(min(len(buf), RCVLOWAT_MAX))
                self._waiting()
                try:
                    n = await self._loop.sock_recv_into(self._sock, buf)
                finally:
                    self._waited()
        except OSError as exc:  # reset, or the socket was closed under us
            raise StreamClosed(f"connection lost: {exc}") from None
        if n == 0:
            raise StreamClosed("connection closed" if self._closed else "connection closed by peer")
        return n

    def _wake_at(self, lowat: int) -> None:
        """Set SO_RCVLOWAT; only before a wait, and never above the bytes the
        reader asked for, so a short frame still wakes it (EOF always does)."""
        if lowat != self._lowat:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            self._lowat = lowat

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        if self._closed:
            raise StreamClosed("connection closed")
        self._waiting()
        try:
            for part in parts:
                await self._loop.sock_sendall(self._sock, part)
        except OSError as exc:  # EPIPE, ECONNRESET, or closed under us
            raise StreamClosed(f"connection lost: {exc}") from None
        finally:
            self._waited()

