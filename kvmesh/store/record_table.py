"""The chunk store's records and their lifecycle.

`RecordTable` holds the ChunkRecord of every chunk, committed or in flight,
and takes each through its life: `reserve` (pinned, in flight) then
`publish` (committed, visible, "stored") or `abandon`; `start_load`/`unpin`
for loads; `operator_pin`/`operator_unpin`; `start_rewrite`, `rewriting`,
`describe` and `end_rewrite` for a recode of its bytes; the lookups. It writes the
lifecycle fields of a record (committed, length, checksum, pins of stores,
loads and rewrites, held, rewriting) and creates and deletes records; where a record lies (its
slot, its disk copy) is the tier book's (`tier_book`), which it asks to seat
a new record, to free an abandoned one's slot and to `refresh` the LRU after
a pin or a commit. The tier book, in turn, `drop`s a record held nowhere.

Part of the store's index: the rules for the lock and for close() are in
`index`'s docstring. Lock-free here: `contains(key)` only.
"""

from __future__ import annotations

from collections.abc import Iterable, ValuesView
from typing import TYPE_CHECKING

from kvmesh.errors import StoreError
from kvmesh.store.records import ChunkRecord
from kvmesh.store.stats import StoreLog
from kvmesh.types import ChunkKey

if TYPE_CHECKING:
    from kvmesh.store.tier_book import TierBook

CLOSED = "the chunk store is closed"


class RecordTable:
    """See the module docstring."""

    def __init__(self, book: TierBook, log: StoreLog) -> None:
        self._chunks: dict[ChunkKey, ChunkRecord] = {}
        self._closed = False
        self._book = book
        self._log = log

    # -- open and closed ---------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise StoreError(CLOSED)

    def close(self) -> None:
        """Mark closed and forget every record (the index clears the LRU)."""
        self._closed = True
        self._chunks.clear()

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

    def every_record(self) -> ValuesView[ChunkRecord]:
        """Every record, in flight included: a live view, read it before releasing the lock."""
        return self._chunks.values()

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
        self._book.seat(chunk)
        return chunk

    def publish(self, chunk: ChunkRecord, length: int, checksum: int) -> bool:
        """Commit a reserved record: it becomes visible, unpinned, "stored".
        False, changing nothing, unless it is the in-flight record of its key
        (its store already ended, or the store was closed)."""
        if self._chunks.get(chunk.key) is not chunk or chunk.committed:
            return False
        chunk.length, chunk.checksum, chunk.committed = length, checksum, True
        chunk.pins -= 1
        self._book.refresh(chunk)
        self._log.stored(chunk.key)
        return True

    def abandon(self, chunk: ChunkRecord) -> bool:
        """Forget a reserved record and free its slot. False, changing nothing,
        unless it is the in-flight record of its key (as for publish)."""
        if self._chunks.get(chunk.key) is not chunk or chunk.committed:
            return False
        del self._chunks[chunk.key]
        if chunk.slot is not None:
            self._book.free_slot(chunk.slot)
        return True

    def adopt(self, key: ChunkKey, length: int, checksum: int) -> None:
        """Index a committed chunk found on disk only, "stored" (the index's
        adopt_disk_chunks, before any other thread can see the store)."""
        self._chunks[key] = ChunkRecord(key, None, length, checksum, committed=True, on_disk=True)
        self._log.stored(key)

    def describe(self, chunk: ChunkRecord, length: int, checksum: int) -> None:
        """The bytes a committed record stands for changed (in place, or its
        fastest copy is now another tier's): their length and checksum."""
        chunk.length, chunk.checksum = length, checksum

    def drop(self, chunk: ChunkRecord) -> None:
        """Delete the record of a chunk the tier book no longer holds anywhere."""
        del self._chunks[chunk.key]

    # -- pins --------------------------------------------------------------

    def start_load(self, key: ChunkKey, count: bool) -> ChunkRecord | None:
        """Pin the committed chunk of `key` for a load; None if none (a miss, if
        `count`). One in CPU is a hit (if `count`); for one on disk only, the
        caller counts the read back's outcome. StoreError once closed."""
        if self._closed:
            raise StoreError(CLOSED)
        chunk = self._chunks.get(key)
        if chunk is None or not chunk.committed:
            self._log.miss(count)
            return None
        chunk.pins += 1
        self._book.refresh(chunk)
        if chunk.slot is not None:
            self._log.hit(count)
        return chunk

    def unpin(self, chunk: ChunkRecord) -> None:
        """Drop one in-flight pin of a load; a no-op once the store is closed."""
        if not self._closed:
            chunk.pins -= 1
            self._book.refresh(chunk)

    def start_rewrite(self, chunk: ChunkRecord) -> bool:
        """Pin a committed chunk with nothing in flight (operator pins allowed)
        for a rewrite of its bytes; False, changing nothing, if anything holds
        it in flight (a store, load, spill or read back)."""
        if chunk.pins > 0 or chunk.promoting or not chunk.committed:
            return False
        chunk.pins += 1
        self._book.refresh(chunk)
        return True

    def rewriting(self, chunk: ChunkRecord) -> None:
        """A pinned rewrite starts writing: loads wait until `end_rewrite`."""
        chunk.rewriting = True

    def end_rewrite(self, chunk: ChunkRecord) -> None:
        """Drop a rewrite's pin; loads waiting on it may go on. A no-op once closed."""
        chunk.rewriting = False
        if not self._closed:
            chunk.pins -= 1
            self._book.refresh(chunk)

    def operator_pin(self, chunk: ChunkRecord) -> None:
        chunk.held += 1
        self._book.refresh(chunk)

    def operator_unpin(self, chunk: ChunkRecord) -> None:
        """Drop one operator pin; the caller checked that `chunk.held` > 0."""
        chunk.held -= 1
        self._book.refresh(chunk)
