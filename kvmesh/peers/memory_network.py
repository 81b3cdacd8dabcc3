"""Many peers in one process and one event loop: a `Network` made of memory.

Streams are in-memory pipes with TCP's semantics (ordered bytes, EOF after
close, back-pressure past PIPE_HIGH_WATER bytes queued), datagrams are loop
callbacks. Peers name themselves by any "host:port" (pick IP literals, so
gossip addresses and peer ids coincide as they do on real hosts), and
`kill(peer_id)` drops a peer off the network as a crash would: its listener
refuses, its streams break and datagrams to it vanish. Nothing here is
thread-safe: every call comes on the one loop, as in the peer itself.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable, Sequence

from kvmesh.config import MeshConfig
from kvmesh.errors import StreamClosed, TransferError
from kvmesh.peers.network import ReadyStream
from kvmesh.types import PeerAddress, PeerId

PIPE_HIGH_WATER = 4 << 20  # bytes queued in one direction before send() waits
FIRST_PORT = 20000


class _Pipe:
    """One direction of a stream: bytes queued by the writer for the reader."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def close(self) -> None:
        self.closed = True
        self.readable.set()
        self.writable.set()


class MemoryStream:
    """One end of an in-memory byte stream; the `Stream` protocol."""

    kind = "tcp"  # a byte stream, as far as the codec is concerned

    def __init__(self, rx: _Pipe, tx: _Pipe) -> None:
        self._rx, self._tx = rx, tx
        self.remote = ""  # the dialer's host, on the listener's end

    @classmethod
    def pair(cls) -> tuple["MemoryStream", "MemoryStream"]:
        a_to_b, b_to_a = _Pipe(), _Pipe()
        return cls(b_to_a, a_to_b), cls(a_to_b, b_to_a)

    async def recv_into(self, buf: memoryview) -> int:
        rx = self._rx
        while not rx.data:
            if rx.closed:
                raise StreamClosed("connection closed by peer")
            rx.readable.clear()
            await rx.readable.wait()
        n = min(len(buf), len(rx.data))
        buf[:n] = rx.data[:n]
        del rx.data[:n]
        if len(rx.data) < PIPE_HIGH_WATER:
            rx.writable.set()
        return n

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        tx = self._tx
        for part in parts:
            while len(tx.data) >= PIPE_HIGH_WATER and not tx.closed:
                tx.writable.clear()
                await tx.writable.wait()
            if tx.closed:
                raise StreamClosed("connection lost: closed")
            tx.data += part
            tx.readable.set()

    def close(self) -> None:
        self._rx.close()
        self._tx.close()


class MemoryGossip:
    """A `GossipTransport` on the memory network: datagrams become loop callbacks."""

    def __init__(self, network: "MemoryNetwork", addr: str) -> None:
        self._network = network
        self.addr = addr
        self.receiver: Callable[[bytes, str], None] | None = None

    def send(self, addr: str, data: bytes) -> None:
        self._network.deliver(self.addr, addr, bytes(data))

    def set_receiver(self, receive: Callable[[bytes, str], None] | None) -> None:
        self.receiver = receive

    def close(self) -> None:
        self.receiver = None


class MemoryEndpoint:
    def __init__(self, network: "MemoryNetwork", peer_id: PeerId) -> None:
        self.peer_id = peer_id
        self.gossip_addr = peer_id
        self.gossip = MemoryGossip(network, peer_id)
        self.streams: list[MemoryStream] = []  # both ends of every stream it is part of
        self._network = network
        self._inbound: asyncio.Queue[MemoryStream] = asyncio.Queue()

    async def accept(self) -> ReadyStream:
        """The next inbound connection (see kvmesh.peers.network.Accepted)."""
        return ReadyStream(await self._inbound.get())

    def close(self) -> None:
        self._network.forget(self.peer_id)
        self.gossip.close()


class MemoryNetwork:
    """The fabric many peers share; give each peer its own `node()`, the
    `Network` (see kvmesh.peers.network) it opens and dials through."""

    def __init__(self) -> None:
        self._endpoints: dict[str, MemoryEndpoint] = {}
        self._ports = itertools.count(FIRST_PORT)

    def node(self) -> "MemoryNode":
        return MemoryNode(self)

    def bind(self, mesh: MeshConfig) -> MemoryEndpoint:
        host = mesh.advertise_host or mesh.host
        peer_id = PeerAddress(host, mesh.port or next(self._ports)).peer_id
        if peer_id in self._endpoints:
            raise OSError(f"{peer_id} is already bound")
        endpoint = self._endpoints[peer_id] = MemoryEndpoint(self, peer_id)
        return endpoint

    def connect(self, dialer: MemoryEndpoint | None, peer: PeerId) -> MemoryStream:
        endpoint = self._endpoints.get(peer)
        if endpoint is None:
            raise TransferError(f"cannot reach {peer}: connection refused")
        ours, theirs = MemoryStream.pair()
        if dialer is not None:
            theirs.remote = PeerAddress.parse(dialer.peer_id).host
        for side in (dialer, endpoint):
            if side is not None:
                side.streams += [ours, theirs]
        endpoint._inbound.put_nowait(theirs)
        return ours

    def deliver(self, src: str, dst: str, data: bytes) -> None:
        endpoint = self._endpoints.get(dst)
        if endpoint is not None and endpoint.gossip.receiver is not None:
            asyncio.get_running_loop().call_soon(_receive, endpoint.gossip, data, src)

    def kill(self, peer: PeerId) -> None:
        """Drop `peer` off the network as a crash would (its process lives on):
        its listener refuses, every stream it is an end of breaks, and
        datagrams to it vanish."""
        endpoint = self._endpoints.pop(peer, None)
        if endpoint is not None:
            endpoint.gossip.close()
            for stream in endpoint.streams:
                stream.close()

    def forget(self, peer: PeerId) -> None:
        self._endpoints.pop(peer, None)


class MemoryNode:
    """One peer's `Network` on a `MemoryNetwork`."""

    def __init__(self, fabric: MemoryNetwork) -> None:
        self._fabric = fabric
        self._endpoint: MemoryEndpoint | None = None

    async def open(self, mesh: MeshConfig, timeout_s: float) -> MemoryEndpoint:
        self._endpoint = self._fabric.bind(mesh)
        return self._endpoint

    async def dial(self, peer: PeerId, timeout_s: float) -> MemoryStream:
        return self._fabric.connect(self._endpoint, peer)


def _receive(gossip: MemoryGossip, data: bytes, src: str) -> None:
    if gossip.receiver is not None:  # it may have closed since the send
        gossip.receiver(data, src)
