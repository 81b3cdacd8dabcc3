"""Finding 7: the directory could be flooded.

Reproduced on protocol 2: 1M advertised keys grew a peer by 388 MiB; holders
per key were unbounded; and a LOOKUP whose answer outgrew the frame cap
closed the connection instead of answering. Now one holder fills at most
its share of the shard, a key has at most MAX_HOLDERS_PER_KEY holders, and an
answer too big for one frame is trimmed.
"""

from __future__ import annotations

import asyncio
import resource

from kvmesh.directory.shard import MAX_HOLDERS_PER_KEY, Directory
from kvmesh.transfer import frames as f
from tests.security.hostile import FakeHolder, HostileClient
from tests.security.victims import namespace, peers  # noqa: F401


def _keys(n: int, salt: int = 0) -> list[bytes]:
    return [(i + salt * n).to_bytes(16, "little") for i in range(n)]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_one_holder_fills_at_most_its_share_and_keys_hold_a_few_holders():
    shard = Directory(max_keys=1000, max_keys_per_holder=100, max_holders_per_key=4)
    shard.add("flooder:1", _keys(500))
    assert len(shard) == 100 and shard.keys_of("flooder:1") == 100 and shard.refused == 400
    shard.add("honest:2", _keys(50, salt=9))
    assert shard.keys_of("honest:2") == 50  # the flood took none of its room
    key = _keys(1, salt=7)[0]
    for i in range(10):
        shard.add(f"h:{i}", [key])
    assert len(shard.holders(key)) == 4
    shard.drop_holder("flooder:1")
    assert len(shard) == 51 and shard.keys_of("flooder:1") == 0


async def test_a_member_advertising_a_million_keys_costs_the_victim_its_cap_only(peers):
    victim = peers()
    me = FakeHolder(namespace(victim))
    await me.start()
    flooder = await HostileClient.connect(victim.peer_id, namespace(victim), claim=me.peer_id)
    try:
        await asyncio.sleep(0.3)  # the claim is checked: a member
        cap = victim.peer.directory.max_keys_per_holder
        before = _rss_mib()
        total = 1 << 20
        for start in range(0, total, f.MAX_KEYS_PER_REQUEST):
            batch = tuple((start + i).to_bytes(16, "little") for i in range(f.MAX_KEYS_PER_REQUEST))
            await flooder.send(f.Advertise(me.peer_id, batch))
        await flooder.send(f.Ping(1))
        assert isinstance(await flooder.recv(30), f.Pong)  # every batch was taken in
        grew = _rss_mib() - before
        assert victim.peer.directory.keys_of(me.peer_id) == cap < total
        # ~220 bytes an entry (the old shard grew ~388 bytes a key, uncapped):
        # the flood of a million keys costs the cap's worth, a quarter of them.
        assert grew < cap * 300 / (1 << 20) + 16, f"grew {grew:.0f} MiB for {cap} entries"
    finally:
        flooder.close()
        me.close()


async def test_a_lookup_answer_too_big_for_one_frame_is_trimmed_not_fatal(peers):
    victim = peers()
    keys = _keys(f.MAX_KEYS_PER_REQUEST)
    long_ids = [f"{'h' * 240}-{i}:{7000 + i}" for i in range(MAX_HOLDERS_PER_KEY)]

    async def crowd() -> None:  # 4096 keys x 16 holders x ~250 bytes: ~16 MiB of answer
        for holder in long_ids:
            victim.peer.directory.add(holder, keys)

    victim.call(crowd())
    asker = await HostileClient.connect(victim.peer_id, namespace(victim))
    try:
        await asker.send(f.Lookup(1, tuple(keys)))
        reply = await asker.recv(10)
        assert isinstance(reply, f.Holders) and len(reply.holders) == len(keys)
        assert reply.holders[0] and set(reply.holders[0]) <= set(long_ids)
        await asker.send(f.Ping(2))
        assert await asker.recv() == f.Pong(2)  # the connection lives on
    finally:
        asker.close()
