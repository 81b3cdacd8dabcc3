"""In-process peers: protocol robustness and directory behaviour."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

import numpy as np
import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.errors import ConfigError, HandshakeError
from kvmesh.peers import network
from kvmesh.peers import directory_sync
from kvmesh.peers.directory_sync import directory_replicas
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.streams import TcpStream
from kvmesh.types import PeerAddress

SLOT = 64 << 10


def config(seeds=(), secret=None, transport="tcp", cpu_bytes=8 << 20,
           probe_interval_s=1.0, full_directory_upto=0) -> KvmeshConfig:
    # Most tests here check the DHT (2 owners per key), which small meshes
    # only use with the full directory turned off.
    return KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=cpu_bytes),
                        mesh=MeshConfig(seeds=tuple(PeerAddress.parse(s) for s in seeds),
                                        secret=secret, probe_interval_s=probe_interval_s,
                                        full_directory_upto=full_directory_upto),
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


INFO = f.Info("a-host", 0, 0, b"")


def lookup_hello(handle: PeerHandle) -> f.Hello:
    """The HELLO of a client that is not a mesh member (as an engine's lookups are)."""
    return f.Hello("", f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, handle.peer.namespace, "", "",
                   handshake.new_nonce())


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
        client = await PeerClient.open(stream, lookup_hello(a), INFO, a.peer.namespace, None, 1.0, 4)
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
        client = await PeerClient.open(stream, lookup_hello(a), INFO, a.peer.namespace, secret,
                                       1.0, 4)
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
    assert peers[0].clear() == 16  # and withdraws them
    time.sleep(0.3)
    assert all(not p.peer.directory.holders(k) for p in peers for k in keys)
    assert peers[3].lookup_prefix(keys) == 0


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


# ---- membership changes and the directory -------------------------------------------------

FAST = 0.2  # SWIM probe interval for the tests that wait for a failure to be detected


def crash(handle: PeerHandle) -> None:
    """Silence a peer's gossip without a leave notice, then close it: a crash to the others."""
    handle.call(_silence(handle.peer))
    handle.close()


async def _silence(peer):
    peer.membership.stop()


def test_an_evicted_chunk_is_withdrawn_at_once_not_at_the_next_probe(mesh):
    # A 60 s probe period: the pump's periodic wake-up cannot be what withdraws it.
    a, b = mesh(2, last_cpu_bytes=2 * SLOT, probe_interval_s=60.0)
    first, second, third = b.peer.hasher.keys(np.arange(48))  # b holds two slots
    for key in (first, second):
        ticket = b.prepare_save(key)
        ticket.data[:] = 1
        b.commit_save(ticket)
    wait_until(lambda: a.lookup_prefix([first, second]) == 2, 5, "the advertisement")
    ticket = b.prepare_save(third)  # evicts `first`, the least recently used
    assert b.peer.store.tier_of(first) is None
    ticket.data[:] = 1
    b.commit_save(ticket)
    took = wait_until(lambda: all(not p.peer.directory.holders(first) for p in (a, b)),
                      5, "the withdrawal")
    assert took < 2
    wait_until(lambda: all(p.peer.directory.holders(k) for p in (a, b) for k in (second, third)),
               5, "the rest still advertised")


def wait_until(pred, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        assert time.monotonic() - start < timeout_s, f"{what} not within {timeout_s}s"
        time.sleep(0.05)
    return time.monotonic() - start


def owners(handle: PeerHandle, key: bytes) -> list[str]:
    ring = handle.peer.membership.ring
    return ring.owners(key, directory_replicas(handle.peer.config.mesh, ring))


def test_losing_one_peer_loses_no_directory_entry(mesh):
    peers = mesh(4, probe_interval_s=FAST)
    keys = save(peers[0], 32)
    time.sleep(0.3)
    victim = max(peers[1:], key=lambda p: sum(bool(p.peer.directory.holders(k)) for k in keys))
    survivors = [p for p in peers if p is not victim]
    crash(victim)
    wait_until(lambda: all(victim.peer_id not in p.peer.membership.members for p in survivors),
               15, "the crash detected by everyone")
    assert all(p.peer.membership.state_of(victim.peer_id).name == "DEAD" for p in survivors)
    time.sleep(0.3)  # holders re-advertise to the owners that replaced the dead one
    by_id = {p.peer_id: p for p in survivors}
    for key in keys:
        assert all(by_id[o].peer.directory.holders(key) == (peers[0].peer_id,)
                   for o in owners(survivors[0], key))
    assert all(p.lookup_prefix(keys) == 32 for p in survivors)


def test_a_dead_holders_chunks_stop_being_offered(mesh):
    others, holder, asker = mesh(3, probe_interval_s=FAST)
    keys = save(holder, 8)
    time.sleep(0.3)
    assert asker.lookup_prefix(keys) == 8
    crash(holder)
    wait_until(lambda: holder.peer_id not in asker.peer.membership.members
               and holder.peer_id not in others.peer.membership.members, 15, "the death")
    assert asker.lookup_prefix(keys) == 0
    assert all(not p.peer.directory.holders(k) for p in (others, asker) for k in keys)


def test_a_join_re_advertises_only_the_entries_it_moves(mesh):
    peers = mesh(3, probe_interval_s=FAST)
    holder = peers[0]
    keys = save(holder, 64)
    time.sleep(0.3)
    sent: list[tuple[str, int]] = []
    sync = holder.peer._sync
    queue_to = sync._queue_to

    def counting(owner, owned, withdraw):
        sent.append((owner, len(owned)))
        queue_to(owner, owned, withdraw)

    sync._queue_to = counting
    newcomer = mesh(1, probe_interval_s=FAST)[-1]
    wait_until(lambda: sum(n for _, n in sent) > 0, 5, "the re-advertise")
    time.sleep(0.3)
    moved = [k for k in keys if newcomer.peer_id in owners(holder, k)]
    assert {owner for owner, _ in sent} == {newcomer.peer_id}
    assert sum(n for _, n in sent) == len(moved) < len(keys)  # ~2/4 of 64 keys, not all
    assert all(newcomer.peer.directory.holders(k) == (holder.peer_id,) for k in moved)
    assert newcomer.lookup_prefix(keys) == 64


def test_graceful_leave_is_seen_at_once_and_hands_off(mesh):
    peers = mesh(3)  # default timing: a leave must not wait for failure detection
    keys = save(peers[0], 16)
    time.sleep(0.3)
    leaver = peers[2]
    leaver.close()
    took = wait_until(lambda: all(leaver.peer_id not in p.peer.membership.members
                                  for p in peers[:2]), 5, "the leave")
    assert took < 1.5
    assert all(p.peer.membership.state_of(leaver.peer_id).name == "LEFT" for p in peers[:2])
    time.sleep(0.2)
    for key in keys:
        assert all(p.peer.directory.holders(key) == (peers[0].peer_id,) for p in peers[:2])
    assert peers[1].lookup_prefix(keys) == 16


def test_wildcard_listener_is_known_by_its_advertised_host(mesh):
    (seed,) = mesh(1, secret=b"s")  # off loopback, a peer starts only with the mesh secret
    cfg = config([seed.peer_id], secret=b"s")
    cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, host="0.0.0.0",
                                                            advertise_host="127.0.0.1"))
    wild = PeerHandle.start(cfg, standalone_hasher(cfg, SLOT), SLOT)
    try:
        assert wild.peer_id.startswith("127.0.0.1:")
        wait_until(lambda: len(seed.peer.membership.members) == 2, 5, "the join")
        assert wild.peer_id in seed.peer.membership.members
        keys = save(wild, 2)
        time.sleep(0.2)
        assert seed.lookup_prefix(keys) == 2
    finally:
        wild.close()


