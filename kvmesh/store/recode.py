"""Re-encoding a held chunk in place: the operator's compress.

`ChunkRecoder.recode(key, encoder)` replaces a committed raw chunk's bytes
with their envelope (`chunk_codec`) in every tier that holds it: the CPU
slot (the same slot, with the new length and checksum) and the disk file
(rewritten the crash-safe way every chunk file is written). The steps, by
the store's rules (payloads are read, encoded and written outside the lock;
a chunk whose bytes change is pinned in flight):

1. lock: the chunk must be committed with nothing in flight (no store,
   load, spill, read back or other recode), else it is BUSY and nothing
   changes; it is pinned in flight. Operator pins do not stop a recode: they
   keep a chunk from being evicted, and a recoded chunk stays held.
2. no lock: read its bytes (the slot in place, or the file into a buffer)
   and encode them.
3. lock: a load that pinned it meanwhile may be reading the slot: BUSY, and
   nothing changes. Else it is marked `rewriting`, so loads that come now
   wait (`TierMover.load`), and disk bytes are reserved for the new file.
4. no lock: copy the envelope into the slot, write the file.
5. lock: the record takes the new length and checksum; unpin, wake the loads.

Threading: blocks on the lock and on the disk; call it from a worker thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from kvmesh.errors import ChunkMissingError, StoreError, StoreFullError
from kvmesh.store.chunk_codec import Encoded, Encoder
from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.index import ChunkIndex
from kvmesh.store.records import ChunkRecord, release_view
from kvmesh.store.slab_pool import SlabPool
from kvmesh.types import ChunkKey, key_hex

log = logging.getLogger(__name__)

# What became of a chunk (Recoded.outcome). Only RECODED changed anything.
RECODED = "compressed"
BUSY = "busy"  # in flight: being stored, loaded, served, spilled or read back
NOT_HELD = "not_held"
ENCODED = "already_encoded"  # an envelope already (odd length)
KEPT = "no_gain"  # the codec would not make it smaller (or it is not whole blocks)
NO_ROOM = "no_room"  # disk only, and the disk tier has no room for the new file
FAILED = "failed"  # the new file could not be written (logged); the old one stays


@dataclass(frozen=True, slots=True)
class Recoded:
    outcome: str
    bytes_before: int = 0  # the chunk's length before (0 when not held)
    bytes_after: int = 0  # and after (the same unless RECODED)


@dataclass(slots=True)
class _Plan:
    """Where the chunk's copies were when step 3 took it."""

    view: memoryview | None  # its slot, in CPU
    on_disk: bool


class ChunkRecoder:
    """The store's recode; see the module docstring. `promoted` is the tier
    mover's condition on the index lock (loads wait on it)."""

    def __init__(self, index: ChunkIndex, pool: SlabPool, disk: DiskTier | None,
                 promoted: threading.Condition) -> None:
        self._records = index.records
        self._book = index.book
        self._log = index.log
        self._lock = index.locked()
        self._pool = pool
        self._disk = disk
        self._promoted = promoted

    def recode(self, key: ChunkKey, encoder: Encoder) -> Recoded:
        rec = self._records
        with self._lock:
            rec.check_open()
            chunk = rec.committed(key)
            if chunk is None:
                return Recoded(NOT_HELD)
            before = chunk.length
            if before % 2:
                return Recoded(ENCODED, before, before)
            if not rec.start_rewrite(chunk):
                return Recoded(BUSY, before, before)
            source = self._pool.view(chunk.slot)[:before] if chunk.slot is not None else None
        try:
            return self._recode_pinned(chunk, source, encoder)
        finally:
            if source is not None:
                release_view(source)
            with self._lock:
                rec.end_rewrite(chunk)
                self._promoted.notify_all()

    def _recode_pinned(self, chunk: ChunkRecord, source: memoryview | None,
                       encoder: Encoder) -> Recoded:
        before = chunk.length
        try:
            raw = source if source is not None else self._read_file(chunk)
        except ChunkMissingError:
            return Recoded(NOT_HELD)
        encoded = encoder.encode(raw)
        if encoded is None:
            return Recoded(KEPT, before, before)
        plan = self._take(chunk, len(encoded))
        if isinstance(plan, Recoded):
            return Recoded(plan.outcome, before, before)
        wrote_slot, wrote_file = self._write(chunk, plan, encoded)
        with self._lock:
            if self._records.closed or not (wrote_slot or (wrote_file and chunk.slot is None)):
                return Recoded(FAILED, before, before)
            # the slot's bytes, or the file's when it is held on disk only
            self._records.describe(chunk, len(encoded), encoded.checksum)
            self._log.recoded(encoder.name, before - len(encoded))
        return Recoded(RECODED, before, len(encoded))

    def _read_file(self, chunk: ChunkRecord) -> memoryview:
        """A disk-only chunk's bytes, checked against its checksum. A file gone
        or corrupt (deleted by the disk tier) drops the chunk, as a read back does."""
        buf = memoryview(bytearray(chunk.length))
        try:
            self._disk.read_into(chunk.key, buf)
        except ChunkMissingError:
            with self._lock:
                if not self._records.closed and self._records.record(chunk.key) is chunk \
                        and chunk.slot is None:
                    self._book.disk_copy_lost(chunk)
            raise
        return buf

    def _take(self, chunk: ChunkRecord, length: int) -> _Plan | Recoded:
        """Step 3: mark the chunk rewriting and reserve its new file, or say why not."""
        with self._lock:
            self._records.check_open()
            if chunk.pins > 1 or self._records.record(chunk.key) is not chunk:
                return Recoded(BUSY)  # a load pinned it (it may be reading the slot)
            on_disk = chunk.on_disk
            if on_disk:
                try:
                    self._book.reserve_disk(length)
                except StoreFullError:
                    if chunk.slot is None:
                        return Recoded(NO_ROOM)
                    self._book.drop_from_disk(chunk)  # the slot is rewritten; an old file would linger
                    on_disk = False
            self._records.rewriting(chunk)
            view = self._pool.view(chunk.slot)[:length] if chunk.slot is not None else None
            return _Plan(view, on_disk)

    def _write(self, chunk: ChunkRecord, plan: _Plan, encoded: Encoded) -> tuple[bool, bool]:
        """Step 4: the envelope into the slot and the file; (slot written, file written)."""
        wrote_file = False
        if plan.view is not None:
            plan.view[:] = encoded.data
            release_view(plan.view)
        if plan.on_disk:
            try:
                self._disk.write_reserved(chunk.key, encoded.data, encoded.checksum, pinned=True)
                wrote_file = True
            except (OSError, StoreError) as exc:
                log.warning("rewriting chunk %s on disk failed: %s", key_hex(chunk.key), exc)
        return plan.view is not None, wrote_file
