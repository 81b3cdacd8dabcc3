"""Finding 2: poisoned KV was accepted and spread.

Reproduced on protocol 2: ADVERTISE took any holder name, so an attacker
made the victim's directory name a fake holder of its choosing, which served
chosen bytes under a matching xxh3; the victim counted 4/4 hits and served
those bytes on to a third peer. Protocol 3 binds each connection to the peer
id it claims (the claimed peer must vouch for it), takes ADVERTISE/WITHDRAW
only for that id, and pulls only from live members.
"""

from __future__ import annotations

import asyncio
import os

from kvmesh.transfer import frames as f
from tests.security.hostile import FakeHolder, HostileClient
from tests.security.victims import (held_bytes, keys_for, namespace, peers,  # noqa: F401
                                    wait_until)


async def test_advertise_naming_another_holder_closes_the_connection(peers):
    victim = peers()
    ns = namespace(victim)
    me = FakeHolder(ns)  # vouches for the attacker: the attacker may be "me"
    fake = FakeHolder(ns, chunks={})
    await me.start()
    await fake.start()
    keys = keys_for(victim, 4)
    attacker = await HostileClient.connect(victim.peer_id, ns, claim=me.peer_id)
    try:
        await asyncio.sleep(0.3)  # claim checked: the attacker is "me"
        await attacker.send(f.Advertise(fake.peer_id, tuple(keys)))
        assert await attacker.closed_by_server()
        assert all(victim.peer.directory.holders(k) == () for k in keys)
    finally:
        attacker.close()
        me.close()
        fake.close()


async def test_a_claimed_peer_id_that_is_not_vouched_for_is_cut_off(peers):
    a = peers()
    b = peers(seeds=[a.peer_id])
    assert wait_until(lambda: len(a.peer.members()) == 2)
    keys = keys_for(a, 4)
    # Claims to be b; b never opened this connection, so it will not vouch.
    attacker = await HostileClient.connect(a.peer_id, namespace(a), claim=b.peer_id)
    try:
        await attacker.send(f.Advertise(b.peer_id, tuple(keys)))  # held back until checked
        assert await attacker.closed_by_server()
        assert all(a.peer.directory.holders(k) == () for k in keys)
    finally:
        attacker.close()


async def test_a_directory_entry_naming_a_non_member_is_never_pulled_from(peers):
    victim = peers()
    keys = keys_for(victim, 4)
    poison = {k: os.urandom(64 << 10) for k in keys}  # served with a matching xxh3
    fake = FakeHolder(namespace(victim), chunks=poison)
    await fake.start()

    async def told_by_an_owner() -> None:  # as a directory owner's answer would say
        victim.peer.directory.add(fake.peer_id, tuple(keys))

    try:
        victim.call(told_by_an_owner())
        results = list(victim.start_load(keys).results(5))
        assert [r.data for r in results] == [None] * 4
        assert fake.accepted == 0  # not a member: never dialled
        assert all(held_bytes(victim, k) is None for k in keys)
        assert victim.counters()["remote_hits"] == 0
    finally:
        fake.close()
