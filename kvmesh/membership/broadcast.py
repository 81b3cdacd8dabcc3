"""Pending gossip (the piggyback queue) and how often each item is retransmitted.

Each state change this member learns is queued as a packed entry and rides
on outgoing pings, acks and gossip rounds (`outbox` takes from the
queue) until it has been sent `retransmit_limit(mult, n)` times, which is
enough to reach all n members with high probability. The queue holds the
newest claim per member only, hands out the least-sent items first (newest
first among equals), and is bounded: past `max_items` the oldest item is
dropped and counted. Gossip is best effort; anti-entropy (SYNC) repairs what
is lost.

Owned by one engine and called only on its clock's thread; not thread-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvmesh.membership.timing import retransmit_limit
from kvmesh.types import PeerId


@dataclass(slots=True)
class _Item:
    peer: str
    packed: bytes
    sends: int = 0
    live: bool = True  # False once replaced, dropped or sent out


class BroadcastQueue:
    """Pending gossip: the newest claim per member, least-sent first, newest first.

    Bounded: past `max_items` the oldest item is dropped (and counted). Each
    send count has a stack of items; replaced items stay there, marked dead,
    until popped or compacted away.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.dropped = 0
        self._by_peer: OrderedDict[str, _Item] = OrderedDict()  # oldest first
        self._stacks: list[list[_Item]] = [[]]  # stack i: items sent i times
        self._stacked = 0

    def __len__(self) -> int:
        return len(self._by_peer)

    def put(self, peer: PeerId, packed: bytes) -> None:
        """Queue a claim about `peer`, replacing any older one about the same member."""
        old = self._by_peer.pop(peer, None)
        if old is not None:
            old.live = False
        self._by_peer[peer] = item = _Item(peer, packed)
        self._push(item)
        if len(self._by_peer) > self.max_items:
            self._by_peer.popitem(last=False)[1].live = False
            self.dropped += 1
        if self._stacked > 2 * self.max_items + 64:
            self._compact()

    def take(self, budget: int, limit: int, max_items: int) -> list[bytes]:
        """Up to `budget` bytes of items, each counted as sent once; dropped after `limit` sends."""
        picked: list[_Item] = []
        for stack in self._stacks:
            while stack and len(picked) < max_items:
                item = stack[-1]
                if item.live and len(item.packed) > budget:
                    break
                stack.pop()
                self._stacked -= 1
                if item.live:
                    picked.append(item)
                    budget -= len(item.packed)
            if stack and (len(picked) >= max_items or len(stack[-1].packed) > budget):
                break
        for item in picked:
            item.sends += 1
            if item.sends >= limit:
                item.live = False
                del self._by_peer[item.peer]
            else:
                self._push(item)
        return [item.packed for item in picked]

    def _push(self, item: _Item) -> None:
        while len(self._stacks) <= item.sends:
            self._stacks.append([])
        self._stacks[item.sends].append(item)
        self._stacked += 1

    def _compact(self) -> None:
        stacks, self._stacks, self._stacked = self._stacks, [[]], 0
        for stack in stacks:
            for item in stack:
                if item.live:
                    self._push(item)


class RetransmitLimit:
    """`retransmit_limit(mult, n)`, recomputed only when n changes.

    Asked once per datagram that carries gossip, where the log10 would show.
    """

    def __init__(self, mult: int) -> None:
        self._mult = mult
        self._n, self._limit = 0, 0

    def __call__(self, n: int) -> int:
        if n != self._n:
            self._n, self._limit = n, retransmit_limit(self._mult, n)
        return self._limit