async def test_wildcard_without_advertise_host_refuses_a_loopback_guess(monkeypatch):
    monkeypatch.setattr(network.socket, "gethostname", lambda: "localhost")
    with pytest.raises(ConfigError, match="KVMESH_ADVERTISE_HOST"):
        await network.advertised_host(MeshConfig(host="0.0.0.0"), 1.0)
    assert await network.advertised_host(MeshConfig(host="0.0.0.0", advertise_host="10.1.1.1"),
                                        1.0) == "10.1.1.1"
    assert await network.advertised_host(MeshConfig(host="10.2.2.2"), 1.0) == "10.2.2.2"


def test_a_small_mesh_keeps_the_whole_directory_on_every_peer(mesh):
    peers = mesh(4, full_directory_upto=4)
    keys = save(peers[0], 16)
    time.sleep(0.3)
    assert all(p.peer.directory.holders(k) == (peers[0].peer_id,) for p in peers for k in keys)
    asked: list[str] = []
    lookup = peers[3].peer._lookup
    ask_owner = lookup._ask_owner

    async def counting(owner, owned):
        asked.append(owner)
        return await ask_owner(owner, owned)

    lookup._ask_owner = counting
    assert peers[3].lookup_prefix(keys) == 16
    assert asked == []  # answered from its own directory
    assert peers[0].clear() == 16
    time.sleep(0.3)
    assert all(not p.peer.directory.holders(k) for p in peers for k in keys)


