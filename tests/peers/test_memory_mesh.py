"""Many real peers in one process over the in-memory network: the data path
(advertise, lookup, pull, verify) with no socket at all."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.peers.memory_network import MemoryNetwork, MemoryStream
from kvmesh.peers.peer import Peer
from kvmesh.peers.standalone import chunk_bytes_for, standalone_hasher
from kvmesh.types import PeerAddress

SLOT = 16 << 10


def config(i: int, seed: str | None, transport: str, full_directory_upto: int) -> KvmeshConfig:
    return KvmeshConfig(
        chunk_tokens=16, store=StoreConfig(cpu_bytes=64 * SLOT),
        mesh=MeshConfig(host=f"10.77.0.{i + 1}", port=7400,
                        seeds=(PeerAddress.parse(seed),) if seed else (),
                        probe_interval_s=0.1, full_directory_upto=full_directory_upto,
                        secret=b"memory-mesh"),  # 10.77.0.x is off loopback
        transfer=TransferConfig(transport=transport, timeout_s=1.0),
        control=ControlConfig(enabled=False))


async def start_mesh(net: MemoryNetwork, n: int, transport: str = "tcp",
                     full_directory_upto: int = 0) -> list[Peer]:
    peers: list[Peer] = []
    for i in range(n):
        cfg = config(i, peers[0].peer_id if peers else None, transport, full_directory_upto)
        peer = Peer(cfg, standalone_hasher(cfg, SLOT), SLOT, network=net.node())
        await peer.start()
        peers.append(peer)
    await wait_for(lambda: all(len(p.members()) == n for p in peers), "everyone joined")
    return peers


async def wait_for(cond, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.02)


async def wait_until_async(ask, want, timeout_s: float = 10.0) -> None:
    """Until `await ask()` gives `want` (asserted, with the last answer, at the deadline)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    got = await ask()
    while got != want and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        got = await ask()
    assert got == want, f"still {got!r} after {timeout_s}s"


def save(peer: Peer, chunks: int, seed: int = 0) -> list[bytes]:
    tokens = np.random.default_rng(seed).integers(0, 1 << 20, chunks * 16, dtype=np.int32)
    keys = peer.hasher.keys(tokens)
    for key in keys:
        ticket = peer.prepare_save(key)
        ticket.view[:] = chunk_bytes_for(key, SLOT).tobytes()
        assert peer.commit_save(ticket)
    return keys


async def load(peer: Peer, keys: list[bytes]) -> list[bool]:
    """Pull `keys`; True where the chunk landed with exactly the holder's bytes."""
    ok = [False] * len(keys)

    def landed(index: int, good: bool, source: str, consumed: bool) -> None:
        if good:
            ticket = peer.open_loaded(keys[index])
            ok[index] = bytes(ticket.view) == chunk_bytes_for(keys[index], SLOT).tobytes()
            peer.close_loaded(ticket)

    await peer.load(keys, landed)
    return ok


@pytest.fixture
async def net():
    network = MemoryNetwork()
    started: list[Peer] = []
    network.started = started
    yield network
    await asyncio.gather(*(p.stop() for p in started), return_exceptions=True)


@pytest.mark.parametrize("transport", ["tcp", "auto"])  # auto: same host, shared pools
async def test_eight_peers_share_chunks_in_one_process(net, transport):
    peers = await start_mesh(net, 8, transport)
    net.started += peers
    keys = save(peers[0], 12)
    for peer in peers[1:]:  # once the advertise batches reach the owners
        await wait_until_async(lambda: peer.lookup_prefix(keys), 12)
    assert await load(peers[5], keys) == [True] * 12
    # On one host (one process here) the holder's door hands over its pool.
    assert peers[5].status().transports[peers[0].peer_id] == ("shm" if transport == "auto" else "tcp")
    # The puller now holds a copy and advertised it: a second source.
    both = {peers[0].peer_id, peers[5].peer_id}

    async def holders_are_both() -> bool:
        return all(set(h) == both for h in await peers[3].find_holders(keys, fresh=True))

    await wait_until_async(holders_are_both, True)


async def test_a_killed_holder_becomes_a_miss_then_is_forgotten(net):
    peers = await start_mesh(net, 4, full_directory_upto=4)
    net.started += peers
    keys = save(peers[1], 4)
    await asyncio.sleep(0.2)
    assert await peers[2].lookup_prefix(keys) == 4
    net.kill(peers[1].peer_id)
    assert await load(peers[2], keys) == [False] * 4  # a miss, not a hang or an error
    survivors = [peers[0], peers[2], peers[3]]
    await wait_for(lambda: all(peers[1].peer_id not in p.members() for p in survivors), "the death")
    assert await peers[3].lookup_prefix(keys) == 0


async def test_memory_streams_keep_order_and_close_like_tcp():
    a, b = MemoryStream.pair()
    await a.send([b"hello ", memoryview(b"world")])
    buf = bytearray(64)
    got = b""
    while len(got) < 11:
        n = await b.recv_into(memoryview(buf))
        got += bytes(buf[:n])
    assert got == b"hello world"
    a.close()
    with pytest.raises(Exception) as err:
        await b.recv_into(memoryview(buf))
    assert type(err.value).__name__ == "StreamClosed"


async def test_chunks_longer_than_the_pullers_slots_are_misses_said_once(net, caplog):
    """One namespace, two slot sizes (a puller whose slots hold encoded chunks,
    KVMESH_CODEC_CPU, and a holder that keeps them raw): a miss, logged once."""
    holder_cfg = config(0, None, "tcp", 16)
    hasher = standalone_hasher(holder_cfg, SLOT)
    holder = Peer(holder_cfg, hasher, SLOT, network=net.node())
    await holder.start()
    net.started.append(holder)
    puller = Peer(config(1, holder.peer_id, "tcp", 16), hasher, SLOT // 2, network=net.node())  # same namespace, half slots
    await puller.start()
    net.started.append(puller)
    await wait_for(lambda: len(puller.members()) == 2, "the puller joined")
    keys = save(holder, 3)
    await wait_until_async(lambda: puller.lookup_prefix(keys), 3)
    with caplog.at_level("WARNING", logger="kvmesh.peers.loader"):
        assert await load(puller, keys) == [False] * 3
        assert await load(puller, keys[:1]) == [False]
    said = [r.getMessage() for r in caplog.records if "longer than this peer's slots" in r.getMessage()]
    assert len(said) == 1 and f"({SLOT} > {SLOT // 2} bytes)" in said[0], said
    assert "KVMESH_CODEC_CPU" in said[0]
    assert puller.status().counters["remote_hits"] == 0
