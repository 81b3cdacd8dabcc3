"""Finding 5: anyone who could connect could pin the store.

Reproduced on protocol 2: shared PULLs from any connection pinned every slot
for 30 s (the holder's own saves then stored nothing), and a repeated request
id leaked its pins forever (its lease list was overwritten). Protocol 3
shares only with connections that proved through the pool door that they
are on this host, draws every pin for another peer from a budget (at most
half the slots for one peer, three quarters for all), and names each lease
itself.
"""

from __future__ import annotations

import asyncio

from kvmesh.transfer import frames as f
from kvmesh.transfer.pool_door import door_path, knock
from tests.security.hostile import FakeHolder, HostileClient
from tests.security.victims import (fill, keys_for, namespace, peers,  # noqa: F401
                                    wait_until)

SLOTS = 64  # the victims' pools: 4 MiB of 64 KiB slots


def pinned(handle) -> int:
    return handle.peer.store.stats().pinned


async def _member(victim) -> tuple[HostileClient, FakeHolder]:
    """An attacker connection whose claimed id vouches for it (it runs that id)."""
    me = FakeHolder(namespace(victim))
    await me.start()
    attacker = await HostileClient.connect(victim.peer_id, namespace(victim), claim=me.peer_id)
    await asyncio.sleep(0.3)  # the claim is checked
    return attacker, me


async def _pull_all(attacker: HostileClient, rid: int, keys) -> tuple[int, int, set[int], list]:
    """(refs, misses, leases, streamed chunks) of one shared PULL of `keys`."""
    await attacker.send(f.Pull(rid, tuple(keys), True))
    refs = misses = 0
    leases: set[int] = set()
    streamed = []
    while refs + misses + len(streamed) < len(keys):
        frame = await attacker.recv()
        if isinstance(frame, f.ChunkRefs):
            refs += len(frame.indices)
            leases.add(frame.lease)
        elif isinstance(frame, f.Miss):
            misses += 1
        elif isinstance(frame, f.Chunk):
            streamed.append(frame.index)
    return refs, misses, leases, streamed


async def test_a_puller_not_proven_on_this_host_gets_streams_and_holds_no_pin(peers):
    victim = peers()
    keys = keys_for(victim, 32)
    fill(victim, keys)
    attacker, me = await _member(victim)
    try:
        refs, misses, _, streamed = await _pull_all(attacker, 1, keys)
        assert refs == 0 and misses == 0 and len(streamed) == 32  # streamed, not shared
        assert wait_until(lambda: pinned(victim) == 0)
    finally:
        attacker.close()
        me.close()


async def test_a_same_host_puller_pins_at_most_its_budget_and_saves_go_on(peers):
    victim = peers()
    keys = keys_for(victim, SLOTS)
    fill(victim, keys)
    attacker, me = await _member(victim)
    try:
        mapping = await knock(door_path(victim.peer.config.run_dir, victim.peer_id),
                              attacker.info.pool_token, 2.0)  # proven: same host
        refs, misses, leases, _ = await _pull_all(attacker, 1, keys)
        assert refs == SLOTS // 2 and misses == SLOTS - SLOTS // 2  # half the pool, not all of it
        assert pinned(victim) == SLOTS // 2
        fresh = keys_for(victim, SLOTS // 4, seed=99)
        fill(victim, fresh)  # the holder's own saves still find room
        assert victim.peer.held_prefix(fresh) == len(fresh)
        for lease in leases:
            await attacker.send(f.Release(lease))
        assert wait_until(lambda: pinned(victim) == 0)
        mapping.close()
    finally:
        attacker.close()
        me.close()


async def test_a_repeated_request_id_leaks_no_pin(peers, monkeypatch):
    monkeypatch.setattr("kvmesh.transfer.pull_server.SHARED_LEASE_S", 1.0)
    victim = peers()
    keys = keys_for(victim, 8)
    fill(victim, keys)
    attacker, me = await _member(victim)
    try:
        mapping = await knock(door_path(victim.peer.config.run_dir, victim.peer_id),
                              attacker.info.pool_token, 2.0)
        first = await _pull_all(attacker, 5, keys[:4])
        second = await _pull_all(attacker, 5, keys[4:])  # the same request id again
        assert first[0] == second[0] == 4 and first[2] != second[2]  # two leases, two names
        assert pinned(victim) == 8
        await attacker.send(f.Release(min(first[2])))
        await attacker.send(f.Release(min(second[2])))
        assert wait_until(lambda: pinned(victim) == 0)
        await _pull_all(attacker, 6, keys)  # and never released: the lease ends it
        assert pinned(victim) == 8
        assert wait_until(lambda: pinned(victim) == 0, 3.0)
        mapping.close()
    finally:
        attacker.close()
        me.close()


async def test_one_member_pins_at_most_half_the_pool_over_any_number_of_connections(peers):
    """The pin budget's share is per peer, as SECURITY.md says, not per
    connection: before, a second connection of the same member pinned
    another half (up to the three quarters all peers may pin), leaving
    every other member's pulls nothing."""
    victim = peers()
    keys = keys_for(victim, SLOTS)
    fill(victim, keys)
    first, me = await _member(victim)
    second = await HostileClient.connect(victim.peer_id, namespace(victim), claim=me.peer_id)
    await asyncio.sleep(0.3)  # the second claim is checked too
    door = door_path(victim.peer.config.run_dir, victim.peer_id)
    mappings = []
    try:
        for attacker in (first, second):
            mappings.append(await knock(door, attacker.info.pool_token, 2.0))
        refs = [(await _pull_all(attacker, 1, keys))[0] for attacker in (first, second)]
        assert sum(refs) == SLOTS // 2
        assert pinned(victim) == SLOTS // 2
    finally:
        for mapping in mappings:
            mapping.close()
        first.close()
        second.close()
        me.close()
