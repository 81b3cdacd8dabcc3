"""Caps on inbound connections, a small header cap before authentication, an
idle timeout and a send timeout: a stranger (or a stuck member) can no longer
hold a peer's memory, sockets, tasks or pins for as long as it likes."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import numpy as np
import pytest

from kvmesh.bench.procs import PeerProcess
from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.errors import KvmeshError
from kvmesh.peers.facade import PeerHandle
from kvmesh.transfer import codec
from kvmesh.transfer import frames as f
from kvmesh.transfer import limits
from kvmesh.transfer.streams import TcpStream
from tests.security.victims import peer_starter
from tests.security.wire import closed_by_server, open_client, ping, raw_connect, rss_bytes

pytestmark = pytest.mark.timeout(120)

SLOT = 64 << 10


def _config(cpu_bytes: int = 16 * SLOT, timeout_s: float = 3.0) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=cpu_bytes),
                        mesh=MeshConfig(),
                        transfer=TransferConfig(transport="tcp", timeout_s=timeout_s),
                        control=ControlConfig(enabled=False))


@pytest.fixture
def start_peer():
    yield from peer_starter(_config)


def _save(handle: PeerHandle, n: int) -> list[bytes]:
    keys = handle.peer.hasher.keys(np.random.default_rng(5).integers(0, 1000, n * 16))
    for i, key in enumerate(keys):
        ticket = handle.prepare_save(key)
        ticket.data[:] = i % 251
        handle.commit_save(ticket)
    return keys


# ---- memory before authentication ---------------------------------------------------

HALF_OPEN = 200


def test_half_open_connections_announcing_big_headers_cost_no_memory():
    env = {**os.environ, "KVMESH_TRANSPORT": "tcp", "KVMESH_CPU_BYTES": "8MiB",
           "KVMESH_CHUNK_TOKENS": "16", "KVMESH_CONTROL": "0",
           "KVMESH_TIMEOUT_S": "20"}  # the handshake timeout must not clean up first
    peer = PeerProcess(env, SLOT).wait_ready()
    socks = []
    try:
        time.sleep(0.5)
        before = rss_bytes(peer.proc.pid)
        prefix = codec.PREFIX.pack(codec.MAGIC, f.FrameType.HELLO, 0, f.MAX_HEADER_BYTES, 0)
        for _ in range(HALF_OPEN):
            sock = raw_connect(peer.peer_id)
            sock.sendall(prefix + b"\x91")  # the header's first byte, then nothing
            socks.append(sock)
        time.sleep(1.5)
        after = rss_bytes(peer.proc.pid)
        print(f"RSS before {before / 2**20:.1f} MiB, after {HALF_OPEN} half-open "
              f"connections {after / 2**20:.1f} MiB (+{(after - before) / 2**20:.1f} MiB)")
        assert after - before < 8 << 20
    finally:
        for sock in socks:
            sock.close()
        peer.stop()


# ---- connection caps ---------------------------------------------------------------

@pytest.fixture
def small_caps(monkeypatch):
    monkeypatch.setattr(limits, "MAX_INBOUND_CONNECTIONS", 6)
    monkeypatch.setattr(limits, "MAX_CONNECTIONS_PER_ADDRESS", 3)
    monkeypatch.setattr(limits, "MAX_PRE_AUTH_CONNECTIONS", 2)


def _ns(handle: PeerHandle) -> bytes:
    return handle.peer.namespace


async def test_a_connection_past_the_pre_auth_cap_is_refused(small_caps, start_peer):
    peer = start_peer()
    member = await open_client(peer.peer_id, _ns(peer), "127.0.0.1")
    waiting = [raw_connect(peer.peer_id, "127.0.0.2"), raw_connect(peer.peer_id, "127.0.0.3")]
    time.sleep(0.2)
    extra = raw_connect(peer.peer_id, "127.0.0.4")
    assert closed_by_server(extra, 1.0), "a third connection in the handshake must be refused"
    assert not any(closed_by_server(s, 0.1) for s in waiting)
    await ping(member)
    for sock in waiting + [extra]:
        sock.close()
    time.sleep(0.2)
    late = await open_client(peer.peer_id, _ns(peer), "127.0.0.4")
    await ping(late)
    await member.aclose()
    await late.aclose()


async def test_a_connection_past_the_per_address_cap_is_refused(small_caps, start_peer):
    peer = start_peer()
    mine = [await open_client(peer.peer_id, _ns(peer), "127.0.0.1") for _ in range(3)]
    with pytest.raises((KvmeshError, asyncio.TimeoutError)):
        await open_client(peer.peer_id, _ns(peer), "127.0.0.1")
    other = await open_client(peer.peer_id, _ns(peer), "127.0.0.5")
    for client in mine + [other]:
        await ping(client)
    await mine[0].aclose()
    time.sleep(0.2)
    again = await open_client(peer.peer_id, _ns(peer), "127.0.0.1")
    await ping(again)
    for client in mine[1:] + [other, again]:
        await client.aclose()


async def test_a_connection_past_the_total_cap_is_refused(small_caps, start_peer):
    peer = start_peer()
    clients = [await open_client(peer.peer_id, _ns(peer), source)
               for source in ("127.0.0.1",) * 3 + ("127.0.0.2",) * 3]
    with pytest.raises((KvmeshError, asyncio.TimeoutError)):
        await open_client(peer.peer_id, _ns(peer), "127.0.0.3")
    for client in clients:
        await ping(client)
    await clients.pop().aclose()
    time.sleep(0.2)
    clients.append(await open_client(peer.peer_id, _ns(peer), "127.0.0.3"))
    await ping(clients[-1])
    for client in clients:
        await client.aclose()


# ---- idle timeout -------------------------------------------------------------------

async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(monkeypatch, start_peer):
    monkeypatch.setattr(limits, "IDLE_TIMEOUT_S", 0.5)
    peer = start_peer()
    idle = await open_client(peer.peer_id, _ns(peer))
    busy = await open_client(peer.peer_id, _ns(peer))
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 1.5:
        await ping(busy)
        await asyncio.sleep(0.1)
    assert idle.closed, "the server must close a connection idle past the timeout"
    assert not busy.closed
    await ping(busy)
    await busy.aclose()


async def test_a_request_in_flight_keeps_its_connection(monkeypatch):
    """Idle means no request in flight: a slow PREFIX is answered, then the
    connection goes idle and is closed."""
    from tests.transfer.test_server import NS, Node, _tcp_pair
    from kvmesh.transfer.connection import FramedConnection
    from kvmesh.transfer.server import serve_connection
    from tests.security.wire import hello, info

    monkeypatch.setattr(limits, "IDLE_TIMEOUT_S", 0.3)

    class SlowNode(Node):
        async def prefix(self, keys):
            await asyncio.sleep(1.0)
            return len(keys)

    a, b = _tcp_pair()
    server = asyncio.get_running_loop().create_task(
        serve_connection(TcpStream(a), SlowNode(), None, 2.0))
    conn = FramedConnection(TcpStream(b))
    await conn.send(hello(NS))
    await conn.read_frame()
    await conn.send(f.Auth(b""))
    await conn.send(info())
    assert isinstance(await conn.read_frame(), f.Info)
    await conn.send(f.Prefix(7, (bytes(16), bytes([1]) * 16)))
    reply = await asyncio.wait_for(conn.read_frame(), 3)
    assert reply == f.PrefixReply(7, 2)
    await asyncio.wait_for(server, 1.0)  # idle once answered: closed
    conn.close()


# ---- send timeout -------------------------------------------------------------------

class PausableStream(TcpStream):
    """A TCP stream whose reader can be stopped, as a puller that stops reading."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.reading = asyncio.Event()
        self.reading.set()

    async def recv_into(self, buf):
        await self.reading.wait()
        return await super().recv_into(buf)


