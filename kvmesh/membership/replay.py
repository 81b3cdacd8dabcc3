"""The replay window of sealed datagrams: each (timestamp, nonce) is admitted once, while fresh.

A sealed datagram carries the sender's wall-clock time and a random nonce
under its tag (`seal`). `ReplayGuard.check` admits it when its time is
within `window_s` of ours and its nonce was not seen, and remembers the
nonce until the time leaves the window. Clocks of members must agree within
the window; a member whose clock is further off is refused as stale
everywhere, and counted there.

Bounded: at most `max_nonces` are remembered. When full, the entry with the
oldest time is forgotten and the acceptance horizon rises to its time:
nothing stamped at or before the horizon is admitted again, so a forgotten
nonce can never be replayed (under a flood, fresh datagrams from slow
clocks are refused first, never a replay admitted). Expired entries raise
the horizon the same way, so a clock stepped back does not reopen them.
The horizon starts just before the guard's creation: datagrams stamped
before a member started, recorded in an earlier life of it, are refused.

Pure bookkeeping: times are integer microseconds passed in by the caller;
no clock, no I/O. One thread only.
"""

from __future__ import annotations

import heapq
from enum import Enum

US = 1_000_000  # microseconds per second


class Verdict(Enum):
    FRESH = "fresh"
    STALE = "stale"  # outside the window, or at or before the horizon
    REPLAYED = "replayed"  # nonce already seen within the window


class ReplayGuard:
    def __init__(self, window_s: float, max_nonces: int, now_us: int) -> None:
        if window_s <= 0 or max_nonces < 1:
            raise ValueError("need a positive window and room for one nonce")
        self.window_us = int(window_s * US)
        self.max_nonces = max_nonces
        self.horizon_us = now_us - 1  # admit what is stamped from our start on
        self._seen: dict[bytes, int] = {}  # nonce -> its timestamp
        self._by_time: list[tuple[int, bytes]] = []  # heap of (timestamp, nonce), as _seen

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, stamp_us: int, nonce: bytes, now_us: int) -> Verdict:
        """Admit (FRESH, and remember) or refuse one datagram's (timestamp, nonce)."""
        self._expire(now_us)
        if stamp_us <= self.horizon_us or abs(stamp_us - now_us) > self.window_us:
            return Verdict.STALE
        if nonce in self._seen:
            return Verdict.REPLAYED
        if len(self._seen) >= self.max_nonces:
            self._forget_oldest()
            if stamp_us <= self.horizon_us:  # older than what had to be forgotten
                return Verdict.STALE
        self._seen[nonce] = stamp_us
        heapq.heappush(self._by_time, (stamp_us, nonce))
        return Verdict.FRESH

    def _expire(self, now_us: int) -> None:
        oldest = now_us - self.window_us
        while self._by_time and self._by_time[0][0] < oldest:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        stamp_us, nonce = heapq.heappop(self._by_time)
        del self._seen[nonce]
        self.horizon_us = max(self.horizon_us, stamp_us)
