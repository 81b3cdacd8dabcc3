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
holder. A pin coming back wakes one waiter that could take it, never the
waiters of a peer still at its share. Loop thread only.
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
        # Pins waiting for room, first come first served within each peer:
        # who -> {future: None}, an ordered set (a waiter that times out
        # leaves it in O(1)). Only peers with a waiter are keys.
        self._waiting: dict[Hashable, dict[asyncio.Future, None]] = {}
        self.refused = 0

    @classmethod
    def for_slots(cls, slots: int) -> "PinBudget":
        return cls(max(1, int(slots * TOTAL_SHARE)), max(1, int(slots * PER_PEER_SHARE)))

    def take(self, who: Hashable) -> bool:
        """One more pin for `who`, if both caps allow it now."""
        if not self.has_room(who):
            self.refused += 1
            return False
        self._held[who] += 1
        self._sum += 1
        return True

    async def take_within(self, who: Hashable, wait_s: float) -> bool:
        """One more pin for `who`, waiting up to `wait_s` for pins to come back."""
        if self.has_room(who):
            return self.take(who)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self.has_room(who):
            left = deadline - loop.time()
            if left <= 0:
                self.refused += 1
                return False
            woken = loop.create_future()
            queue = self._waiting.setdefault(who, {})
            queue[woken] = None
            try:
                await within(woken, left)
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                if woken.done() and not woken.cancelled():
                    self._wake(1)  # woken for a pin it will not take: pass it on
                raise
            finally:
                queue.pop(woken, None)
                if not queue and self._waiting.get(who) is queue:
                    del self._waiting[who]
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
        self._wake(n)

    def _wake(self, n: int) -> None:
        """Wake up to `n` waiters that could take a pin now, one per peer in
        turn. Never a waiter its own share still blocks: a peer at its share
        with thousands of pulls parked must not cost every other peer's
        give_back a wake-up each (O(peers waiting), not O(waiters))."""
        for who in list(self._waiting):
            if n <= 0:
                return
            queue = self._waiting.get(who)
            if not queue or not self.has_room(who):
                continue
            for woken in queue:
                if not woken.done():
                    woken.set_result(None)
                    n -= 1
                    break
            # Served last next time: peers with waiters take turns.
            self._waiting[who] = self._waiting.pop(who)

    def held(self, who: Hashable | None = None) -> int:
        return self._sum if who is None else self._held.get(who, 0)
