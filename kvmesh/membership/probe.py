"""Failure detection: the probe round, indirect probes, relaying, and local health.

Each protocol period `Swim` calls `probe()`: the next member of a shuffled
round gets a PING (carrying its suspicion if it is suspect, so it can
refute). No ACK within the probe timeout: `indirect_checks` random members
get a PING_REQ and ping it for us. No ACK by the end of the period: the
member is suspected, through `apply` (the claims merger). As a relay we ping
the target for the requester, forward its ACK, or send a NACK when the
probe timeout passes without one.

Local health (Lifeguard's awareness score): a missed ack whose relays did
not even nack, or an accusation we had to refute, raises it; an ack lowers
it. The probe interval and timeout scale by (score + 1), so a slow member
probes less eagerly instead of accusing healthy ones.

Owns the outstanding probes and relays (by sequence number) and their
timers, and the awareness score. At most `MAX_OUTSTANDING` of them at once:
a PING_REQ past that is dropped (counted in `stats.relays_refused`); our own
probes are one or two a period. Called by `Swim` (the tick, the PING, ACK,
PING_REQ and NACK handlers, `adjust_awareness` on refutation, `cancel_all`
on stop) and from its own timers, all on the clock's thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kvmesh.membership.edges import Clock, Timer
from kvmesh.membership.members import MemberTable, entry_of
from kvmesh.membership.outbox import Outbox
from kvmesh.membership.states import MemberState
from kvmesh.membership.stats import SwimStats
from kvmesh.membership.timing import SwimConfig, scale_by_awareness
from kvmesh.membership.wire import Entry, Kind, Message, is_name, pack_entry
from kvmesh.types import PeerId

_ALIVE, _SUSPECT = MemberState.ALIVE, MemberState.SUSPECT
MAX_OUTSTANDING = 256  # probes and relays awaiting an ack; a member relays a few per period


@dataclass(slots=True)
class _Probe:
    target: PeerId
    seq: int
    timer: Timer | None = None
    indirect: int = 0  # relays asked
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: str  # address to forward the ack (or nack) to
    seq: int  # the requester's sequence number
    timer: Timer | None = None


class Prober:
    def __init__(self, self_id: PeerId, table: MemberTable, outbox: Outbox, clock: Clock,
                 config: SwimConfig, stats: SwimStats, next_seq: Callable[[], int],
                 apply: Callable[[Entry], None]) -> None:
        """`next_seq()`: a fresh sequence number; `apply(entry)`: merge our own verdict."""
        self.awareness = 0  # read-only outside: 0 is healthy, up to awareness_max - 1
        self._self_id = self_id
        self._table = table
        self._outbox = outbox
        self._clock = clock
        self._config = config
        self._stats = stats
        self._next_seq = next_seq
        self._apply = apply
        self._acks: dict[int, _Probe | _Relay] = {}  # our seq -> what its ack settles

    def interval(self) -> float:
        """Seconds until the next probe, slowed down by the awareness score."""
        return scale_by_awareness(self._config.probe_interval_s, self.awareness)

    def probe(self) -> None:
        """Ping the next member of the round; arms the indirect-probe timer."""
        target = self._table.next_probe_target()
        if target is None:
            return
        probe = _Probe(target, self._next_seq())
        self._acks[probe.seq] = probe
        self._stats.probes += 1
        m = self._table.known[target]
        # A suspect hears of it from every prober, not just from gossip, and can refute.
        first = pack_entry(entry_of(m)) if m.state is _SUSPECT else None
        self._outbox.send(m.addr, Kind.PING, probe.seq, target=target, first=first)
        probe.timer = self._clock.call_later(
            scale_by_awareness(self._config.probe_timeout_s, self.awareness),
            lambda: self._probe_indirect(probe))

    def adjust_awareness(self, delta: int) -> None:
        self.awareness = min(max(self.awareness + delta, 0), self._config.awareness_max - 1)

    def cancel_all(self) -> None:
        """Cancel every probe and relay timer; their acks are ignored from now on."""
        for wait in self._acks.values():
            if wait.timer is not None:
                wait.timer.cancel()
        self._acks.clear()

    # ---- handlers (Swim.receive dispatches here) --------------------------------------

    def on_ping(self, msg: Message, src: str) -> None:
        if msg.target != self._self_id:
            self._stats.misdirected += 1
            return
        # A sender we suspect or hold dead learns it at once, and can refute.
        m = self._table.get(PeerId(msg.sender))
        first = pack_entry(entry_of(m)) if m is not None and m.state is not _ALIVE else None
        self._outbox.send(src, Kind.ACK, msg.seq, first=first)

    def on_ack(self, msg: Message, src: str) -> None:
        wait = self._acks.pop(msg.seq, None)
        if wait is None:
            return
        wait.timer.cancel()
        if isinstance(wait, _Relay):
            self._outbox.send(wait.requester, Kind.ACK, wait.seq)
        else:
            self.adjust_awareness(-1)

    def on_ping_req(self, msg: Message, src: str) -> None:
        if not is_name(msg.target) or not is_name(msg.target_addr):
            self._stats.malformed += 1
            return
        if len(self._acks) >= MAX_OUTSTANDING:
            self._stats.relays_refused += 1
            return
        relay = _Relay(src, msg.seq)
        seq = self._next_seq()
        self._acks[seq] = relay
        self._outbox.send(msg.target_addr, Kind.PING, seq, target=msg.target)
        relay.timer = self._clock.call_later(self._config.probe_timeout_s,
                                             lambda: self._relay_timeout(seq))

    def on_nack(self, msg: Message, src: str) -> None:
        probe = self._acks.get(msg.seq)
        if isinstance(probe, _Probe):
            probe.nacks += 1

    # ---- timers -------------------------------------------------------------------------

    def _probe_indirect(self, probe: _Probe) -> None:
        if self._acks.get(probe.seq) is not probe:
            return
        m = self._table.get(probe.target)
        if m is None or not m.live:
            del self._acks[probe.seq]
            return
        for helper in self._table.sample_live(self._config.indirect_checks, exclude=probe.target):
            self._outbox.send(self._table.known[helper].addr, Kind.PING_REQ, probe.seq,
                              target=m.peer, target_addr=m.addr)
            probe.indirect += 1
        rest = self._config.probe_interval_s - self._config.probe_timeout_s
        probe.timer = self._clock.call_later(scale_by_awareness(rest, self.awareness),
                                             lambda: self._probe_failed(probe))

    def _probe_failed(self, probe: _Probe) -> None:
        if self._acks.get(probe.seq) is not probe:
            return
        del self._acks[probe.seq]
        self._stats.probe_failures += 1
        # Lifeguard: relays that did not even nack point at our own network or CPU.
        self.adjust_awareness(probe.indirect - probe.nacks if probe.indirect else 1)
        m = self._table.get(probe.target)
        if m is not None and m.live:
            self._apply(Entry(_SUSPECT, m.incarnation, m.peer, m.addr, self._self_id))
        self._table.flush()

    def _relay_timeout(self, seq: int) -> None:
        relay = self._acks.pop(seq, None)
        if isinstance(relay, _Relay):
            self._outbox.send(relay.requester, Kind.NACK, relay.seq)