def test_growing_past_the_full_directory_keeps_r_owners_and_lookups_work(mesh):
    peers = mesh(3, probe_interval_s=FAST, full_directory_upto=3)
    keys = save(peers[0], 32)
    time.sleep(0.3)
    assert all(p.peer.directory.holders(k) for p in peers for k in keys)
    newcomer = mesh(1, probe_interval_s=FAST, full_directory_upto=3)[-1]
    time.sleep(0.5)  # the 4-peer ring is a DHT again: r=2, the newcomer gets what it owns
    assert directory_replicas(newcomer.peer.config.mesh, newcomer.peer.membership.ring) == 2
    assert all(newcomer.peer.directory.holders(k) == (peers[0].peer_id,)
               for k in keys if newcomer.peer_id in owners(newcomer, k))
    assert newcomer.lookup_prefix(keys) == 32


def test_entries_a_peer_no_longer_owns_are_forgotten_once_the_ring_is_quiet(mesh):
    peers = list(mesh(3, probe_interval_s=FAST, full_directory_upto=3))
    keys = save(peers[0], 32)
    time.sleep(0.3)
    assert all(len(p.peer.directory) == 32 for p in peers)  # everyone owns everything
    newcomer = mesh(1, probe_interval_s=FAST, full_directory_upto=3)[-1]
    everyone = peers + [newcomer]
    deadline = time.monotonic() + 10 * FAST * directory_sync.PRUNE_AFTER_PROBES
    while time.monotonic() < deadline and any(
            len(p.peer.directory) > sum(p.peer_id in owners(p, k) for k in keys) for p in everyone):
        time.sleep(0.1)
    for p in everyone:  # r=2 of 4 now: each keeps exactly the entries it owns
        kept = [k for k in keys if p.peer.directory.holders(k)]
        assert kept == [k for k in keys if p.peer_id in owners(p, k)]
    assert sum(len(p.peer.directory) for p in everyone) == 2 * 32
    assert all(p.lookup_prefix(keys) == 32 for p in everyone)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_reader_takes_same_host_chunks_in_place_and_nothing_else(mesh, transport):
    a, b = mesh(2, transport=transport, full_directory_upto=16)
    keys = save(a, 3)
    deadline = time.monotonic() + 5
    while b.lookup_prefix(keys) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)  # a's advertisement reaches b
    seen: dict[int, bytes] = {}
    results = sorted(b.start_load(keys, lambda i, data: seen.setdefault(i, bytes(data)) is not None)
                     .results(5), key=lambda r: r.index)
    expected = [bytes([i % 251]) * SLOT for i in range(3)]
    if transport == "shm":  # one copy, straight out of a's pool; b stores nothing
        assert all(r.consumed and r.data is None for r in results)
        assert [seen[i] for i in range(3)] == expected
        assert b.peer.store.leading_hits(keys) == 0
    else:  # bytes over a wire land in b's slots, as without a reader
        assert seen == {} and not any(r.consumed for r in results)
        assert [bytes(r.data.numpy()) for r in results] == expected
        assert b.peer.store.leading_hits(keys) == 3
    for r in results:
        r.release()
    assert b.peer.stats.remote_hits == 3
    assert b.peer.stats.read_in_place == (3 if transport == "shm" else 0)
