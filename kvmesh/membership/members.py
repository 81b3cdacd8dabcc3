"""The member table: what one engine believes about every other member.

Owns the rows (`Member`: state, incarnation, address, since), the live list
(alive and suspect members, kept for O(1) random picks and the probe round),
the recently dead (gossiped to so a wrongly declared member can refute), the
hash ring over the live members, and the batch of joins and leaves not yet
reported to the consumer.

Callers: `claims` adds rows and reports state changes (`add`,
`became_live`, `became_dead`); the prober, gossip and state sync read and
sample; `Swim` serves the consumer views. Whatever handles a datagram or a
timer calls `flush` once at its end, which calls `on_change(joined, left)`
synchronously if anything changed. The table sends nothing and arms no
timer; its only randomness is the engine's seeded `rng`, passed in. One
clock thread only.

Bounded: at most `MAX_MEMBERS` rows (dead and left ones included, until
reaped); `full` says when a member we never heard of must be refused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

from kvmesh.hashring.ring import HashRing
from kvmesh.membership.edges import ChangeFn
from kvmesh.membership.states import Member, MemberState
from kvmesh.membership.wire import Entry
from kvmesh.types import PeerId

MAX_MEMBERS = 4096  # rows for others: four times the 1,000 peers the benchmarks run


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of `Swim.snapshot()`, ready for JSON."""

    peer: PeerId
    addr: str
    state: str  # alive, suspect, dead or left
    incarnation: int


def entry_of(m: Member) -> Entry:
    """Our current claim about `m`, as it goes on the wire (no origin)."""
    return Entry(int(m.state), m.incarnation, m.peer, m.addr, "")


class MemberTable:
    """Rows for everyone but us, plus the views derived from them."""

    def __init__(self, self_id: PeerId, vnodes: int, rng: random.Random,
                 on_change: ChangeFn) -> None:
        self.self_id = self_id
        self.known: dict[PeerId, Member] = {}  # everyone but us; dead and left until reaped
        self.live: list[PeerId] = []  # alive or suspect, in no order; read, never write
        self.recent_dead: dict[PeerId, float] = {}  # peer -> time of death
        self._live_at: dict[PeerId, int] = {}  # index into `live`
        self._rng = rng
        self._on_change = on_change
        self._ring = HashRing([self_id], vnodes=vnodes)
        self._ring_pending: dict[PeerId, bool] = {}  # applied when `ring` is read
        self._members_view: frozenset[PeerId] | None = None
        self._joined: set[PeerId] = set()
        self._left: set[PeerId] = set()
        self._probe_order: list[PeerId] = []
        self._probe_next = 0

    # ---- views --------------------------------------------------------------------

    def get(self, peer: PeerId) -> Member | None:
        return self.known.get(peer)

    @property
    def full(self) -> bool:
        """No room for a member we never heard of (claims about them are refused)."""
        return len(self.known) >= MAX_MEMBERS

    @property
    def members(self) -> frozenset[PeerId]:
        """Alive and suspect members, ourselves included; cached until the next change."""
        if self._members_view is None:
            self._members_view = frozenset((*self.live, self.self_id))
        return self._members_view

    def others(self) -> list[PeerId]:
        return sorted(self.live)

    @property
    def ring(self) -> HashRing:
        """The ring over `members`; brought up to date on each read."""
        if self._ring_pending:
            for peer, live in self._ring_pending.items():
                (self._ring.add if live else self._ring.remove)(peer)
            self._ring_pending.clear()
        return self._ring

    def dead(self) -> list[Member]:
        return [m for m in self.known.values() if m.state is MemberState.DEAD]

    # ---- changes ------------------------------------------------------------------

    def add(self, m: Member, probe_soon: bool = True) -> None:
        """A row for a member we never heard of, in a live state."""
        self.known[m.peer] = m
        self.became_live(m, probe_soon)

    def preload(self, members: Iterable[tuple[str, str]], now: float) -> None:
        """(peer id, address) pairs as alive at incarnation 0; the probe round restarts."""
        for peer, addr in members:
            peer = PeerId(peer)
            if peer != self.self_id and peer not in self.known and not self.full:
                self.add(Member(peer, addr, MemberState.ALIVE, 0, now), probe_soon=False)
        self._probe_order, self._probe_next = [], 0  # reshuffled at the next probe

    def became_live(self, m: Member, probe_soon: bool = True) -> None:
        self._live_at[m.peer] = len(self.live)
        self.live.append(m.peer)
        self.recent_dead.pop(m.peer, None)
        if probe_soon:  # within this round, at a random place (as memberlist does)
            at = self._rng.randint(self._probe_next, len(self._probe_order))
            self._probe_order.insert(at, m.peer)
        self._note_change(m.peer, True)

    def became_dead(self, m: Member, now: float) -> None:
        """`m` left the live states (dead or left); dead ones are gossiped to for a while."""
        at = self._live_at.pop(m.peer)
        last = self.live.pop()
        if last != m.peer:
            self.live[at] = last
            self._live_at[last] = at
        if m.state is MemberState.DEAD:
            self.recent_dead[m.peer] = now
        self._note_change(m.peer, False)

    def reap(self, horizon: float) -> None:
        """Forget members dead or gone since before `horizon`."""
        for peer in [p for p, m in self.known.items() if not m.live and m.since < horizon]:
            del self.known[peer]
            self.recent_dead.pop(peer, None)

    def flush(self) -> None:
        """Report the pending batch of joins and leaves, if any, to `on_change`."""
        if self._joined or self._left:
            joined, left = self._joined, self._left
            self._joined, self._left = set(), set()
            self._on_change(joined, left)

    def _note_change(self, peer: PeerId, live: bool) -> None:
        self._members_view = None
        self._ring_pending[peer] = live
        grow, shrink = (self._joined, self._left) if live else (self._left, self._joined)
        if peer in shrink:
            shrink.discard(peer)  # undone within the batch: nothing to report
        else:
            grow.add(peer)

    # ---- random picks -------------------------------------------------------------

    def next_probe_target(self) -> PeerId | None:
        """The next live member of a shuffled round; a new round when one is done."""
        for _ in range(2):
            while self._probe_next < len(self._probe_order):
                peer = self._probe_order[self._probe_next]
                self._probe_next += 1
                m = self.known.get(peer)
                if m is not None and m.live:
                    return peer
            self._probe_order = list(self.live)
            self._rng.shuffle(self._probe_order)
            self._probe_next = 0
        return None

    def sample_live(self, k: int, exclude: PeerId | None = None) -> list[PeerId]:
        """Up to k distinct random live members other than `exclude`, in a seeded order."""
        live, n = self.live, len(self.live)
        if k <= 0 or n == 0:
            return []
        if 3 * k >= n:
            pool = [p for p in live if p != exclude]
            self._rng.shuffle(pool)
            return pool[:k]
        out: list[PeerId] = []
        while len(out) < k:
            peer = live[self._rng.randrange(n)]
            if peer != exclude and peer not in out:
                out.append(peer)
        return out

    def recent_dead_pick(self, fanout: int, horizon: float) -> PeerId | None:
        """Now and then a freshly dead member (died after `horizon`), so a wrongly declared one
        hears it and refutes.

        As likely as if the recently dead were candidates for the fanout
        alongside the live (memberlist's gossip-to-the-dead).
        """
        if not self.recent_dead:
            return None
        for peer in [p for p, t in self.recent_dead.items() if t < horizon]:
            del self.recent_dead[peer]
        dead = len(self.recent_dead)
        if not dead or self._rng.random() >= fanout * dead / (dead + len(self.live)):
            return None
        return self._rng.choice(tuple(self.recent_dead))
