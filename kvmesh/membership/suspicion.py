"""Suspicion timers, one per suspect member, shortened by confirmations (Lifeguard).

A suspicion starts at `suspicion_max_timeout` when confirmations are wanted
(else at the plain `suspicion_timeout`) and shrinks towards the latter as
other members independently suspect the same incarnation
(`remaining_suspicion_time`). When it runs out, `on_expire(peer, incarnation)`
is called from the timer; the caller (`claims`) checks that the member
is still suspect at that incarnation before declaring it dead.

Owns the timers: `end` and `cancel_all` cancel them. Called by
`claims` only, on the clock's thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kvmesh.membership.edges import Clock, Timer
from kvmesh.membership.states import Member
from kvmesh.membership.timing import (SwimConfig, confirmations_wanted, remaining_suspicion_time,
                                     suspicion_max_timeout, suspicion_timeout)
from kvmesh.types import PeerId


@dataclass(slots=True)
class _Suspicion:
    start: float
    k: int  # confirmations wanted
    min_s: float
    max_s: float
    confirmers: set[str] = field(default_factory=set)  # the origin counts as the first
    timer: Timer | None = None


class Suspicions:
    def __init__(self, clock: Clock, config: SwimConfig,
                 on_expire: Callable[[PeerId, int], None]) -> None:
        self._clock = clock
        self._config = config
        self._on_expire = on_expire
        self._by_peer: dict[PeerId, _Suspicion] = {}

    def start(self, m: Member, origin: str, n: int) -> None:
        """`origin` suspects `m` at its current incarnation; n live members, us included.

        Replaces any earlier suspicion of `m` (of an older incarnation).
        """
        cfg = self._config
        min_s = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval_s)
        s = _Suspicion(self._clock.time(), confirmations_wanted(cfg.suspicion_mult, n), min_s,
                       suspicion_max_timeout(cfg.suspicion_max_mult, min_s), {origin})
        self.end(m.peer)
        self._by_peer[m.peer] = s
        self._arm(m, s, s.max_s if s.k else s.min_s)

    def confirm(self, m: Member, origin: str) -> bool:
        """Another member suspects the same incarnation: shorten the timeout.

        True if `origin` counted as a new confirmation (the claim is then
        worth gossiping on); False for repeats, anonymous claims, suspicions
        we do not hold and confirmations past the k wanted.
        """
        s = self._by_peer.get(m.peer)
        if s is None or not origin or origin in s.confirmers or len(s.confirmers) > s.k:
            return False
        s.confirmers.add(origin)
        s.timer.cancel()
        elapsed = self._clock.time() - s.start
        self._arm(m, s, remaining_suspicion_time(len(s.confirmers) - 1, s.k, elapsed,
                                                 s.min_s, s.max_s))
        return True

    def end(self, peer: PeerId) -> None:
        """Drop the suspicion of `peer`, if any (it refuted, died or left)."""
        s = self._by_peer.pop(peer, None)
        if s is not None:
            s.timer.cancel()

    def cancel_all(self) -> None:
        for s in self._by_peer.values():
            s.timer.cancel()
        self._by_peer.clear()

    def _arm(self, m: Member, s: _Suspicion, delay: float) -> None:
        peer, incarnation = m.peer, m.incarnation
        s.timer = self._clock.call_later(max(0.0, delay), lambda: self._expired(peer, incarnation))

    def _expired(self, peer: PeerId, incarnation: int) -> None:
        self._by_peer.pop(peer, None)
        self._on_expire(peer, incarnation)
