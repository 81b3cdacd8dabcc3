"""Raw and authenticated connections to a peer's data port, for the security tests.

A raw connection is a plain socket that may send anything (or nothing); an
authenticated one is a real `PeerClient` (the real handshake), bound to a
chosen loopback source address so per-address caps can be told apart
(Linux routes all of 127.0.0.0/8 to the loopback device).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.streams import TcpStream
from kvmesh.types import PeerAddress


def address(peer_id: str) -> tuple[str, int]:
    parsed = PeerAddress.parse(peer_id)
    return parsed.host, parsed.port


def raw_connect(peer_id: str, source: str = "127.0.0.1", timeout: float = 2.0) -> socket.socket:
    """A connected blocking socket from `source`, nothing sent yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(address(peer_id))
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes (EOF or reset) within `within` seconds;
    whatever it sent before closing (an ERROR frame) is read and dropped."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(1 << 16):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False


def hello(namespace: bytes) -> f.Hello:
    # peer_id "": a client that is not a mesh member (like an engine's lookup client).
    return f.Hello("", f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, namespace, "", "",
                   handshake.new_nonce())


def info() -> f.Info:
    return f.Info(f"security-test-{os.getpid()}", 0, 0, b"")


async def open_client(peer_id: str, namespace: bytes, source: str = "127.0.0.1",
                      secret: bytes | None = None, timeout: float = 2.0,
                      stream_type: type = TcpStream) -> PeerClient:
    """A handshaken client from `source`; raises (HandshakeError, a
    TransferError, TimeoutError) when the peer refuses or drops it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address(peer_id)),
                               timeout)
    except BaseException:
        sock.close()
        raise
    return await PeerClient.open(stream_type(sock), hello(namespace), info(), namespace, secret,
                                 timeout, 8)


async def ping(client: PeerClient, timeout: float = 2.0) -> None:
    reply = await client.request(lambda rid: f.Ping(rid), timeout)
    assert isinstance(reply, f.Pong)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise RuntimeError(f"no VmRSS for pid {pid}")
