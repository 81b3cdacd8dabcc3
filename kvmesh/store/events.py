"""Change events from the chunk store, queued and taken in one call.

Kinds: "stored" (now held: advertise it), "spilled" (moved from CPU to disk,
still held), "evicted" (no longer held in any tier for lack of room: withdraw
it from the directory), "removed" (dropped by an operator: withdraw it).

The queue keeps one pending kind per key, so it is bounded by the number of
distinct keys changed since the last take, and by `cap` above that:
  - a later kind replaces an earlier one ("stored" then "evicted" -> "evicted";
    a withdrawal of a key never advertised costs the directory a no-op);
  - "spilled" after a pending "stored" stays "stored", so a chunk is never
    held without having been announced;
  - past `cap` keys the oldest pending entry is dropped and counted in
    `dropped`. A lost "stored" leaves a chunk unadvertised, a lost withdrawal
    leaves a stale directory entry (a miss on pull, never wrong data); a
    consumer that sees `dropped` grow should re-advertise the store's keys().
Events come out in the order of each key's latest change; consecutive keys of
one kind are batched into one StoreEvent.

`listener(kind)`, when set, hears of every put as it happens, so a consumer
can wait for the kinds it acts on instead of polling for them.

Not thread-safe: the store calls it under its lock (the listener too).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from kvmesh.types import ChunkKey

STORED = "stored"
SPILLED = "spilled"
EVICTED = "evicted"
REMOVED = "removed"
KINDS = (STORED, SPILLED, EVICTED, REMOVED)


@dataclass(frozen=True, slots=True)
class StoreEvent:
    kind: str
    keys: tuple[ChunkKey, ...]


class EventQueue:
    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"event queue cap must be at least 1, got {cap}")
        self.cap = cap
        self.dropped = 0
        self.listener: Callable[[str], None] | None = None
        self._pending: OrderedDict[ChunkKey, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, kind: str, key: ChunkKey) -> None:
        previous = self._pending.pop(key, None)
        if kind == SPILLED and previous == STORED:
            kind = STORED
        self._pending[key] = kind
        if len(self._pending) > self.cap:
            self._pending.popitem(last=False)
            self.dropped += 1
        if self.listener is not None:
            self.listener(kind)

    def take(self) -> list[StoreEvent]:
        """Every pending event, batched; the queue is empty afterwards."""
        events: list[StoreEvent] = []
        run: list[ChunkKey] = []
        run_kind = None
        for key, kind in self._pending.items():
            if kind != run_kind and run:
                events.append(StoreEvent(run_kind, tuple(run)))
                run = []
            run_kind = kind
            run.append(key)
        if run:
            events.append(StoreEvent(run_kind, tuple(run)))
        self._pending.clear()
        return events
