"""How many of a holder's chunks other peers may keep pinned at once.

A chunk being served is pinned: a streamed one while its bytes are written,
a shared one (read out of the holder's pool by a same-host puller) until the
puller's RELEASE or the lease's end. Pinned chunks cannot be evicted, so
without a bound a puller (or a few) could pin every slot and leave the
holder's own engine nowhere to save. Every pin the server takes for another
peer is drawn from this budget: at most `per_peer` for one peer (all its
connections together) and `total` for all of them. A pin over budget waits
(`take_within`) for pins to come back (a puller releases each batch of refs
as soon as it has copied it), up to a deadline; past it the chunk is
answered with a MISS, which the puller turns into a recompute or another
holder. Loop thread only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Hashable

from kvmesh.transfer.deadline import within

# Shares of the CPU pool's slots: the holder keeps a quarter for its own saves,
# and no single peer takes more than half.
TOTAL_SHARE = 0.75
PER_PEER_SHARE = 0.5


class PinBudget:
    def __init__(self, total: int, per_peer: int) -> None:
        if total < 1 or per_peer < 1:
            raise ValueError("pin budgets must be at least 1")
        self.total = total
        self.per_peer = per_peer
        self._held: Counter[Hashable] = Counter()
        self._sum = 0
        self._returned = asyncio.Event()  # set whenever pins come back
        self.refused = 0

    @classmethod
    def for_slots(cls, slots: int) -> "PinBudget":
        return cls(max(1, int(slots * TOTAL_SHARE)), max(1, int(slots * PER_PEER_SHARE)))

    def take(self, who: Hashable) -> bool:
        """One more pin for `who`, if both caps allow it now."""
        if self._sum >= self.total or self._held[who] >= self.per_peer:
            self.refused += 1
            return False
        self._held[who] += 1
        self._sum += 1
        return True

    async def take_within(self, who: Hashable, wait_s: float) -> bool:
        """One more pin for `who`, waiting up to `wait_s` for pins to come back."""
        if self.has_room(who):
            return self.take(who)
        deadline = asyncio.get_running_loop().time() + wait_s
        while not self.has_room(who):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                self.refused += 1
                return False
            self._returned.clear()
            try:
                await within(self._returned.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.take(who)

    def has_room(self, who: Hashable) -> bool:
        """Whether `take(who)` would succeed now."""
        return self._sum < self.total and self._held[who] < self.per_peer

    def give_back(self, who: Hashable, n: int = 1) -> None:
        held = self._held[who]
        if n > held:
            raise ValueError(f"{who!r} gives back {n} pins but holds {held}")
        self._sum -= n
        if held == n:
            del self._held[who]
        else:
            self._held[who] = held - n
        self._returned.set()

    def held(self, who: Hashable | None = None) -> int:
        return self._sum if who is None else self._held.get(who, 0)
