"""Sealed gossip and beacons: what unseals, what is dropped (forged, stale, replayed), and SWIM
over real sealed UDP."""

import asyncio
import random

import pytest

from kvmesh.membership.discovery import MAX_BEACON_BYTES, MulticastBeacon
from kvmesh.membership.seal import (ENVELOPE_BYTES, MAX_REPLAY_NONCES, REPLAY_WINDOW_S,
                                     SealedTransport, Sealer, beacon_sealer, gossip_sealer)
from kvmesh.membership.sim_network import SimClock
from kvmesh.membership.swim import Swim
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.udp import UdpTransport

NS = b"n" * 16
FAST = SwimConfig(probe_interval_s=0.05, probe_timeout_s=0.02, gossip_interval_s=0.01)


def test_seal_round_trip_and_every_mismatch_is_refused():
    sealer = gossip_sealer(b"s3cret", NS)
    sealed = sealer.seal(b"payload")
    assert len(sealed) == len(b"payload") + ENVELOPE_BYTES and sealer.authenticated
    assert sealer.unseal(sealed) == b"payload"
    assert sealer.unseal(b"") is None
    assert sealer.unseal(sealed[:-1]) is None  # truncated
    assert sealer.unseal(b"X" + sealed[1:]) is None  # payload changed
    assert sealer.unseal(b"payload") is None  # never sealed
    for other in (gossip_sealer(b"wrong", NS), gossip_sealer(None, NS),
                  gossip_sealer(b"s3cret", b"m" * 16), beacon_sealer(b"s3cret", NS)):
        assert other.unseal(sealed) is None


def test_a_tampered_envelope_is_refused():
    sealer = gossip_sealer(b"s3cret", NS)
    sealed = sealer.seal(b"payload")
    for at in range(len(sealed)):  # payload, timestamp, nonce or tag: any flipped bit
        flipped = sealed[:at] + bytes((sealed[at] ^ 1,)) + sealed[at + 1:]
        assert sealer.unseal(flipped) is None
    assert sealer.stats.rejected == len(sealed)
    assert sealer.unseal(sealed) == b"payload"


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
        beacon._received(other._datagram())
    assert beacon.heard() == ["10.0.0.2:7400"] and beacon.rejected == 2


@pytest.mark.parametrize("secret", [None, b"s"])
def test_sealed_beacon_fits_its_cap(secret):
    beacon = MulticastBeacon("[fd00::1]:65535", sealer=beacon_sealer(secret, NS))
    assert len(beacon._datagram()) <= MAX_BEACON_BYTES


# ---- the replay window ------------------------------------------------------------------


def pair(clock, **kwargs):
    """A sender's and a receiver's sealer for one mesh (same secret and namespace)."""
    return (gossip_sealer(b"s3cret", NS, clock=clock, **kwargs),
            gossip_sealer(b"s3cret", NS, clock=clock, **kwargs))


@pytest.mark.parametrize("secret", [b"s3cret", None])
def test_a_datagram_unseals_once(secret):
    clock = SimClock(1000.0)
    tx, rx = gossip_sealer(secret, NS, clock=clock), gossip_sealer(secret, NS, clock=clock)
    sealed = tx.seal(b"x")
    assert tx.seal(b"x") != sealed  # a fresh nonce each time
    assert rx.unseal(sealed) == b"x"
    clock.run_for(1.0)
    assert rx.unseal(sealed) is None and rx.stats.replayed == 1
    assert tx.unseal(sealed) == b"x"  # another receiver's first sight of it


def test_datagrams_outside_the_window_are_stale():
    clock = SimClock(1000.0)
    tx, rx = pair(clock)
    old = tx.seal(b"old")
    clock.run_for(REPLAY_WINDOW_S + 0.001)
    assert rx.unseal(old) is None and rx.stats.stale == 1
    ahead = gossip_sealer(b"s3cret", NS, clock=SimClock(clock.time() + REPLAY_WINDOW_S + 1))
    assert rx.unseal(ahead.seal(b"future")) is None and rx.stats.stale == 2
    skewed = gossip_sealer(b"s3cret", NS, clock=SimClock(clock.time() + REPLAY_WINDOW_S / 2))
    assert rx.unseal(skewed.seal(b"skewed")) == b"skewed"  # within the window: fine


def test_what_was_sealed_before_a_member_started_is_refused():
    clock = SimClock(1000.0)
    recorded = gossip_sealer(b"s3cret", NS, clock=clock).seal(b"earlier life")
    clock.run_for(0.5)
    restarted = gossip_sealer(b"s3cret", NS, clock=clock)  # it forgot every nonce
    assert restarted.unseal(recorded) is None and restarted.stats.stale == 1


def test_a_full_nonce_cache_refuses_replays_of_what_it_forgot():
    clock = SimClock(1000.0)
    tx, rx = pair(clock, max_nonces=4)
    sealed = []
    for _ in range(6):
        clock.run_for(0.01)
        sealed.append(tx.seal(b"x"))
        assert rx.unseal(sealed[-1]) == b"x"
    for data in sealed:  # the two forgotten are stale, the four remembered replayed
        assert rx.unseal(data) is None
    assert (rx.stats.stale, rx.stats.replayed) == (2, 4)
    clock.run_for(0.01)
    assert rx.unseal(tx.seal(b"fresh")) == b"fresh"


def test_a_clock_stepped_back_does_not_reopen_expired_nonces():
    clock = SimClock(1000.0)
    tx, rx = pair(clock)
    sealed = tx.seal(b"x")
    assert rx.unseal(sealed) == b"x"
    clock.run_for(REPLAY_WINDOW_S + 1)
    rx.unseal(tx.seal(b"y"))  # the first nonce expires here
    rx._clock = SimClock(1000.0 + 1)  # an operator set the clock back
    assert rx.unseal(sealed) is None and rx.stats.stale == 1


def test_memory_is_bounded_under_a_flood_of_fresh_datagrams():
    clock = SimClock(1000.0)
    tx, rx = pair(clock)
    admitted = 0
    for _ in range(MAX_REPLAY_NONCES + 500):
        clock.run_for(0.0001)  # 2 s in all: well within the window
        admitted += rx.unseal(tx.seal(b"x")) is not None
    assert admitted == MAX_REPLAY_NONCES + 500  # newer ones still get in
    assert len(rx._guard) == MAX_REPLAY_NONCES


def test_the_window_is_shorter_than_the_time_the_dead_are_kept():
    assert REPLAY_WINDOW_S < SwimConfig().dead_reap_s


def test_a_recorded_beacon_replayed_is_refused():
    clock = SimClock(1000.0)
    beacon = MulticastBeacon("10.0.0.1:7400", sealer=beacon_sealer(b"s", NS, clock=clock))
    peer = MulticastBeacon("10.0.0.2:7400", sealer=beacon_sealer(b"s", NS, clock=clock))
    recorded = peer._datagram()
    clock.run_for(REPLAY_WINDOW_S + 1)
    beacon._received(recorded)
    assert beacon.heard() == [] and beacon.rejected == 1
    beacon._received(peer._datagram())  # each announce is sealed anew
    assert beacon.heard() == ["10.0.0.2:7400"]
