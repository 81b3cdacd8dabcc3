"""Byte streams that carry frames: the seam between the codec and the OS.

A `Stream` moves bytes and nothing else. `recv_into` fills exactly the buffer
it is given (the decoder asks for whole stages), `send` writes a frame's parts
without copying the payload. Timeouts belong to the callers.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, Sequence


class StreamClosed(ConnectionError):
    """The other side went away."""


class Stream(Protocol):
    kind: str  # "tcp" or "ucx"

    async def recv_into(self, buf: memoryview) -> None:
        """Fill `buf` completely or raise StreamClosed."""

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write one encoded frame; the parts may be reused once this returns."""

    def close(self) -> None:
        """Close at once; pending sends and receives fail."""


class TcpStream:
    """A TCP socket driven by the loop's sock_* calls, so payloads are read
    straight into their destination and written from their source."""

    kind = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, host: str, port: int) -> "TcpStream":
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def recv_into(self, buf: memoryview) -> None:
        while len(buf):
            n = await self._loop.sock_recv_into(self._sock, buf)
            if n == 0:
                raise StreamClosed("connection closed by peer")
            buf = buf[n:]

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        for part in parts:
            await self._loop.sock_sendall(self._sock, part)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
