"""The chunk store's bookkeeping: chunk records, the LRU, events, counters.

`ChunkIndex` owns the store's one lock and everything it guards: the record
of every chunk (committed or in flight), the LRU of chunks that may make
room, the CPU pool's slot accounting, the disk tier's pins and reservations,
the event queue and the counters. That state is private: the store's parts
(`chunk_store`, `tiers`, `actions`) change it only through the operations
below, each of which leaves records, LRU, tiers and events consistent.
They may read `ChunkRecord` fields; only this module writes them.

The lock: hold `locked()` around every operation but the lock-free two,
`locked()` itself and `contains(key)` (one dict lookup); a Condition may
wait on it. No operation takes it (it is not reentrant), does I/O on
payloads or blocks; the event listener runs inside them (see events).
After close() the records are gone and the pool may be closed: `unpin`,
`end_spill` and `abandon`, which ticket holders still reach, are no-ops then
(`place` only notes a slot); others need `check_open()` or `closed` first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from kvmesh.errors import StoreError
from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.events import EVICTED, REMOVED, SPILLED, STORED, EventQueue, StoreEvent
from kvmesh.store.eviction import EvictionOrder
from kvmesh.store.records import ChunkRecord, StoreStats
from kvmesh.store.slab_pool import SlabPool
from kvmesh.store.stats import StoreCounters, snapshot
from kvmesh.types import ChunkKey

CLOSED = "the chunk store is closed"


class ChunkIndex:
    """See the module docstring. `disk` is None without a disk tier; payload
    I/O on `pool` and `disk` is the caller's."""

    def __init__(self, pool: SlabPool, disk: DiskTier | None, max_pending_events: int) -> None:
        self._lock = threading.Lock()
        self._pool = pool
        self._disk = disk
        self._chunks: dict[ChunkKey, ChunkRecord] = {}
        self._eviction = EvictionOrder(disk)  # the LRU, and the disk tier's pins
        self._events = EventQueue(max_pending_events)
        self._counters = StoreCounters()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def locked(self) -> threading.Lock:
        """Lock-free: the store lock, the same object every time (a part may keep it)."""
        return self._lock

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise StoreError(CLOSED)

    def close(self) -> None:
        """Mark closed and forget every record; the caller closes the tiers."""
        self._closed = True
        self._chunks.clear()
        self._eviction.clear()

    def adopt_disk_chunks(self, slot_bytes: int) -> None:
        """Index chunks a previous run left on disk, reported as stored; once, from
        the store's constructor, before any other thread can see the index."""
        disk = self._disk
        for key in disk.keys():
            entry = disk.entry(key)
            if entry is not None and entry.length <= slot_bytes:
                self._chunks[key] = ChunkRecord(key, None, entry.length, entry.checksum, committed=True, on_disk=True)
                self._events.put(STORED, key)

    # -- lookups -----------------------------------------------------------

    def contains(self, key: ChunkKey) -> bool:
        """Lock-free (one dict lookup): whether `key` is committed."""
        chunk = self._chunks.get(key)
        return chunk is not None and chunk.committed

    def record(self, key: ChunkKey) -> ChunkRecord | None:
        """The record of `key`, committed or in flight; None if not indexed."""
        return self._chunks.get(key)

    def committed(self, key: ChunkKey) -> ChunkRecord | None:
        chunk = self._chunks.get(key)
        return chunk if chunk is not None and chunk.committed else None

    def committed_keys(self) -> list[ChunkKey]:
        return [key for key, chunk in self._chunks.items() if chunk.committed]

    def unpinned_committed(self) -> list[ChunkRecord]:
        return [c for c in self._chunks.values() if c.committed and not c.pinned]

    def leading_hits(self, keys: Iterable[ChunkKey]) -> int:
        """How many of `keys`, from the first, are committed in any tier."""
        n = 0
        for key in keys:
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed:
                break
            n += 1
        return n

    # -- storing -----------------------------------------------------------

    def reserve(self, key: ChunkKey) -> ChunkRecord | None:
        """A new record for `key`, pinned in flight, with a slot if one is free
        (else the caller makes room and `place`s one, or `abandon`s it). None
        if `key` is indexed (committed or in flight). StoreError once closed."""
        if self._closed:
            raise StoreError(CLOSED)
        if key in self._chunks:
            return None
        chunk = self._chunks[key] = ChunkRecord(key)
        chunk.pins = 1
        if self._pool.free_slots:
            chunk.slot = self._pool.alloc()
        return chunk

    def cpu_full(self) -> bool:
        return self._pool.free_slots == 0

    def lru_victim(self) -> ChunkRecord | None:
        """The least recently used unpinned chunk in CPU; None if there is none."""
        return self._eviction.oldest()

    def alloc_slot(self) -> int:
        """A slot, the caller's until `place`d or freed; only if not cpu_full()."""
        return self._pool.alloc()

    def place(self, chunk: ChunkRecord, slot: int) -> None:
        """Give a pinned record the slot the caller filled (or will fill)."""
        chunk.slot = slot

    def free_slot(self, slot: int) -> None:
        self._pool.free(slot)

    def publish(self, chunk: ChunkRecord, length: int, checksum: int) -> bool:
        """Commit a reserved record: it becomes visible, unpinned, "stored".
        False, changing nothing, unless it is the in-flight record of its key
        (its store already ended, or the store was closed)."""
        if self._chunks.get(chunk.key) is not chunk or chunk.committed:
            return False
        chunk.length, chunk.checksum, chunk.committed = length, checksum, True
        chunk.pins -= 1
        self._eviction.refresh(chunk)
        self._events.put(STORED, chunk.key)
        return True

    def abandon(self, chunk: ChunkRecord) -> bool:
        """Forget a reserved record and free its slot. False, changing nothing,
        unless it is the in-flight record of its key (as for publish)."""
        if self._chunks.get(chunk.key) is not chunk or chunk.committed:
            return False
        del self._chunks[chunk.key]
        if chunk.slot is not None:
            self._pool.free(chunk.slot)
        return True

    # -- pins --------------------------------------------------------------

    def start_load(self, key: ChunkKey, count: bool) -> ChunkRecord | None:
        """Pin the committed chunk of `key` for a load; None if none (a miss, if
        `count`). One in CPU is a hit (if `count`); for one on disk only, the
        caller counts the read back's outcome. StoreError once closed."""
        if self._closed:
            raise StoreError(CLOSED)
        chunk = self._chunks.get(key)
        if chunk is None or not chunk.committed:
            self._counters.misses += count
            return None
        chunk.pins += 1
        self._eviction.refresh(chunk)
        if chunk.slot is not None:
            self._counters.hits += count
        return chunk

    def pin(self, chunk: ChunkRecord) -> None:
        """Pin a chunk in flight (a load, a spill): it stays where it is."""
        chunk.pins += 1
        self._eviction.refresh(chunk)

    def unpin(self, chunk: ChunkRecord) -> None:
        """Drop one in-flight pin; a no-op once the store is closed."""
        if not self._closed:
            chunk.pins -= 1
            self._eviction.refresh(chunk)

    def operator_pin(self, chunk: ChunkRecord) -> None:
        chunk.held += 1
        self._eviction.refresh(chunk)

    def operator_unpin(self, chunk: ChunkRecord) -> None:
        """Drop one operator pin; the caller checked that `chunk.held` > 0."""
        chunk.held -= 1
        self._eviction.refresh(chunk)

    def set_promoting(self, chunk: ChunkRecord, promoting: bool) -> None:
        """Mark a pinned disk-only chunk as being read back into a slot (or no longer)."""
        chunk.promoting = promoting

    # -- tiers -------------------------------------------------------------

    def reserve_disk(self, length: int) -> None:
        """Hold disk bytes for one spill, reporting the files evicted for them.
        StoreFullError (evicting nothing) when they cannot fit."""
        for key in self._disk.reserve(length):
            self._lost_disk_copy(key)

    def end_spill(self, chunk: ChunkRecord, written: bool, drop_if_pinned: bool) -> None:
        """Publish a spill's outcome and drop its pin: free the slot unless the
        chunk got pinned meanwhile (`drop_if_pinned`: operator pins do not keep
        it in CPU). A no-op once the store is closed."""
        if self._closed:
            return
        chunk.pins -= 1
        chunk.on_disk = written
        if chunk.pins > 0 or (chunk.held > 0 and not drop_if_pinned):
            self._eviction.refresh(chunk)  # still wanted in CPU
        elif written:
            self.drop_from_cpu(chunk)
        else:
            self._forget(chunk, EVICTED)

    def drop_from_cpu(self, chunk: ChunkRecord) -> None:
        """Free the slot of a chunk with no pins in flight: "spilled" if it has a disk copy, else "evicted"."""
        if not chunk.on_disk:
            self._forget(chunk, EVICTED)
            return
        self._pool.free(chunk.slot)
        chunk.slot = None
        self._eviction.refresh(chunk)
        self._counters.spills += 1
        self._events.put(SPILLED, chunk.key)

    def disk_copy_lost(self, chunk: ChunkRecord) -> None:
        """Forget a chunk whose read back found its file gone or corrupt (the disk
        tier dropped it already), "evicted"."""
        chunk.on_disk = False
        self._forget(chunk, EVICTED)

    def drop_from_disk(self, chunk: ChunkRecord) -> None:
        """Delete the disk copy of an unpinned chunk that is also in CPU."""
        self._disk.remove(chunk.key)
        chunk.on_disk = False

    def evict(self, chunk: ChunkRecord) -> None:
        """Drop an unpinned chunk from every tier for lack of room, "evicted"."""
        self._forget(chunk, EVICTED)

    def remove(self, chunk: ChunkRecord) -> None:
        """The operator's remove: drop an unpinned chunk from every tier, "removed"."""
        self._forget(chunk, REMOVED)

    def _lost_disk_copy(self, key: ChunkKey) -> None:
        """The disk tier evicted `key`'s file. (A chunk being read back is
        disk-pinned, so this never races a promotion; if it did, the failed
        read would forget the chunk.)"""
        chunk = self._chunks.get(key)
        if chunk is None or not chunk.on_disk:
            return
        chunk.on_disk = False
        if chunk.slot is None and not chunk.promoting:
            self._forget(chunk, EVICTED)

    def _forget(self, chunk: ChunkRecord, kind: str) -> None:
        """Drop a chunk from every tier and report it."""
        del self._chunks[chunk.key]
        self._eviction.discard(chunk.key)
        if chunk.slot is not None:
            self._pool.free(chunk.slot)
            chunk.slot = None
        if chunk.on_disk:
            self._disk.remove(chunk.key)
            chunk.on_disk = False
        self._counters.evictions += kind == EVICTED
        self._events.put(kind, chunk.key)

    # -- counters and events -----------------------------------------------

    def hit(self) -> None:
        self._counters.hits += 1

    def miss(self) -> None:
        self._counters.misses += 1

    def set_listener(self, listener: Callable[[str], None] | None) -> None:
        self._events.listener = listener

    def take_events(self) -> list[StoreEvent]:
        return self._events.take()

    def stats(self, slot_bytes: int) -> StoreStats:
        """A snapshot for the store's stats(); walks every record (O(chunks))."""
        return snapshot(self._chunks.values(), self._pool, self._disk, slot_bytes, self._counters,
                        self._events.dropped)
