"""Moving chunks between the chunk store's tiers: spills to disk, promotions back.

`TierMover` does the store's disk I/O and the lock dance around it. The
pattern, every time: under the index lock pick the chunk and pin it (a spill
victim also gets its disk bytes reserved), release the lock for the I/O,
retake it to publish the outcome. A pinned chunk is never evicted, so the
record stays valid while the lock is dropped; the store may be closed
meanwhile, which every retake checks. Every change to the bookkeeping goes
through the operations of the index's parts (`index`): the record table, the
tier book and the log; the mover itself reads and writes payloads.

- `make_room` (lock held): free a CPU slot by dropping the LRU chunk, or
  hand back a victim whose spill the caller writes with `write_spill`
  (lock not held), which then drops it from CPU; `room_for` (lock held)
  does it for a record the index reserved without a slot. With a disk
  codec the spill writes the chunk's envelope (fewer bytes; counted), and
  the record takes the file's length and checksum once its slot goes.
- `take_slot` (lock not held): make_room and write_spill, in a loop, until
  a slot is the caller's.
- `load` (lock not held): pin a committed chunk and return a LoadTicket,
  reading a disk-only chunk back into a slot first, as the file holds it (an
  envelope stays one; one reader per chunk; the others wait on `promoted`,
  as loads of a chunk being rewritten by `recode` do).
- `move_to_cpu`, `move_to_disk` (lock not held): the operator's moves.

Calls that may do I/O block on the lock and on the disk: with a disk tier,
call them from a worker thread, never from an event loop.
"""

from __future__ import annotations

import logging
import threading

from kvmesh.errors import ChunkMissingError, KvmeshError, StoreError, StoreFullError
from kvmesh.store.chunk_codec import Encoder
from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.index import ChunkIndex
from kvmesh.store.records import ChunkRecord, LoadTicket, release_view
from kvmesh.store.slab_pool import SlabPool
from kvmesh.types import ChunkKey, key_hex

logger = logging.getLogger(__name__)

Spill = tuple[ChunkRecord, memoryview]  # a victim pinned in CPU, its disk bytes reserved; its payload