async def test_a_puller_that_stops_reading_is_disconnected(monkeypatch, start_peer):
    monkeypatch.setattr(limits, "SEND_TIMEOUT_S", 0.5)
    slot, chunks = 1 << 20, 48  # far more than both sockets' buffers hold
    # The send timeout is the longer of SEND_TIMEOUT_S and the network timeout.
    peer = start_peer(slot=slot, cpu_bytes=64 << 20, timeout_s=0.5)
    keys = _save(peer, chunks)
    client = await open_client(peer.peer_id, _ns(peer), stream_type=PausableStream)
    stream = client._conn.stream
    stream.reading.clear()
    landed = []
    pull = asyncio.get_running_loop().create_task(client.pull(
        tuple(keys), lambda j, n: memoryview(bytearray(n)), lambda j, ok, n, c: landed.append(ok),
        timeout_s=60))
    await asyncio.sleep(0.5 + 1.5)
    pins = [peer.peer.store.stats().pinned for _ in range(5) if not time.sleep(0.05)]
    assert pins == [0] * 5, f"the server still pins chunks for a puller that stopped reading: {pins}"
    stream.reading.set()
    await asyncio.wait_for(pull, 10)
    assert client.closed
    assert len(landed) == chunks and sum(landed) < chunks
    await client.aclose()


# ---- the client side of an idle close -----------------------------------------------

def test_a_server_closing_an_idle_connection_is_a_reconnect_not_a_failure(monkeypatch, start_peer):
    monkeypatch.setattr(limits, "IDLE_TIMEOUT_S", 0.4)
    a = start_peer(timeout_s=1.0)
    b = start_peer(timeout_s=1.0)
    a.call(a.peer.ping(b.peer_id))
    time.sleep(1.0)  # b closes a's connection: idle
    a.call(a.peer.ping(b.peer_id))
    assert b.counters()["idle_closed"] >= 1
    assert a.counters()["recent_failures"] == []


def test_the_pool_redials_a_connection_idle_past_the_client_limit(monkeypatch, start_peer):
    monkeypatch.setattr(limits, "CLIENT_IDLE_S", 0.2)
    a, b = start_peer(timeout_s=1.0), start_peer(timeout_s=1.0)
    first = a.call(a.peer.pool.get(b.peer_id))
    assert a.call(a.peer.pool.get(b.peer_id)) is first  # used just now: kept
    time.sleep(0.4)
    second = a.call(a.peer.pool.get(b.peer_id))
    assert second is not first and first.closed
    a.call(a.peer.ping(b.peer_id))
