"""Moving chunks between the chunk store's tiers: spills to disk, promotions back.

`TierMover` does the store's disk I/O and the lock dance around it. The
pattern, every time: under the index lock pick the chunk and pin it (a spill
victim also gets its disk bytes reserved), release the lock for the I/O,
retake it to publish the outcome. A pinned chunk is never evicted, so the
record stays valid while the lock is dropped; the store may be closed
meanwhile, which every retake checks.

- `make_room` (lock held): free a CPU slot by dropping the LRU chunk, or
  hand back a victim whose spill the caller writes with `write_spill`
  (lock not held), which then drops it from CPU.
- `take_slot` (lock not held): both, in a loop, until a slot is the
  caller's.
- `load` (lock not held): pin a committed chunk and return a LoadTicket,
  reading a disk-only chunk back into a slot first (one reader per chunk;
  the others wait on `promoted`).
- `move_to_disk` (lock not held): the operator's move to "disk".

Calls that may do I/O block on the lock and on the disk: with a disk tier,
call them from a worker thread, never from an event loop.
"""

from __future__ import annotations

import logging
import threading

from kvmesh.errors import ChunkMissingError, StoreError, StoreFullError
from kvmesh.store.events import EVICTED
from kvmesh.store.index import ChunkIndex
from kvmesh.store.records import ChunkRecord, LoadTicket, release_view
from kvmesh.types import ChunkKey, key_hex

log = logging.getLogger(__name__)


