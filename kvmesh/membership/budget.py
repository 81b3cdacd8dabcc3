"""Token buckets that bound how often remote input may make us send our whole state.

A full state exchange costs the member that answers one datagram per ~25
members, so one small datagram could draw many: a reflection and
amplification lever, and CPU. `ReplyBudget.allow(src, now)` spends one
token from `src`'s own bucket and one from a bucket shared by every source;
either being empty refuses (and says which, for the stats). A refused
exchange is not lost: the other side retries (joins), or the next push-pull
or reconnect repairs what it would have.

Bounded: at most `max_sources` per-source buckets; a new source past that
replaces the oldest one (so many sources cost O(1) each: it is the shared
bucket that bounds them, and a source forgotten that way starts full again).

Pure bookkeeping: time is passed in (the engine's clock), nothing is sent.
One thread only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; starts full."""

    capacity: float
    rate: float
    tokens: float
    at: float  # time of the last refill

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> "TokenBucket":
        return cls(capacity, rate, capacity, now)

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Refusal(Enum):
    SOURCE = "source"  # this source's bucket is empty
    TOTAL = "total"  # the bucket shared by every source is empty


class ReplyBudget:
    def __init__(self, per_source: tuple[float, float], total: tuple[float, float],
                 max_sources: int, now: float) -> None:
        """`per_source` and `total`: (capacity, rate per second) of their buckets."""
        self._per_source = per_source
        self._total = TokenBucket.full(*total, now)
        self._max_sources = max_sources
        self._sources: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def allow(self, src: str, now: float) -> Refusal | None:
        """None: go ahead (a token was spent from each bucket); else why not."""
        bucket = self._sources.get(src)
        if bucket is None:
            if len(self._sources) >= self._max_sources:
                del self._sources[next(iter(self._sources))]
            bucket = self._sources[src] = TokenBucket.full(*self._per_source, now)
        bucket.refill(now)
        if bucket.tokens < 1.0:
            return Refusal.SOURCE
        if not self._total.take(now):
            return Refusal.TOTAL
        bucket.tokens -= 1.0
        return None

    def allow_total(self, now: float) -> bool:
        """Spend from the shared bucket only (exchanges whose source is already limited)."""
        return self._total.take(now)
