"""The chunk store's index: one lock, and the three parts it guards.

Each part owns its own state and changes it only through its named
operations; the others (and the store's front, `tiers`, `actions`) may read
`ChunkRecord` fields but reach a part only through those operations:
- `records` (`RecordTable`, in `record_table`): the record of every chunk,
  committed or in flight, and its lifecycle: reserve, publish, abandon,
  load pins, operator pins, lookups;
- `book` (`TierBook`, in `tier_book`): where each record lies: the CPU
  pool's slot accounting, the disk tier's reservations, pins and files, the
  LRU, and the moves: spills, drops, evictions, removals;
- `log` (`StoreLog`, in `stats`): the event queue and the counters.
Records and book call each other (a publish refreshes the LRU, an eviction
drops a record); both write to the log, which calls neither. Only those two
parts write ChunkRecord fields: the table its lifecycle fields, the book
where it lies and a spill's pin.

The lock: one `threading.Lock`, made here and handed out by `locked()`
(lock-free); the parts have no lock of their own and never take this one
(it is not reentrant). Whoever calls an operation of a part, or the
index's stats() or close(), holds it, except for the lock-free
`records.contains(key)` (one dict lookup); so a part calls another part's
operations freely, inside its own. A Condition
may wait on it. No operation blocks or does I/O on payloads; the event
listener runs inside them (see events).

After close() the records are gone and the pool may be closed: `unpin`,
`end_spill` and `abandon`, which ticket holders still reach, are no-ops
then (`place` only notes a slot); others need `check_open()` or `closed`
first.
"""

from __future__ import annotations

import threading

from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.record_table import RecordTable
from kvmesh.store.records import StoreStats
from kvmesh.store.slab_pool import SlabPool
from kvmesh.store.stats import StoreLog
from kvmesh.store.tier_book import TierBook


class ChunkIndex:
    """The lock and the parts; see the module docstring. `disk` is None
    without a disk tier; payload I/O on `pool` and `disk` is the caller's."""

    __slots__ = ("_book", "_disk", "_lock", "_log", "_pool", "_records")

    def __init__(self, pool: SlabPool, disk: DiskTier | None, max_pending_events: int) -> None:
        self._lock = threading.Lock()
        self._pool = pool
        self._disk = disk
        self._log = StoreLog(max_pending_events)
        self._book = TierBook(pool, disk, self._log)
        self._records = RecordTable(self._book, self._log)
        self._book.attach(self._records)

    def locked(self) -> threading.Lock:
        """Lock-free: the store lock, the same object every time (a part may keep it)."""
        return self._lock

    @property
    def records(self) -> RecordTable:
        return self._records

    @property
    def book(self) -> TierBook:
        return self._book

    @property
    def log(self) -> StoreLog:
        return self._log

    def adopt_disk_chunks(self, slot_bytes: int) -> None:
        """Index chunks a previous run left on disk, reported as stored; once, from
        the store's constructor, before any other thread can see the index."""
        disk = self._disk
        for key in disk.keys():
            entry = disk.entry(key)
            if entry is not None and entry.length <= slot_bytes:
                self._records.adopt(key, entry.length, entry.checksum)

    def stats(self, slot_bytes: int) -> StoreStats:
        """A snapshot for the store's stats(); walks every record (O(chunks))."""
        return self._log.stats(self._records.every_record(), self._pool, self._disk, slot_bytes)

    def close(self) -> None:
        """Mark closed and forget every record; the caller closes the tiers."""
        self._records.close()
        self._book.clear()
