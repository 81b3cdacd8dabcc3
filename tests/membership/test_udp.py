"""Two and three SWIM engines over real loopback UDP, the asyncio loop as their clock."""

import asyncio
import random

from kvmesh.membership.swim import Swim
from kvmesh.membership.states import MemberState
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.udp import UdpTransport, format_addr

FAST = SwimConfig(probe_interval_s=0.05, probe_timeout_s=0.02, gossip_interval_s=0.01,
                  suspicion_mult=2, reconnect_interval_s=0.5, push_pull_interval_s=1.0)


async def wait_for(pred, timeout_s: float = 3.0) -> None:
    async def poll():
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


async def start_engine(changes: list) -> tuple[Swim, UdpTransport]:
    udp = await UdpTransport.open("127.0.0.1", 0)
    node = Swim(udp.addr, udp.addr, udp, asyncio.get_running_loop(),
                lambda j, l: changes.append((j, l)), vnodes=8, config=FAST, rng=random.Random(1))
    return node, udp


async def test_engines_join_probe_and_leave_over_loopback():
    changes: list = []
    (a, ua), (b, ub), (c, uc) = [await start_engine(changes) for _ in range(3)]
    try:
        joined = asyncio.get_running_loop().create_future()
        a.join([])
        b.join([a.addr], joined.set_result)
        c.join([a.addr])
        assert await asyncio.wait_for(joined, 2.0) is True
        await wait_for(lambda: all(len(n.members) == 3 for n in (a, b, c)))
        await asyncio.sleep(0.3)  # several probe periods of real pings and acks
        assert a.stats.probes > 0 and ua.stats.received > 0 and ub.stats.sent > 0
        assert all(n.state_of(p) is MemberState.ALIVE for n in (a, b, c) for p in a.members)

        ua.send(b.addr, b"\xc1 not a datagram")
        await wait_for(lambda: b.stats.malformed == 1)

        c.leave()
        await wait_for(lambda: a.state_of(c.self_id) is MemberState.LEFT
                       and b.state_of(c.self_id) is MemberState.LEFT)
        assert a.members == {a.self_id, b.self_id}

        b.stop()  # a crash: no leave notice
        ub.close()
        await wait_for(lambda: a.state_of(b.self_id) is MemberState.DEAD)
        assert a.members == {a.self_id} and a.ring.peers == {a.self_id}
    finally:
        for node, udp in ((a, ua), (b, ub), (c, uc)):
            node.stop()
            udp.close()


async def test_send_drops_what_it_cannot_send():
    udp = await UdpTransport.open("127.0.0.1", 0)
    try:
        udp.send("not-an-ip.example:7400", b"x")  # names are resolved in discovery, not here
        udp.send("nonsense", b"x")
        udp.send(udp.addr, bytes(70000))
        assert udp.stats.dropped == 3 and udp.stats.sent == 0
        got = asyncio.get_running_loop().create_future()
        udp.set_receiver(lambda data, src: got.done() or got.set_result((data, src)))
        udp.send(udp.addr, b"hello")
        assert await asyncio.wait_for(got, 2.0) == (b"hello", udp.addr)
    finally:
        udp.close()


async def test_a_failing_receiver_does_not_close_the_socket():
    udp = await UdpTransport.open("127.0.0.1", 0)
    try:
        seen = []

        def receive(data, src):
            seen.append(data)
            raise RuntimeError("bug")

        udp.set_receiver(receive)
        udp.send(udp.addr, b"1")
        udp.send(udp.addr, b"2")
        await wait_for(lambda: len(seen) == 2)
        assert udp.stats.receiver_errors == 2
    finally:
        udp.close()


def test_format_addr():
    assert format_addr("10.0.0.1", 7400) == "10.0.0.1:7400"
    assert format_addr("::1", 7400) == "[::1]:7400"