class TierMover:
    """Spills, promotions and moves for one store's index; see the module docstring.

    `pool` and `disk` are the index's tiers, used here for payload I/O only
    (views, reads, reserved writes, deleting a file that reads back wrong).
    `promoted` is a condition on the index lock, notified whenever a
    promotion or a rewrite (`recode`) ends, and by the store's close().
    `disk_codec`, if given, encodes what spills write (see `chunk_codec`).
    """

    def __init__(self, index: ChunkIndex, pool: SlabPool, disk: DiskTier | None,
                 disk_codec: Encoder | None = None) -> None:
        self._records = index.records
        self._book = index.book
        self._log = index.log
        self._lock = index.locked()
        self._pool = pool
        self._disk = disk
        self._disk_codec = disk_codec
        self.promoted = threading.Condition(self._lock)

    # -- loading ---------------------------------------------------------

    def load(self, key: ChunkKey, count: bool, promote: bool = True) -> LoadTicket | None:
        """Pin a committed chunk in a CPU slot; `count`: as a hit or a miss.
        Raises ChunkMissingError, or StoreFullError when a disk-only chunk
        gets no slot. promote=False: None for a disk-only chunk (no I/O, no
        pin, not counted)."""
        rec = self._records
        with self._lock:
            held = rec.committed(key)
            while held is not None and held.rewriting:  # its bytes are being replaced
                if not promote:
                    return None  # not on the caller's thread: it loads it elsewhere
                self.promoted.wait()
                held = rec.committed(key)
            if not promote and held is not None and held.slot is None:
                return None  # on disk only: the caller reads it back elsewhere
            chunk = rec.start_load(key, count)  # pinned; counted unless on disk only
            if chunk is None:
                raise ChunkMissingError(f"chunk {key_hex(key)} is not in this store")
            if chunk.slot is not None:
                return self._load_ticket(chunk, "cpu")
        try:
            self._promote(chunk)
        except BaseException:
            with self._lock:
                if count:
                    self._log.miss()
                rec.unpin(chunk)
            raise
        with self._lock:
            if count:
                self._log.hit()
            return self._load_ticket(chunk, "disk")

    def _promote(self, chunk: ChunkRecord) -> None:
        """Read a pinned disk-only chunk into a slot; one reader at a time per chunk."""
        rec, book = self._records, self._book
        with self._lock:
            while chunk.promoting:
                self.promoted.wait()
            rec.check_open()
            if chunk.slot is not None:
                return  # another loader brought it in while we waited
            if rec.record(chunk.key) is not chunk:
                raise ChunkMissingError(f"chunk {key_hex(chunk.key)} is not in this store")
            book.set_promoting(chunk, True)
        slot = None
        try:
            slot = self.take_slot(chunk.key)
            view = self._pool.view(slot)
            _, checksum = self._disk.read_into(chunk.key, view)
            release_view(view)
            if checksum != chunk.checksum:
                self._disk.remove(chunk.key)
                raise ChunkMissingError(f"chunk file for {key_hex(chunk.key)} holds other bytes; deleted")
        except BaseException as exc:
            with self._lock:
                book.set_promoting(chunk, False)
                self.promoted.notify_all()
                if not rec.closed:
                    if slot is not None:
                        book.free_slot(slot)
                    if isinstance(exc, ChunkMissingError) and rec.record(chunk.key) is chunk:
                        book.disk_copy_lost(chunk)  # the disk tier already dropped the file
            raise
        with self._lock:
            book.set_promoting(chunk, False)
            self.promoted.notify_all()
            rec.check_open()
            book.place(chunk, slot)

    def _load_ticket(self, chunk: ChunkRecord, tier: str) -> LoadTicket:
        view = self._pool.view(chunk.slot)[:chunk.length]
        return LoadTicket(chunk.key, chunk.slot, view, chunk.length, chunk.checksum, tier, chunk)

    # -- making room -----------------------------------------------------

    def take_slot(self, for_key: ChunkKey) -> int:
        """A free slot owned by the caller, evicting LRU chunks for it.

        Called without the lock; spills are written between lock holds.
        Raises StoreFullError when every slot is pinned or in flight.
        """
        while True:
            with self._lock:
                self._records.check_open()
                spill = self.make_room(for_key)
                if spill is None:
                    return self._book.alloc_slot()
            self.write_spill(*spill, drop_if_pinned=False)

    def make_room(self, for_key: ChunkKey) -> Spill | None:
        """Free slots until one is free; or return a victim whose spill must be written first.
        Lock held. The victim comes back pinned, its disk bytes reserved."""
        book = self._book
        while book.cpu_full():
            victim = book.lru_victim()
            if victim is None:
                raise StoreFullError(
                    f"cannot place chunk {key_hex(for_key)}: all {self._pool.num_slots} CPU slots "
                    "are pinned or in flight")
            if self._disk is None or victim.on_disk:
                book.drop_from_cpu(victim)
                continue
            try:
                book.start_spill(victim)  # disk bytes reserved, pinned in flight
            except StoreFullError:
                book.evict(victim)  # nowhere to spill it
                continue
            return victim, self._pool.view(victim.slot)[:victim.length]
        return None

    def room_for(self, chunk: ChunkRecord) -> Spill | None:
        """Lock held: give a reserved record that got no slot one, evicting LRU
        chunks for it; or return the spill to write first (then take_slot).
        If that raises (StoreFullError), the record is abandoned."""
        try:
            spill = self.make_room(chunk.key)
        except BaseException:
            self._records.abandon(chunk)
            raise
        if spill is None:
            self._book.place(chunk, self._book.alloc_slot())
        return spill

    def write_spill(self, chunk: ChunkRecord, view: memoryview, drop_if_pinned: bool) -> None:
        """Write a chunk reserved on disk, then free its slot unless it got pinned
        meanwhile (`drop_if_pinned`: operator pins do not keep it in CPU).
        Lock not held; drops the pin make_room (or move_to_disk) took. With a
        disk codec, a raw chunk is written encoded (the record takes the
        file's length and checksum once the slot goes: `drop_from_cpu`)."""
        saved = 0
        try:
            payload, checksum = view, chunk.checksum
            encoded = self._disk_codec.encode(view) if self._disk_codec is not None else None
            if encoded is not None:
                payload, checksum = encoded.data, encoded.checksum
                saved = len(view) - len(payload)
            self._disk.write_reserved(chunk.key, payload, checksum, pinned=True, reserved=len(view))
            written = True
        except (OSError, KvmeshError) as exc:
            logger.warning("spilling chunk %s to disk failed: %s", key_hex(chunk.key), exc)
            written = False
        finally:
            release_view(view)
        with self._lock:
            if written and saved:
                self._log.disk_saved(self._disk_codec.name, saved)
            self._book.end_spill(chunk, written, drop_if_pinned)

    def move_to_cpu(self, key: ChunkKey) -> bool:
        """The store's move(key, "cpu"): a load that counts as neither hit nor
        miss, ended at once; True if the chunk is now in CPU."""
        try:
            ticket = self.load(key, count=False)
        except StoreError:
            return False
        with self._lock:
            release_view(ticket.view)
            self._records.unpin(ticket._chunk)
        return True

    def move_to_disk(self, key: ChunkKey) -> bool:
        """The store's move(key, "disk"): True if the chunk is now on disk only."""
        book = self._book
        with self._lock:
            self._records.check_open()
            chunk = self._records.committed(key)
            if chunk is None or self._disk is None or chunk.pins > 0:
                return False
            if chunk.slot is None or chunk.on_disk:
                if chunk.slot is not None:
                    book.drop_from_cpu(chunk)
                return True
            try:
                book.start_spill(chunk)  # disk bytes reserved, pinned in flight
            except StoreFullError:
                return False
            view = self._pool.view(chunk.slot)[:chunk.length]
        self.write_spill(chunk, view, drop_if_pinned=True)
        with self._lock:
            return chunk.slot is None and chunk.on_disk
