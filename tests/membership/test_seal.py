"""Sealed gossip and beacons: what unseals, what is dropped, and SWIM over real sealed UDP."""

import asyncio
import random

import pytest

from kvmesh.membership.discovery import MAX_BEACON_BYTES, MulticastBeacon
from kvmesh.membership.seal import (TAG_BYTES, SealedTransport, Sealer, beacon_sealer,
                                     gossip_sealer)
from kvmesh.membership.swim import Swim
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.udp import UdpTransport

NS = b"n" * 16
FAST = SwimConfig(probe_interval_s=0.05, probe_timeout_s=0.02, gossip_interval_s=0.01)


def test_seal_round_trip_and_every_mismatch_is_refused():
    sealer = gossip_sealer(b"s3cret", NS)
    sealed = sealer.seal(b"payload")
    assert len(sealed) == len(b"payload") + TAG_BYTES and sealer.authenticated
    assert sealer.unseal(sealed) == b"payload"
    assert sealer.unseal(b"") is None
    assert sealer.unseal(sealed[:-1]) is None  # truncated
    assert sealer.unseal(b"X" + sealed[1:]) is None  # payload changed
    assert sealer.unseal(b"payload") is None  # never sealed
    for other in (gossip_sealer(b"wrong", NS), gossip_sealer(None, NS),
                  gossip_sealer(b"s3cret", b"m" * 16), beacon_sealer(b"s3cret", NS)):
        assert other.unseal(sealed) is None


def test_without_a_secret_the_tag_only_separates_namespaces():
    a, b = gossip_sealer(None, NS), gossip_sealer(None, NS)
    assert not a.authenticated and b.unseal(a.seal(b"x")) == b"x"
    assert gossip_sealer(None, b"m" * 16).unseal(a.seal(b"x")) is None


class Loop:
    """In-memory transport: whatever is sent is handed to the receiver at once."""

    def __init__(self):
        self.receive = None
        self.sent = []

    def send(self, addr, data):
        self.sent.append(data)

    def set_receiver(self, receive):
        self.receive = receive


def test_sealed_transport_seals_sends_and_drops_bad_datagrams():
    inner = Loop()
    sealed = SealedTransport(inner, Sealer(b"k", b"ctx"))
    got = []
    sealed.set_receiver(lambda data, src: got.append((data, src)))
    sealed.send("1.2.3.4:5", b"hello")
    inner.receive(inner.sent[0], "1.2.3.4:5")
    inner.receive(b"hello", "6.6.6.6:6")  # unauthenticated
    inner.receive(inner.sent[0][:-1] + b"\0", "6.6.6.6:6")  # forged tag
    assert got == [(b"hello", "1.2.3.4:5")] and sealed.stats.rejected == 2
    sealed.set_receiver(None)
    assert inner.receive is None


async def start(secret):
    udp = await UdpTransport.open("127.0.0.1", 0)
    node = Swim(udp.addr, udp.addr, SealedTransport(udp, gossip_sealer(secret, NS)),
                asyncio.get_running_loop(), lambda j, l: None, vnodes=8, config=FAST,
                rng=random.Random(1))
    return node, udp


async def test_only_members_with_the_secret_join():
    nodes = [await start(s) for s in (b"right", b"right", b"wrong", None)]
    (a, _), (b, _), (c, _), (d, _) = nodes
    try:
        joined = asyncio.get_running_loop().create_future()
        a.join([])
        b.join([a.addr], joined.set_result)
        c.join([a.addr, b.addr])
        d.join([a.addr, b.addr])
        assert await asyncio.wait_for(joined, 2.0) is True
        await asyncio.sleep(0.4)  # several probe periods and join attempts
        assert a.members == b.members == {a.self_id, b.self_id}
        assert c.members == {c.self_id} and d.members == {d.self_id}
        assert a._transport.stats.rejected > 0 and a.stats.malformed == 0
    finally:
        for node, udp in nodes:
            node.stop()
            udp.close()


def test_beacon_refuses_unsealed_and_foreign_beacons():
    sealer = beacon_sealer(b"s3cret", NS)
    beacon = MulticastBeacon("10.0.0.1:7400", sealer=sealer)
    peer = MulticastBeacon("10.0.0.2:7400", sealer=sealer)
    unsealed = MulticastBeacon("10.0.0.3:7400")
    intruder = MulticastBeacon("10.0.0.4:7400", sealer=beacon_sealer(b"wrong", NS))
    for other in (peer, unsealed, intruder):
        beacon._received(other._payload)
    assert beacon.heard() == ["10.0.0.2:7400"] and beacon.rejected == 2


@pytest.mark.parametrize("secret", [None, b"s"])
def test_sealed_beacon_fits_its_cap(secret):
    beacon = MulticastBeacon("[fd00::1]:65535", sealer=beacon_sealer(secret, NS))
    assert len(beacon._payload) <= MAX_BEACON_BYTES
