"""In-process peers: protocol robustness and directory behaviour."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.errors import HandshakeError
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.transfer import frames as f
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.streams import TcpStream
from kvmesh.types import PeerAddress

SLOT = 64 << 10


def config(seeds=(), secret=None, transport="tcp", cpu_bytes=8 << 20) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=cpu_bytes),
                        mesh=MeshConfig(seeds=tuple(PeerAddress.parse(s) for s in seeds),
                                        secret=secret),
                        transfer=TransferConfig(transport=transport, timeout_s=1.0),
                        control=ControlConfig(enabled=False))


@pytest.fixture
def mesh():
    handles = []

    def start(n: int, last_cpu_bytes: int | None = None, **kw) -> list[PeerHandle]:
        for i in range(n):
            seeds = [handles[0].peer_id] if handles else []
            if last_cpu_bytes and i == n - 1:
                kw = {**kw, "cpu_bytes": last_cpu_bytes}
            cfg = config(seeds, **kw)
            handles.append(PeerHandle.start(cfg, standalone_hasher(cfg, SLOT), SLOT))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                len(h.peer.membership.members) < len(handles) for h in handles):
            time.sleep(0.05)
        return handles

    yield start
    for h in handles:
        h.close()


def save(handle: PeerHandle, n: int, seed: int = 0) -> list[bytes]:
    keys = handle.peer.hasher.keys(np.random.default_rng(seed).integers(0, 1000, n * 16))
    for i, key in enumerate(keys):
        ticket = handle.prepare_save(key)
        ticket.data[:] = i % 251
        handle.commit_save(ticket)
    return keys


def test_garbage_on_one_connection_does_not_hurt_others(mesh):
    a, b = mesh(2)
    keys = save(a, 4)
    host, port = a.peer_id.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as bad:
        bad.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
        bad.settimeout(2)
        try:
            reply = bad.recv(4096)
        except OSError:
            reply = b""
        assert b"KM" in reply or reply == b""  # an ERROR frame, then the close
    time.sleep(0.2)
    assert b.lookup_prefix(keys) == 4
    results = list(b.start_load(keys).results(5))
    assert all(r.data is not None for r in results)
    for r in results:
        r.release()


def test_hostile_frame_after_handshake_closes_only_that_connection(mesh):
    (a,) = mesh(1)
    keys = save(a, 2)

    async def attack():
        stream = await TcpStream.connect(*a.peer_id.rsplit(":", 1))
        client = await PeerClient.open(stream, a.peer._hello(), a.peer.namespace, None, 1.0, None, 4)
        await client._conn.stream.send([b"KM\x63" + bytes(13)])  # unknown frame type 99
        for _ in range(50):
            if client.closed:
                break
            await asyncio.sleep(0.02)
        return client.closed

    assert a.call(attack(), timeout=5)
    assert a.lookup_prefix(keys) == 2  # still serving


def test_wrong_secret_fails_the_handshake(mesh):
    (a,) = mesh(1, secret=b"right")

    async def connect(secret):
        stream = await TcpStream.connect(*a.peer_id.rsplit(":", 1))
        client = await PeerClient.open(stream, a.peer._hello(), a.peer.namespace, secret, 1.0,
                                       None, 4)
        reply = await client.request(lambda rid: f.Ping(rid), 1.0)
        await client.aclose()
        return reply

    assert isinstance(a.call(connect(b"right"), timeout=5), f.Pong)
    with pytest.raises(HandshakeError):
        a.call(connect(b"wrong"), timeout=5)
    with pytest.raises(HandshakeError):
        a.call(connect(None), timeout=5)


def test_directory_replicated_on_two_owners_and_withdrawn_on_removal(mesh):
    peers = mesh(4)
    keys = save(peers[0], 16)
    time.sleep(0.2)
    for key in keys:
        owners = peers[0].peer.membership.ring.owners(key, 2)
        holding = [p for p in peers if p.peer.directory.holders(key)]
        assert sorted(p.peer_id for p in holding) == sorted(owners)
    assert peers[3].lookup_prefix(keys) == 16
    removed = peers[0].peer.store.clear()
    assert len(removed) == 16
    peers[0].call(_withdraw(peers[0].peer, removed))
    time.sleep(0.3)
    assert all(not p.peer.directory.holders(k) for p in peers for k in keys)
    assert peers[3].lookup_prefix(keys) == 0


async def _withdraw(peer, keys):
    peer.withdraw(keys)


def test_stale_directory_entry_is_a_miss_not_an_error(mesh):
    a, b = mesh(2)
    keys = save(a, 3)
    time.sleep(0.2)
    assert b.lookup_prefix(keys) == 3
    a.peer.store.remove(keys[1])  # gone without a withdraw yet
    results = sorted(b.start_load(keys).results(5), key=lambda r: r.index)
    assert [r.data is not None for r in results] == [True, False, True]
    for r in results:
        r.release()


def test_full_consumer_store_backpressures_into_misses_not_a_deadlock(mesh):
    holder, consumer = mesh(2, last_cpu_bytes=2 * SLOT)  # the consumer has two slots
    keys = save(holder, 6)
    time.sleep(0.2)
    started = time.monotonic()
    results = list(consumer.start_load(keys).results(10))  # nothing released while loading
    assert time.monotonic() - started < 8
    landed = [r for r in results if r.data is not None]
    assert len(results) == 6 and len(landed) == 2
    for r in results:
        r.release()
    # Once the slots are free again the same load succeeds.
    again = list(consumer.start_load(keys[:2]).results(10))
    assert all(r.data is not None for r in again)
    for r in again:
        r.release()
