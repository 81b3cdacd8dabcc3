"""Fuzzing gossip: datagrams through the seal into a running `Swim` on a simulated clock.

A small mesh (MESH_SIZE engines, each behind a `SealedTransport` with a known
test secret) runs on `sim_network`; every input is one datagram handed to
the first engine's endpoint as the network would deliver it, then the clock
runs on a little so the timers that datagram armed fire too. Inputs are
valid datagrams and ones mutated before sealing (so they pass the seal and
reach the decoder and the engine), sealed datagrams mutated after sealing
(the seal must refuse them), replays, stale and wrongly keyed envelopes, and
unsealed noise. Nothing may raise: `Swim.receive` drops and counts whatever
it cannot use. The mesh is rebuilt every REBUILD_EVERY inputs so the fuzzer
does not spend itself on an engine it already talked into a corner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgpack

from kvmesh.bench import fuzz_mutate as mut
from kvmesh.membership.members import MAX_MEMBERS
from kvmesh.membership.seal import (
    GOSSIP_CONTEXT,
    SealedTransport,
    Sealer,
    gossip_sealer,
)
from kvmesh.membership.sim_network import SimClock, SimNetwork
from kvmesh.membership.states import INCARNATION_CEILING, MAX_INCARNATION, MemberState
from kvmesh.membership.swim import Swim
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.wire import MAX_ENTRIES, MAX_SEQ, Entry, Kind, encode, pack_entry

SECRET = b"fuzz-test-secret"  # a test secret: the fuzzer seals as a member would
NAMESPACE = b"fuzz-namespace-0"
MESH_SIZE = 4
ADDRS = [f"10.0.0.{i}:7400" for i in range(1, MESH_SIZE + 1)]
STRANGERS = ["10.0.0.66:7400", "10.9.9.9:1", "[::1]:7400", "x", "ä" * 3, "a" * 255]
_MUST_NOT_PASS = ("post", "stale", "wrong-key", "replay")
STEP_S = 0.01  # simulated seconds the mesh runs after each input
REBUILD_EVERY = 2000
CHECK_EVERY = 64  # inputs between checks of the engine's bounds


class _SkewedClock:
    """The simulated clock, off by `skew_s`: envelopes from outside the replay window."""

    def __init__(self, clock: SimClock, skew_s: float) -> None:
        self._clock, self._skew_s = clock, skew_s

    def time(self) -> float:
        return self._clock.time() + self._skew_s


@dataclass(frozen=True)
class GossipInput:
    seal: str  # how the payload was wrapped: pre, post, replay, stale, wrong-key, raw
    payload: bytes  # before sealing ("" where the bytes were never a payload)
    data: bytes  # what the endpoint received
    src: str
    sim_time: float

    def as_json(self) -> dict:
        return {"seal": self.seal, "payload_hex": self.payload.hex(), "hex": self.data.hex(),
                "src": self.src, "sim_time": self.sim_time}


def _name(rng: random.Random) -> str:
    return rng.choice(ADDRS) if rng.random() < 0.7 else rng.choice(STRANGERS)


def _incarnation(rng: random.Random) -> int:
    return rng.choice((0, 1, 2, rng.randrange(16), INCARNATION_CEILING, INCARNATION_CEILING + 1,
                       MAX_INCARNATION - 1, MAX_INCARNATION, rng.randrange(MAX_INCARNATION)))


def random_entry(rng: random.Random) -> bytes:
    origin = "" if rng.random() < 0.5 else _name(rng)
    return pack_entry(Entry(int(rng.choice(list(MemberState))), _incarnation(rng), _name(rng),
                            _name(rng), origin))


def valid_datagram(rng: random.Random) -> bytes:
    entries = [random_entry(rng) for _ in range(rng.choice((0, 1, 2, rng.randint(3, 12))))]
    target = "" if rng.random() < 0.4 else _name(rng)
    return encode(rng.choice(list(Kind)), rng.randrange(MAX_SEQ + 1), _name(rng), target,
                  "" if rng.random() < 0.5 else _name(rng), entries)


def _odd_value(rng: random.Random):
    return rng.choice((None, True, -1, 1 << 63, 1.5, "", "x" * 300, b"\x00", [], [1, 2], {"a": 1},
                       rng.randrange(MAX_SEQ + 2), _name(rng), int(rng.choice(list(Kind))) + 7))


def structured_odd(rng: random.Random) -> bytes:
    """A datagram-shaped array with some fields (or entry fields) of the wrong kind."""
    fields = [1, int(rng.choice(list(Kind))), rng.randrange(MAX_SEQ), _name(rng), "", "",
              [list(Entry(0, 0, _name(rng), _name(rng), "")) for _ in range(rng.randint(0, 3))]]
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(fields) + 2)
        if at < len(fields):
            fields[at] = _odd_value(rng)
        elif isinstance(fields[6], list) and fields[6] and isinstance(fields[6][0], list):
            entry = fields[6][0]
            entry[rng.randrange(len(entry))] = _odd_value(rng)
    if rng.random() < 0.1:
        fields.append(_odd_value(rng))  # later versions may append: must be ignored
    if rng.random() < 0.05:
        fields[6] = [list(Entry(0, 0, "p", "a", ""))] * (MAX_ENTRIES + 1)
    return msgpack.packb(fields, use_bin_type=rng.random() < 0.5)


def payload(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.35:
        return valid_datagram(rng)
    if roll < 0.55:
        return structured_odd(rng)
    if roll < 0.95:
        return mut.mutate(rng, valid_datagram(rng))
    return rng.randbytes(rng.randint(0, 128))


class GossipSurface:
    """One sealed engine among MESH_SIZE; `run` hands it one datagram and runs the clock on.

    The documented outcome for bad input is a silent drop (counted by the
    seal or by the engine); any exception out of the endpoint's receiver or
    out of a timer is a crash. Not thread-safe.
    """

    name = "gossip"

    def __init__(self) -> None:
        self._inputs = 0
        self._replayable: list[bytes] = []
        self._build()

    def _build(self) -> None:
        self.clock = clock = SimClock(1_000_000.0)
        net = SimNetwork(clock, seed=self._inputs)
        self.engines: list[Swim] = []
        seals: list[SealedTransport] = []
        for i, addr in enumerate(ADDRS):
            seals.append(SealedTransport(net.endpoint(addr), gossip_sealer(SECRET, NAMESPACE, clock=clock)))
            engine = Swim(addr, addr, seals[-1], clock, lambda joined, left: None, vnodes=8,
                          config=SwimConfig(), rng=random.Random(i))
            engine.preload((a, a) for a in ADDRS)
            engine.start()
            self.engines.append(engine)
        self.target, self.target_seal = self.engines[0], seals[0]
        self.endpoint = seals[0].inner  # what the network delivers to: the seal's receiver
        self.sealers = {"member": gossip_sealer(SECRET, NAMESPACE, clock=clock),
                        "wrong-key": gossip_sealer(b"not-the-secret", NAMESPACE, clock=clock),
                        "stale": Sealer(SECRET, GOSSIP_CONTEXT + NAMESPACE,
                                        clock=_SkewedClock(clock, -120.0))}
        self._replayable.clear()
        clock.run_for(3.0)

    def make(self, rng: random.Random) -> GossipInput:
        if self._inputs and self._inputs % REBUILD_EVERY == 0:
            self._build()
        self._inputs += 1
        body = payload(rng)
        roll = rng.random()
        if roll < 0.55:
            how, data = "pre", self.sealers["member"].seal(body)
        elif roll < 0.8:
            sealed = self.sealers["member"].seal(body)
            data = mut.mutate(rng, sealed)
            how = "post" if data != sealed else "pre"  # a mutation may leave the bytes as they were
        elif roll < 0.85 and self._replayable:
            how, data, body = "replay", rng.choice(self._replayable), b""
        elif roll < 0.9:
            how, data = "stale", self.sealers["stale"].seal(body)
        elif roll < 0.95:
            how, data = "wrong-key", self.sealers["wrong-key"].seal(body)
        else:
            how, data = "raw", body
        if how == "pre" and len(self._replayable) < 64:
            self._replayable.append(data)
        src = rng.choice(ADDRS[1:]) if rng.random() < 0.8 else rng.choice(STRANGERS)
        return GossipInput(how, body, data, src, self.clock.time())

    def run(self, inp: GossipInput) -> tuple[bool, str | None]:
        """(dropped by the seal or the decoder, a broken contract or None)."""
        seal_stats, stats = self.target_seal.stats, self.target.stats
        sealed_out = seal_stats.rejected + seal_stats.stale + seal_stats.replayed
        malformed = stats.malformed
        self.endpoint.receiver(inp.data, inp.src)
        self.clock.run_for(STEP_S)
        by_seal = seal_stats.rejected + seal_stats.stale + seal_stats.replayed > sealed_out
        dropped = by_seal or stats.malformed > malformed
        if inp.seal == "pre" and by_seal:
            return dropped, "the seal refused a datagram sealed with the mesh secret"
        if inp.seal in _MUST_NOT_PASS and not by_seal:
            return dropped, f"a {inp.seal} datagram passed the seal"
        return dropped, self._broken_bound() if self._inputs % CHECK_EVERY == 0 else None

    def _broken_bound(self) -> str | None:
        engine = self.target
        if len(engine.snapshot()) > MAX_MEMBERS + 1:
            return f"member table holds {len(engine.snapshot())} rows, cap {MAX_MEMBERS}"
        if engine.incarnation > INCARNATION_CEILING + 1:
            return f"own incarnation {engine.incarnation} past the ceiling"
        return None