class TierMover:
    """Spills, promotions and moves for one store's index; see the module docstring.

    `promoted` is a condition on the index lock, notified whenever a
    promotion ends (and by the store's close()).
    """

    def __init__(self, index: ChunkIndex) -> None:
        self._index = index
        self.promoted = threading.Condition(index.lock)

    # -- loading ---------------------------------------------------------

    def load(self, key: ChunkKey, count: bool, promote: bool = True) -> LoadTicket | None:
        """Pin a committed chunk in a CPU slot; `count`: as a hit or a miss.
        Raises ChunkMissingError, or StoreFullError when a disk-only chunk
        gets no slot. promote=False: None for a disk-only chunk (no I/O, no
        pin, not counted)."""
        ix = self._index
        with ix.lock:
            ix.check_open()
            chunk = ix.chunks.get(key)
            if chunk is None or not chunk.committed:
                ix.misses += count
                raise ChunkMissingError(f"chunk {key_hex(key)} is not in this store")
            if chunk.slot is None and not promote:
                return None
            chunk.pins += 1
            ix.refresh(chunk)
            if chunk.slot is not None:
                ix.hits += count
                return self._load_ticket(chunk, "cpu")
        try:
            self._promote(chunk)
        except BaseException:
            with ix.lock:
                ix.misses += count
                if not ix.closed:
                    chunk.pins -= 1
                    ix.refresh(chunk)
            raise
        with ix.lock:
            ix.hits += count
            return self._load_ticket(chunk, "disk")

    def _promote(self, chunk: ChunkRecord) -> None:
        """Read a pinned disk-only chunk into a slot; one reader at a time per chunk."""
        ix = self._index
        with ix.lock:
            while chunk.promoting:
                self.promoted.wait()
            ix.check_open()
            if chunk.slot is not None:
                return  # another loader brought it in while we waited
            if ix.chunks.get(chunk.key) is not chunk:
                raise ChunkMissingError(f"chunk {key_hex(chunk.key)} is not in this store")
            chunk.promoting = True
        slot = None
        try:
            slot = self.take_slot(chunk.key)
            view = ix.pool.view(slot)
            _, checksum = ix.disk.read_into(chunk.key, view)
            release_view(view)
            if checksum != chunk.checksum:
                ix.disk.remove(chunk.key)
                raise ChunkMissingError(f"chunk file for {key_hex(chunk.key)} holds other bytes; deleted")
        except BaseException as exc:
            with ix.lock:
                chunk.promoting = False
                self.promoted.notify_all()
                if not ix.closed:
                    if slot is not None:
                        ix.pool.free(slot)
                    if isinstance(exc, ChunkMissingError) and ix.chunks.get(chunk.key) is chunk:
                        chunk.on_disk = False  # the disk tier already dropped the file
                        ix.forget(chunk, EVICTED)
            raise
        with ix.lock:
            chunk.promoting = False
            self.promoted.notify_all()
            ix.check_open()
            chunk.slot = slot

    def _load_ticket(self, chunk: ChunkRecord, tier: str) -> LoadTicket:
        view = self._index.pool.view(chunk.slot)[:chunk.length]
        return LoadTicket(chunk.key, chunk.slot, view, chunk.length, chunk.checksum, tier, chunk)

    # -- making room -----------------------------------------------------

    def take_slot(self, for_key: ChunkKey) -> int:
        """A free slot owned by the caller, evicting LRU chunks for it.

        Called without the lock; spills are written between lock holds.
        Raises StoreFullError when every slot is pinned or in flight.
        """
        ix = self._index
        while True:
            with ix.lock:
                ix.check_open()
                spill = self.make_room(for_key)
                if spill is None:
                    return ix.pool.alloc()
            self.write_spill(*spill, drop_if_pinned=False)

    def make_room(self, for_key: ChunkKey) -> tuple[ChunkRecord, memoryview] | None:
        """Free slots until one is free; or return a victim whose spill must be written first.
        Lock held. The victim comes back pinned, its disk bytes reserved."""
        ix = self._index
        while ix.pool.free_slots == 0:
            if not ix.lru:
                raise StoreFullError(
                    f"cannot place chunk {key_hex(for_key)}: all {ix.pool.num_slots} CPU slots "
                    "are pinned or in flight")
            victim = next(iter(ix.lru.values()))
            if ix.disk is None or victim.on_disk:
                ix.drop_from_cpu(victim)
                continue
            try:
                for key in ix.disk.reserve(victim.length):
                    ix.lost_disk_copy(key)
            except StoreFullError:
                ix.forget(victim, EVICTED)  # nowhere to spill it
                continue
            victim.pins += 1
            ix.refresh(victim)
            return victim, ix.pool.view(victim.slot)[:victim.length]
        return None

    def write_spill(self, chunk: ChunkRecord, view: memoryview, drop_if_pinned: bool) -> None:
        """Write a chunk reserved on disk, then free its slot unless it got pinned
        meanwhile (`drop_if_pinned`: operator pins do not keep it in CPU).
        Lock not held; drops the pin make_room (or move_to_disk) took."""
        ix = self._index
        try:
            ix.disk.write_reserved(chunk.key, view, chunk.checksum, pinned=True)
            written = True
        except (OSError, StoreError) as exc:
            log.warning("spilling chunk %s to disk failed: %s", key_hex(chunk.key), exc)
            written = False
        finally:
            release_view(view)
        with ix.lock:
            if ix.closed:
                return
            chunk.pins -= 1
            chunk.on_disk = written
            if chunk.pins > 0 or (chunk.held > 0 and not drop_if_pinned):
                ix.refresh(chunk)  # still wanted in CPU
            elif written:
                ix.drop_from_cpu(chunk)
            else:
                ix.forget(chunk, EVICTED)

    def move_to_disk(self, key: ChunkKey) -> bool:
        """The store's move(key, "disk"): True if the chunk is now on disk only."""
        ix = self._index
        with ix.lock:
            ix.check_open()
            chunk = ix.chunks.get(key)
            if chunk is None or not chunk.committed or ix.disk is None or chunk.pins > 0:
                return False
            if chunk.slot is None or chunk.on_disk:
                if chunk.slot is not None:
                    ix.drop_from_cpu(chunk)
                return True
            try:
                for victim in ix.disk.reserve(chunk.length):
                    ix.lost_disk_copy(victim)
            except StoreFullError:
                return False
            chunk.pins += 1
            ix.refresh(chunk)
            view = ix.pool.view(chunk.slot)[:chunk.length]
        self.write_spill(chunk, view, drop_if_pinned=True)
        with ix.lock:
            return chunk.slot is None and chunk.on_disk
