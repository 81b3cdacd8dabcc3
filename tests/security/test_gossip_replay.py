"""Recorded gossip replayed to real SWIM engines after the member it speaks for has died.

A dead peer's SYNC, recorded and replayed after the survivors reaped it,
showed it alive again on every survivor until they probed it dead again.
Sealed datagrams now carry a timestamp and a nonce under their tag: a
receiver drops the ones outside the replay window and the ones it has seen.
"""

import asyncio
import random

from kvmesh.membership.seal import SealedTransport, gossip_sealer
from kvmesh.membership.sim_network import SimClock, SimNetwork
from kvmesh.membership.swim import Swim
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.udp import UdpTransport

NS = b"n" * 16
SECRET = b"s3cret"


class Tap:
    """A transport that records what goes through it (sealed bytes, as on the wire)."""

    def __init__(self, inner):
        self.inner = inner
        self.sent: list[tuple[str, bytes]] = []

    def send(self, addr, data):
        self.sent.append((addr, data))
        self.inner.send(addr, data)

    def set_receiver(self, receive):
        self.inner.set_receiver(receive)


def holds(node: Swim, peer: str) -> bool:
    return any(row.peer == peer for row in node.snapshot())


# ---- simulated network, simulated clock --------------------------------------------------


def test_a_reaped_members_sync_replayed_later_is_refused():
    clock = SimClock()
    net = SimNetwork(clock, seed=3)
    addrs = ["10.0.0.1:7400", "10.0.0.2:7400", "10.0.0.3:7400"]
    taps, nodes = {}, {}
    for i, addr in enumerate(addrs):
        taps[addr] = Tap(net.endpoint(addr))
        sealed = SealedTransport(taps[addr], gossip_sealer(SECRET, NS, clock=clock))
        nodes[addr] = Swim(addr, addr, sealed, clock, lambda j, l: None, vnodes=8,
                           rng=random.Random(i))
    a, b, c = (nodes[x] for x in addrs)
    a.join([])
    b.join([a.addr])
    c.join([a.addr])
    assert clock.run_for(10, lambda: all(len(n.members) == 3 for n in nodes.values()))
    recorded = list(taps[c.addr].sent)  # its join SYNC among them
    c.stop()
    net.kill(c.addr)
    assert clock.run_for(400, lambda: not holds(a, c.addr) and not holds(b, c.addr))

    net.revive(c.addr)  # the recording comes from the dead member's own address
    for dst, data in recorded:
        for survivor in (a.addr, b.addr):
            net._endpoints[c.addr].send(survivor, data)
    seen = clock.run_for(3, lambda: c.addr in a.members or c.addr in b.members)
    assert not seen, f"replayed datagrams brought {c.addr} back: a={sorted(a.members)}, " \
                     f"b={sorted(b.members)}"
    stats = a._transport.stats
    assert stats.stale > 0 and stats.rejected == 0


# ---- real UDP sockets on loopback, the real seal and the wall clock ----------------------

FAST = SwimConfig(probe_interval_s=0.05, probe_timeout_s=0.02, gossip_interval_s=0.01,
                  suspicion_mult=2, reconnect_interval_s=0.1, push_pull_interval_s=0.5,
                  dead_reap_s=0.5)


async def open_node(seed: int, tap: bool = False):
    udp = await UdpTransport.open("127.0.0.1", 0)
    inner = Tap(udp) if tap else udp
    node = Swim(udp.addr, udp.addr, SealedTransport(inner, gossip_sealer(SECRET, NS)),
                asyncio.get_running_loop(), lambda j, l: None, vnodes=8, config=FAST,
                rng=random.Random(seed))
    return node, udp, inner


async def wait_for(pred, timeout_s: float = 5.0) -> None:
    async def poll():
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


async def test_replayed_udp_datagrams_of_a_reaped_member_are_refused():
    (a, ua, _), (b, ub, _), (c, uc, tap) = [await open_node(i, tap=i == 2) for i in range(3)]
    attacker = await UdpTransport.open("127.0.0.1", 0)
    try:
        a.join([])
        b.join([a.addr])
        c.join([a.addr])
        await wait_for(lambda: all(len(n.members) == 3 for n in (a, b, c)))
        await asyncio.sleep(0.3)  # a few periods of pings, acks and state exchanges
        to_a = [data for dst, data in tap.sent if dst == a.addr]
        c.stop()  # a crash
        uc.close()
        await wait_for(lambda: not holds(a, c.addr) and not holds(b, c.addr))

        for data in to_a:  # within the replay window, to the member that saw them
            attacker.send(a.addr, data)
        came_back = False
        for _ in range(40):
            await asyncio.sleep(0.01)
            came_back = came_back or c.addr in a.members
        assert not came_back, f"{len(to_a)} replayed datagrams brought {c.addr} back to life"
        assert a._transport.stats.replayed == len(to_a)
    finally:
        for node, udp in ((a, ua), (b, ub), (c, uc)):
            node.stop()
            udp.close()
        attacker.close()
