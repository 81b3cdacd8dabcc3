"""Who is in the mesh, as this peer believes, and the ring built from it.

This is the static-seed membership: peers start from a seed list, learn
others when they connect or exchange member lists, and drop a member after
`max_failures` consecutive failed contacts. A peer dropped as dead is not
re-learned from gossip for `dead_ttl_s` (only a direct connection from it
brings it back), so stale gossip cannot resurrect it. Pure bookkeeping: the
peer drives it and reacts to the change callbacks.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from kvmesh.hashring.ring import HashRing
from kvmesh.types import PeerId

ChangeFn = Callable[[set[PeerId], set[PeerId]], None]  # (joined, left)


class StaticMembership:
    def __init__(self, self_id: PeerId, vnodes: int, on_change: ChangeFn,
                 max_failures: int = 3, dead_ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.self_id = self_id
        self.ring = HashRing([self_id], vnodes=vnodes)
        self._on_change = on_change
        self._failures: dict[PeerId, int] = {}
        self._dead: dict[PeerId, float] = {}
        self.max_failures = max_failures
        self.dead_ttl_s = dead_ttl_s
        self._clock = clock

    @property
    def members(self) -> frozenset[PeerId]:
        return self.ring.peers

    def others(self) -> list[PeerId]:
        return sorted(p for p in self.ring.peers if p != self.self_id)

    def dead(self) -> dict[PeerId, float]:
        return dict(self._dead)

    def learn(self, peers: Iterable[str], direct: bool = False) -> None:
        """Add peers heard of (direct=True: they connected to us themselves)."""
        now = self._clock()
        joined = set()
        for peer in peers:
            peer = PeerId(peer)
            if peer == self.self_id or peer in self.ring:
                continue
            died = self._dead.get(peer)
            if died is not None and not direct and now - died < self.dead_ttl_s:
                continue
            self._dead.pop(peer, None)
            self.ring.add(peer)
            joined.add(peer)
        if joined:
            self._on_change(joined, set())

    def contact_ok(self, peer: PeerId) -> None:
        self._failures.pop(peer, None)

    def contact_failed(self, peer: PeerId) -> bool:
        """Count a failed contact; True if the peer is now considered dead."""
        if peer not in self.ring or peer == self.self_id:
            return False
        count = self._failures.get(peer, 0) + 1
        self._failures[peer] = count
        if count < self.max_failures:
            return False
        self.remove(peer)
        return True

    def remove(self, peer: PeerId) -> None:
        if self.ring.remove(peer):
            self._failures.pop(peer, None)
            self._dead[peer] = self._clock()
            self._on_change(set(), {peer})
