"""The chunk store's tier bookkeeping: where each record lies, and making room.

`TierBook` accounts for the CPU pool's slots and the disk tier's
reservations, pins and files, keeps the LRU of chunks that may make room,
and moves records between tiers or out of the store: spills
(`start_spill`/`end_spill`), drops from one tier, evictions and removals,
disk copies lost. It writes where a record lies (slot, disk copy, being
promoted) and the pin a spill holds; it asks the record table
(`record_table`) to `drop` a record held nowhere any more, and the log
(`stats`) to count and report it. Payload I/O on the tiers is the caller's.

The LRU: a committed chunk in a CPU slot with no pins is in it, least
recently used first; the disk copy of a pinned chunk is pinned in the disk
tier. So neither tier evicts a chunk in use, and CPU room is made in LRU
order. `refresh(chunk)` brings both in line with a record after any change
to its pins, slot, disk copy or commit (the record table calls it on the hot
path: it is kept inline here, not behind another call).

Part of the store's index: the rules for the lock and for close() are in
`index`'s docstring.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.events import EVICTED, REMOVED
from kvmesh.store.records import ChunkRecord
from kvmesh.store.slab_pool import SlabPool
from kvmesh.store.stats import StoreLog
from kvmesh.types import ChunkKey

if TYPE_CHECKING:
    from kvmesh.store.record_table import RecordTable


class TierBook:
    """See the module docstring. `disk` is None without a disk tier."""

    def __init__(self, pool: SlabPool, disk: DiskTier | None, log: StoreLog) -> None:
        self._pool = pool
        self._disk = disk
        self._lru: OrderedDict[ChunkKey, ChunkRecord] = OrderedDict()  # committed, in CPU, unpinned
        self._log = log
        self._records: RecordTable | None = None  # set once by attach()

    def attach(self, records: RecordTable) -> None:
        """The records this book places; once, by the index, before any other call."""
        self._records = records

    # -- CPU slots ---------------------------------------------------------

    def cpu_full(self) -> bool:
        return self._pool.free_slots == 0

    def lru_victim(self) -> ChunkRecord | None:
        """The least recently used unpinned chunk in CPU; None if there is none."""
        return next(iter(self._lru.values()), None)

    def alloc_slot(self) -> int:
        """A slot, the caller's until `place`d or freed; only if not cpu_full()."""
        return self._pool.alloc()

    def seat(self, chunk: ChunkRecord) -> None:
        """Give a new record (no slot yet) a free slot, if there is one."""
        chunk.slot = self._pool.alloc()  # None when every slot is taken

    def place(self, chunk: ChunkRecord, slot: int) -> None:
        """Give a pinned record the slot the caller filled (or will fill)."""
        chunk.slot = slot

    def free_slot(self, slot: int) -> None:
        self._pool.free(slot)

    def refresh(self, chunk: ChunkRecord) -> None:
        """Bring the LRU and the disk tier's pins in line with a record whose
        pins, slot, disk copy or commit changed."""
        if chunk.committed and chunk.slot is not None and not chunk.pinned:
            if chunk.key not in self._lru:
                self._lru[chunk.key] = chunk  # appended: most recently used
        else:
            self._lru.pop(chunk.key, None)
        if chunk.on_disk:
            (self._disk.pin if chunk.pinned else self._disk.unpin)(chunk.key)

    def clear(self) -> None:
        """Forget the LRU (the index's close(), as the records go)."""
        self._lru.clear()

    # -- moves between tiers -----------------------------------------------

    def set_promoting(self, chunk: ChunkRecord, promoting: bool) -> None:
        """Mark a pinned disk-only chunk as being read back into a slot (or no longer)."""
        chunk.promoting = promoting

    def start_spill(self, chunk: ChunkRecord) -> None:
        """Hold disk bytes for a spill of `chunk`, reporting the files evicted for
        them, and pin it in flight. StoreFullError (evicting and pinning
        nothing) when they cannot fit."""
        self.reserve_disk(chunk.length)
        chunk.pins += 1
        self.refresh(chunk)

    def reserve_disk(self, length: int) -> None:
        """Hold disk bytes for one write of a `length`-byte payload, reporting
        the files evicted for them; StoreFullError (evicting nothing) when
        they cannot fit."""
        for key in self._disk.reserve(length):
            self._lost_disk_copy(key)

    def end_spill(self, chunk: ChunkRecord, written: bool, drop_if_pinned: bool) -> None:
        """Publish a spill's outcome and drop its pin: free the slot unless the
        chunk got pinned meanwhile (`drop_if_pinned`: operator pins do not keep
        it in CPU). A no-op once the store is closed."""
        if self._records.closed:
            return
        chunk.pins -= 1
        chunk.on_disk = written
        if chunk.pins > 0 or (chunk.held > 0 and not drop_if_pinned):
            self.refresh(chunk)  # still wanted in CPU
        elif written:
            self.drop_from_cpu(chunk)
        else:
            self._forget(chunk, EVICTED)

    def drop_from_cpu(self, chunk: ChunkRecord) -> None:
        """Free the slot of a chunk with no pins in flight: "spilled" if it has a
        disk copy (whose length and checksum the record takes), else "evicted"."""
        if not chunk.on_disk:
            self._forget(chunk, EVICTED)
            return
        self._pool.free(chunk.slot)
        chunk.slot = None
        entry = self._disk.entry(chunk.key)
        if entry is not None and (entry.length, entry.checksum) != (chunk.length, chunk.checksum):
            # an encoded spill: the record stands for its fastest copy, now the file
            self._records.describe(chunk, entry.length, entry.checksum)
        self.refresh(chunk)
        self._log.spilled(chunk.key)

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
        chunk = self._records.record(key)
        if chunk is None or not chunk.on_disk:
            return
        chunk.on_disk = False
        if chunk.slot is None and not chunk.promoting:
            self._forget(chunk, EVICTED)

    def _forget(self, chunk: ChunkRecord, kind: str) -> None:
        """Drop a chunk from every tier and the records, and report it."""
        self._records.drop(chunk)
        self._lru.pop(chunk.key, None)  # its disk file goes below
        if chunk.slot is not None:
            self._pool.free(chunk.slot)
            chunk.slot = None
        if chunk.on_disk:
            self._disk.remove(chunk.key)
            chunk.on_disk = False
        self._log.gone(chunk.key, kind)
