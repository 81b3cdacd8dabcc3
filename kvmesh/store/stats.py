"""The chunk store's counters and events, and its StoreStats snapshots.

`StoreLog` is what the store tells the world about its changes: the event
queue the directory is fed from (see `events`) and the running hit, miss,
eviction and spill counts. The index's parts write to it as they change the
store; the front takes events and snapshots from it. `snapshot` builds a
StoreStats from the counters, the records and both tiers.

Not thread-safe: only the index's parts and the front call it, under the
store lock (see `index`); the event listener runs inside `stored`, `spilled`
and `gone`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.events import EVICTED, SPILLED, STORED, EventQueue, StoreEvent
from kvmesh.store.metadata import metadata_bytes_per_chunk
from kvmesh.store.records import ChunkRecord, StoreStats
from kvmesh.store.slab_pool import SlabPool
from kvmesh.types import ChunkKey


@dataclass(slots=True)
class StoreCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # chunks no longer held in any tier for lack of room
    spills: int = 0  # chunks moved from CPU to disk
    disk_bytes_saved: dict[str, int] = field(default_factory=dict)  # per codec, see StoreStats
    recode_bytes_saved: dict[str, int] = field(default_factory=dict)


class StoreLog:
    """The store's events and counters; see the module docstring."""

    __slots__ = ("_counters", "_events")

    def __init__(self, max_pending_events: int) -> None:
        self._events = EventQueue(max_pending_events)
        self._counters = StoreCounters()

    def hit(self, n: int = 1) -> None:
        """Count `n` loads that found their chunk (n=0 or False: count nothing)."""
        self._counters.hits += n

    def miss(self, n: int = 1) -> None:
        self._counters.misses += n

    def stored(self, key: ChunkKey) -> None:
        """`key` is now held: advertise it."""
        self._events.put(STORED, key)

    def spilled(self, key: ChunkKey) -> None:
        """`key` left CPU and is still held on disk."""
        self._counters.spills += 1
        self._events.put(SPILLED, key)

    def disk_saved(self, codec: str, n: int) -> None:
        """A spill encoded with `codec` wrote `n` fewer bytes than the chunk held."""
        saved = self._counters.disk_bytes_saved
        saved[codec] = saved.get(codec, 0) + n

    def recoded(self, codec: str, n: int) -> None:
        """A held chunk re-encoded with `codec` shrank by `n` bytes (every tier holding it)."""
        saved = self._counters.recode_bytes_saved
        saved[codec] = saved.get(codec, 0) + n

    def gone(self, key: ChunkKey, kind: str) -> None:
        """`key` is held in no tier any more: EVICTED (counted) or REMOVED."""
        self._counters.evictions += kind == EVICTED
        self._events.put(kind, key)

    def set_listener(self, listener: Callable[[str], None] | None) -> None:
        self._events.listener = listener

    def take_events(self) -> list[StoreEvent]:
        return self._events.take()

    def stats(self, records: Collection[ChunkRecord], pool: SlabPool, disk: DiskTier | None,
              slot_bytes: int) -> StoreStats:
        """A snapshot of these counters, `records` and both tiers; O(records)."""
        return snapshot(records, pool, disk, slot_bytes, self._counters, self._events.dropped)


def snapshot(records: Collection[ChunkRecord], pool: SlabPool, disk: DiskTier | None, slot_bytes: int,
             counters: StoreCounters, events_dropped: int) -> StoreStats:
    """StoreStats of `records` (every record, in flight included); O(records)."""
    committed = [c for c in records if c.committed]
    return StoreStats(
        cpu_slots_total=pool.num_slots,
        cpu_slots_used=pool.used_slots,
        cpu_bytes_cap=pool.num_slots * slot_bytes,
        cpu_bytes_used=pool.used_slots * slot_bytes,
        disk_bytes_cap=disk.cap_bytes if disk is not None else 0,
        disk_bytes_used=disk.used_bytes if disk is not None else 0,
        chunks_cpu=sum(c.slot is not None for c in committed),
        chunks_disk=sum(c.on_disk for c in committed),
        pinned=sum(c.pinned for c in records),
        hits=counters.hits,
        misses=counters.misses,
        evictions=counters.evictions,
        spills=counters.spills,
        events_dropped=events_dropped,
        metadata_bytes_per_chunk=metadata_bytes_per_chunk(),
        disk_bytes_saved=dict(counters.disk_bytes_saved),
        recode_bytes_saved=dict(counters.recode_bytes_saved),
    )
