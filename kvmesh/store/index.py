"""The chunk store's bookkeeping: chunk records, the LRU, events, counters, stats.

`ChunkIndex` owns the store's one lock and everything it guards: the record
of every chunk (committed or in flight), the LRU of chunks that may make
room, the event queue and the hit/miss/eviction/spill counters. Its methods
keep those consistent with the CPU pool and the disk tier when a chunk
changes state; each is called with `lock` held, does no I/O on payloads and
never blocks. The store front (`chunk_store`) and the tier mover (`tiers`)
share one index; nothing else touches it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from kvmesh.errors import StoreError
from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.slab_pool import SlabPool
from kvmesh.store.events import EVICTED, SPILLED, STORED, EventQueue
from kvmesh.store.metadata import metadata_bytes_per_chunk
from kvmesh.store.records import ChunkRecord, StoreStats
from kvmesh.types import ChunkKey


class ChunkIndex:
    """Records, LRU, events and counters under `lock`; see the module docstring.

    Attributes are shared with the store's parts and read or written only
    with `lock` held (contains() on the store reads `chunks` without it: one
    dict lookup). `pool` and `disk` (None: no disk tier) are the tiers.
    """

    def __init__(self, pool: SlabPool, disk: DiskTier | None, max_pending_events: int) -> None:
        self.lock = threading.Lock()
        self.pool = pool
        self.disk = disk
        self.chunks: dict[ChunkKey, ChunkRecord] = {}
        self.lru: OrderedDict[ChunkKey, ChunkRecord] = OrderedDict()  # committed, in CPU, unpinned; oldest first
        self.events = EventQueue(max_pending_events)
        self.hits = self.misses = self.evictions = self.spills = 0
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise StoreError("the chunk store is closed")

    def refresh(self, chunk: ChunkRecord) -> None:
        """Make the LRU and the disk tier's pins match the chunk's state."""
        if chunk.committed and chunk.slot is not None and not chunk.pinned:
            if chunk.key not in self.lru:
                self.lru[chunk.key] = chunk  # appended: most recently used
        else:
            self.lru.pop(chunk.key, None)
        if chunk.on_disk:
            (self.disk.pin if chunk.pinned else self.disk.unpin)(chunk.key)

    def drop_from_cpu(self, chunk: ChunkRecord) -> None:
        """Free the slot of a chunk with no pins in flight: "spilled" if it has
        a disk copy, else "evicted"."""
        if not chunk.on_disk:
            self.forget(chunk, EVICTED)
            return
        self.pool.free(chunk.slot)
        chunk.slot = None
        self.refresh(chunk)
        self.spills += 1
        self.events.put(SPILLED, chunk.key)

    def lost_disk_copy(self, key: ChunkKey) -> None:
        """The disk tier evicted `key`'s file. (A chunk being read back is
        disk-pinned, so this never races a promotion; if it did, the failed
        read would forget the chunk.)"""
        chunk = self.chunks.get(key)
        if chunk is None or not chunk.on_disk:
            return
        chunk.on_disk = False
        if chunk.slot is None and not chunk.promoting:
            self.forget(chunk, EVICTED)

    def forget(self, chunk: ChunkRecord, kind: str) -> None:
        """Drop a chunk from every tier and report it."""
        del self.chunks[chunk.key]
        self.lru.pop(chunk.key, None)
        if chunk.slot is not None:
            self.pool.free(chunk.slot)
            chunk.slot = None
        if chunk.on_disk:
            self.disk.remove(chunk.key)
            chunk.on_disk = False
        self.evictions += kind == EVICTED
        self.events.put(kind, chunk.key)

    def adopt_disk_chunks(self, slot_bytes: int) -> None:
        """Index chunks a previous run left on disk; they are reported as stored.
        Called once, from the store's constructor, before any other thread
        can see the index."""
        disk = self.disk
        for key in disk.keys():
            entry = disk.entry(key)
            if entry is not None and entry.length <= slot_bytes:
                self.chunks[key] = ChunkRecord(key, None, entry.length, entry.checksum, committed=True, on_disk=True)
                self.events.put(STORED, key)

    def stats(self, slot_bytes: int) -> StoreStats:
        """A snapshot for the store's stats(); walks every record (O(chunks))."""
        committed = [c for c in self.chunks.values() if c.committed]
        pool, disk = self.pool, self.disk
        return StoreStats(
            cpu_slots_total=pool.num_slots,
            cpu_slots_used=pool.used_slots,
            cpu_bytes_cap=pool.num_slots * slot_bytes,
            cpu_bytes_used=pool.used_slots * slot_bytes,
            disk_bytes_cap=disk.cap_bytes if disk is not None else 0,
            disk_bytes_used=disk.used_bytes if disk is not None else 0,
            chunks_cpu=sum(c.slot is not None for c in committed),
            chunks_disk=sum(c.on_disk for c in committed),
            pinned=sum(c.pinned for c in self.chunks.values()),
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            spills=self.spills,
            events_dropped=self.events.dropped,
            metadata_bytes_per_chunk=metadata_bytes_per_chunk(),
        )
