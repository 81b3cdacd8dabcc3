"""Merging claims (gossip entries) into the member table, by the state table.

Every entry that arrives, and every verdict this member reaches itself (a
failed probe: suspect; an expired suspicion: dead), goes through
`Claims.apply`. A claim that changes what we hold updates the row, starts or
ends the member's suspicion and is queued to be gossiped on; a same
incarnation suspicion from someone new confirms ours (Lifeguard). A claim
whose incarnation rises past the bounds of `states` (`admissible`) is
refused whole and counted (`stats.claims_refused`). Claims about ourselves
are handed to `on_self(state, incarnation)`, where the engine checks their
bound and decides whether to refute.

Owns the suspicion timers (`suspicions`). Called by `Swim.receive` and the
prober, and from its own expiry timers, all on the clock's thread; `apply`
does not flush the table's change batch, its caller does (the expiry path
flushes itself, being a timer of its own).
"""

from __future__ import annotations

from typing import Callable

from kvmesh.membership.broadcast import BroadcastQueue
from kvmesh.membership.edges import Clock
from kvmesh.membership.members import MemberTable
from kvmesh.membership.states import LIVE, Member, MemberState, admissible, supersedes
from kvmesh.membership.stats import SwimStats
from kvmesh.membership.suspicion import Suspicions
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.wire import Entry, pack_entry
from kvmesh.types import PeerId

_ALIVE, _SUSPECT, _DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
_STATE_OF = {int(s): s for s in MemberState}


class Claims:
    def __init__(self, self_id: PeerId, table: MemberTable, queue: BroadcastQueue, clock: Clock,
                 config: SwimConfig, stats: SwimStats,
                 on_self: Callable[[MemberState, int], None]) -> None:
        self._self_id = self_id
        self._table = table
        self._queue = queue
        self._clock = clock
        self._stats = stats
        self._on_self = on_self
        self.suspicions = Suspicions(clock, config, self._expired)

    def apply(self, e: Entry, rebroadcast_new: bool = True) -> None:
        """Merge one claim; gossip it on if it changed anything.

        rebroadcast_new=False: a member we never heard of is added without
        gossiping it (full state exchanges would re-gossip the whole table).
        """
        state = _STATE_OF[e.state]
        if e.peer == self._self_id:
            self._on_self(state, e.incarnation)
            return
        peer = PeerId(e.peer)
        m = self._table.get(peer)
        if m is None:
            self._add(peer, state, e, rebroadcast_new)
            return
        if not m.admits(e.incarnation, self._clock.time()):
            self._stats.claims_refused += 1
            return
        if state is m.state and e.incarnation == m.incarnation and state is not _SUSPECT:
            return  # old news, the common case
        if not supersedes(m.state, m.incarnation, state, e.incarnation):
            if state is _SUSPECT and m.state is _SUSPECT and e.incarnation == m.incarnation:
                if self.suspicions.confirm(m, e.origin):
                    self._queue.put(m.peer, pack_entry(e))
            return
        was_live = m.live
        m.apply(state, e.incarnation, self._clock.time())
        if state is _ALIVE:
            m.addr = e.addr  # a refutation may come from a restarted peer's new address
        if state is _SUSPECT:
            self._suspect(m, e.origin)
        else:
            self.suspicions.end(peer)
        if was_live and not m.live:
            self._table.became_dead(m, self._clock.time())
        elif m.live and not was_live:
            self._table.became_live(m)
        self._queue.put(peer, pack_entry(e))

    def _add(self, peer: PeerId, state: MemberState, e: Entry, rebroadcast: bool) -> None:
        if state not in LIVE:
            return  # news of a stranger's death
        if not admissible(e.incarnation, None):
            self._stats.claims_refused += 1
            return
        if self._table.full:
            self._stats.members_refused += 1
            return
        now = self._clock.time()
        m = Member(peer, e.addr, state, e.incarnation, now, floor=e.incarnation, floor_at=now)
        self._table.add(m)
        if state is _SUSPECT:
            self._suspect(m, e.origin)
        if rebroadcast:
            self._queue.put(peer, pack_entry(e))

    def _suspect(self, m: Member, origin: str) -> None:
        self.suspicions.start(m, origin, len(self._table.live) + 1)
        self._stats.suspicions += 1

    def _expired(self, peer: PeerId, incarnation: int) -> None:
        m = self._table.get(peer)
        if m is None or m.state is not _SUSPECT or m.incarnation != incarnation:
            return
        self._stats.declared_dead += 1
        self.apply(Entry(_DEAD, incarnation, peer, m.addr, self._self_id))
        self._table.flush()
