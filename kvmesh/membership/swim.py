"""SWIM gossip membership: failure detection without all-to-all heartbeats.

Each protocol period a member pings one other (round robin over a shuffled
list). No ack within the probe timeout: it asks `indirect_checks` others to
ping the target for it. No ack by the end of the period: the target becomes
suspect. A suspicion expires into dead unless the suspect refutes it with a
newer incarnation; independent confirmations shorten it (Lifeguard). Every
state change rides as gossip on pings and acks and on gossip rounds to a few
random members, each item sent `retransmit_limit(n)` times. Joins, periodic
anti-entropy and reconnects to dead members (which heal partitions) are full
state exchanges (SYNC), as is any datagram from a sender we never heard of;
those that remote input asks for are budgeted per source and in total.
Pings to a suspect, and acks to one, carry the suspicion so it can refute
without waiting for gossip. Incarnations from the wire are bounded
(`states`), so no claim can push a refutation past the wire's cap; an
accusation about an older life than ours is answered to its sender
(`catch_up_incarnation`). The engine does not authenticate: the peer wraps
its transport in `seal.SealedTransport`, which drops datagrams not sealed
with the mesh secret (and the namespace), and replayed ones.

`Swim` is the front: it wires the parts together, owns this member's own
state (incarnation, leaving), the periodic timers and the lifecycle, and
dispatches each datagram. The parts, one file each:

- `wire`: datagrams and their codec; `edges`: clock and transport;
- `members`: the member table, the live list and the ring view;
- `claims`: merging claims by the state table (`states`), with
  the suspicion timers of `suspicion` (timing math: `timing`);
- `probe`: probes, indirect probes, relays and local health;
- `broadcast`: the bounded gossip queue; `outbox`: sending;
- `sync`: joins and other full state exchanges, within a `budget`; `stats`.

Sans-IO: the engine owns no socket and no timer. Its edges (`edges`):

- `receive(data, src)`: the transport calls it once per datagram; it does not
  block and does not keep `data` after returning.
- `Clock`: `time()` and `call_later(delay, callback)` (an asyncio loop is one,
  `sim_network.SimClock` another). Every callback runs on the clock's thread;
  nothing here is thread-safe.
- `GossipTransport.send(addr, data)`: unreliable datagrams; never blocks.

The front has about 25 methods and 300 lines, past the ~20 a class and
~300 lines a file here aim at: eight are one-line read accessors of the
consumer surface below, four are timer ticks, and the rest are the lifecycle
and the dispatch, which belong where the timers and own state are.

Consumer surface (the peer's): `members`, `others()`, `ring`, and
`on_change(joined, left)`, called synchronously once per batch of changes (one
datagram or one timer), never re-entrantly; it must not block. Plus
`state_of`, `incarnation_of`, `addr_of` and `snapshot()` for status pages.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable

from kvmesh.errors import RemoteProtocolError
from kvmesh.hashring.ring import HashRing
from kvmesh.membership.broadcast import BroadcastQueue
from kvmesh.membership.claims import Claims
from kvmesh.membership.edges import ChangeFn, Clock, GossipTransport, Timer
from kvmesh.membership.members import MemberTable, MemberView
from kvmesh.membership.outbox import Outbox
from kvmesh.membership.probe import Prober
from kvmesh.membership.states import (MemberState, admissible_about_self, catch_up_incarnation,
                                     must_refute, refute_incarnation)
from kvmesh.membership.stats import SwimStats
from kvmesh.membership.sync import StateSync
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.wire import MAX_SEQ, Entry, Kind, Message, decode, pack_entry
from kvmesh.types import PeerId

_ALIVE, _LEFT = MemberState.ALIVE, MemberState.LEFT
_SYNC_KINDS = (Kind.SYNC, Kind.SYNC_REPLY)


class Swim:
    """One member's SWIM engine. See the module docstring for its contracts."""

    def __init__(self, self_id: str, addr: str, transport: GossipTransport, clock: Clock,
                 on_change: ChangeFn, vnodes: int = 128, config: SwimConfig = SwimConfig(),
                 rng: random.Random | None = None) -> None:
        self.self_id = PeerId(self_id)
        self.addr = addr
        self.config = config
        self.incarnation = 0
        self.stats = SwimStats()
        self._transport = transport
        self._clock = clock
        self._rng = rng or random.Random()
        self._seq = 0
        self._timers: dict[str, Timer] = {}
        self._running = False
        self._leaving = False
        self._catch_up: int | None = None  # set while one datagram's entries are applied
        self._table = MemberTable(self.self_id, vnodes, self._rng, on_change)
        self._queue = BroadcastQueue(config.broadcast_queue_max)
        self._outbox = Outbox(self.self_id, transport, self._queue, self._table, clock, config,
                              self.stats, self._self_entry)
        self._claims = Claims(self.self_id, self._table, self._queue, clock, config, self.stats,
                              self._about_self)
        self._prober = Prober(self.self_id, self._table, self._outbox, clock, config, self.stats,
                              self._next_seq, self._claims.apply)
        self._sync = StateSync(addr, self._table, self._outbox, clock, config, self._rng,
                               self.stats, self._next_seq, lambda: self._running)
        self._handlers: dict[Kind, Callable[[Message, str], None]] = {
            Kind.PING: self._prober.on_ping, Kind.ACK: self._prober.on_ack,
            Kind.PING_REQ: self._prober.on_ping_req, Kind.NACK: self._prober.on_nack,
            Kind.GOSSIP: lambda msg, src: None,  # entries were applied in receive()
            Kind.SYNC: self._sync.on_sync, Kind.SYNC_REPLY: self._sync.on_sync_reply}

    # ---- consumer surface -------------------------------------------------------

    @property
    def members(self) -> frozenset[PeerId]:
        """Alive and suspect members, ourselves included."""
        return self._table.members

    def others(self) -> list[PeerId]:
        return self._table.others()

    @property
    def ring(self) -> HashRing:
        """The ring over `members`; brought up to date on each read."""
        return self._table.ring

    def state_of(self, peer: PeerId) -> MemberState | None:
        if peer == self.self_id:
            return _LEFT if self._leaving else _ALIVE
        m = self._table.get(PeerId(peer))
        return None if m is None else m.state

    def incarnation_of(self, peer: PeerId) -> int | None:
        if peer == self.self_id:
            return self.incarnation
        m = self._table.get(PeerId(peer))
        return None if m is None else m.incarnation

    def addr_of(self, peer: PeerId) -> str | None:
        if peer == self.self_id:
            return self.addr
        m = self._table.get(PeerId(peer))
        return None if m is None else m.addr

    def snapshot(self) -> list[MemberView]:
        """Every member we hold (dead and left until reaped), ourselves included, by peer id."""
        rows = [MemberView(self.self_id, self.addr, self.state_of(self.self_id).name.lower(),
                           self.incarnation)]
        rows += [MemberView(m.peer, m.addr, m.state.name.lower(), m.incarnation)
                 for m in self._table.known.values()]
        return sorted(rows, key=lambda r: r.peer)

    @property
    def awareness(self) -> int:
        """Local health score: 0 is healthy; probes slow down by (score + 1)."""
        return self._prober.awareness

    @property
    def broadcasts_dropped(self) -> int:
        return self._queue.dropped

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Register with the transport and start the timers (idempotent)."""
        if self._running:
            return
        self._running = True
        self._transport.set_receiver(self.receive)
        cfg, jitter = self.config, self._rng.random
        self._after("probe", jitter() * cfg.probe_interval_s, self._probe_tick)
        self._after("gossip", jitter() * cfg.gossip_interval_s, self._gossip_tick)
        self._after("push_pull", self._sync.pull_delay(), self._push_pull_tick)
        self._after("reconnect", (0.5 + jitter()) * cfg.reconnect_interval_s, self._reconnect_tick)

    def preload(self, members: Iterable[tuple[str, str]]) -> None:
        """Take (peer id, gossip address) pairs as alive at incarnation 0, without gossip.

        A warm start (a previous run's snapshot, a simulation); wrong entries
        are probed, suspected and declared dead like any failed member.
        """
        self._table.preload(members, self._clock.time())
        self._table.flush()

    def join(self, addrs: Iterable[str], on_done: Callable[[bool], None] | None = None) -> None:
        """Exchange state with these gossip addresses ("host:port"); starts the engine.

        Asks JOIN_FANOUT of them, in a shuffled turn, every probe interval
        until one answers: then on_done(True); on_done(False) after
        join_timeout_s without an answer. With no address but our own there
        is nobody to ask: on_done(True) at once. The addresses are kept as
        seeds for rejoining after total isolation.
        """
        self.start()
        self._sync.join(addrs, on_done)

    def leave(self) -> None:
        """Tell up to leave_fanout members that we leave, then stop.

        They mark us LEFT (no suspicion) and gossip it on; if every notice is
        lost the others find us dead the usual way.
        """
        if not self._running:
            return
        self._leaving = True
        notice = pack_entry(Entry(_LEFT, self.incarnation, self.self_id, self.addr, self.self_id))
        for peer in self._table.sample_live(self.config.leave_fanout):
            self._outbox.send(self._table.known[peer].addr, Kind.GOSSIP, first=notice)
        self.stop()

    def stop(self) -> None:
        """Cancel every timer and ignore datagrams from now on; pending joins report False."""
        self._running = False
        self._transport.set_receiver(None)
        for timer in self._timers.values():
            timer.cancel()
        self._prober.cancel_all()
        self._claims.suspicions.cancel_all()
        self._sync.cancel_joins()

    # ---- datagrams in -------------------------------------------------------------

    def receive(self, data: bytes, src: str) -> None:
        """One datagram from `src` ("host:port"). Never raises for bad input: drops and counts."""
        if not self._running:
            return
        self.stats.received += 1
        try:
            msg = decode(data)
        except RemoteProtocolError:
            self.stats.malformed += 1
            return
        sync = msg.kind in _SYNC_KINDS
        self._catch_up = None
        for entry in msg.entries:
            # Full-state exchanges would re-gossip the whole table: only changes
            # to members we knew, and news about the sender itself, go on.
            self._claims.apply(entry, rebroadcast_new=not sync or entry.peer == msg.sender)
        if self._catch_up is not None:
            self._answer_older_life(src, self._catch_up)
        self._handlers[msg.kind](msg, src)
        if not sync and msg.sender not in self._table.known and msg.sender != self.self_id:
            self._sync.sync_stranger(src)
        self._table.flush()

    def _about_self(self, state: MemberState, incarnation: int) -> None:
        """A claim about us: refute it with a newer incarnation if the state table says so.

        An accusation about an older life is noted for `_answer_older_life`
        (once per datagram, for the newest such life).
        """
        if not admissible_about_self(incarnation, self.incarnation):
            self.stats.claims_refused += 1
            return
        if must_refute(self.incarnation, state, incarnation, self._leaving):
            self.incarnation = refute_incarnation(self.incarnation, incarnation)
            self.stats.refutations += 1
            self._prober.adjust_awareness(1)
            self._queue.put(self.self_id, pack_entry(self._self_entry()))
            return
        answer = catch_up_incarnation(self.incarnation, state, incarnation, self._leaving)
        if answer is not None:
            self._catch_up = max(answer, self._catch_up or 0)

    def _answer_older_life(self, src: str, incarnation: int) -> None:
        """Tell `src`, which accused an older life of ours, that we are alive past it.

        One datagram per datagram received, as an ack (with piggybacked
        gossip); our own, newer, alive notice still spreads by gossip.
        """
        self.stats.catch_ups += 1
        notice = pack_entry(Entry(_ALIVE, incarnation, self.self_id, self.addr, ""))
        self._outbox.send(src, Kind.GOSSIP, first=notice)

    # ---- periodic timers ----------------------------------------------------------------
    # Each re-arms itself before its work. Keep that order: a seeded run is a
    # function of the order of timers and random draws.

    def _probe_tick(self) -> None:
        self._after("probe", self._prober.interval(), self._probe_tick)
        self._prober.probe()

    def _gossip_tick(self) -> None:
        self._after("gossip", self.config.gossip_interval_s, self._gossip_tick)
        self._outbox.gossip()

    def _push_pull_tick(self) -> None:
        self._after("push_pull", self._sync.pull_delay(), self._push_pull_tick)
        self._sync.sync_random()

    def _reconnect_tick(self) -> None:
        self._after("reconnect", self.config.reconnect_interval_s, self._reconnect_tick)
        self._sync.reconnect()

    def _after(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        if self._running:
            self._timers[name] = self._clock.call_later(delay, callback)

    # ---- helpers -----------------------------------------------------------------------

    def _self_entry(self) -> Entry:
        return Entry(_ALIVE, self.incarnation, self.self_id, self.addr, "")

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1
        return self._seq
