"""The chunk store: a CPU slab tier, an optional disk tier, LRU and pins.

Two-step I/O, each step called exactly once per chunk:
    prepare_store -> caller fills ticket.view / ticket.tensor -> commit_store(ok)
    prepare_load  -> caller reads ticket.view                 -> complete_load
Only committed chunks are visible (contains, tier_of, leading_hits, keys,
prepare_load, "stored" events), so a half-written chunk is never advertised.

Pins are refcounts. A chunk being stored, loaded or spilled is pinned in
flight; pin()/unpin() add operator pins. A pinned chunk is never evicted or
removed, and no in-flight chunk changes tier.

Tiers. When every CPU slot is taken, the least recently used unpinned chunk
makes room: with a disk tier it is spilled there ("spilled"), else dropped
("evicted"). The disk tier is inclusive: a chunk read back from disk keeps its
file, so evicting it again costs no write. The disk tier has its own byte cap
and LRU; a chunk that leaves it while not in CPU is "evicted".

Threading: every method is thread-safe. One lock guards the metadata; payload
bytes are hashed and copied outside it. Disk I/O (spills in prepare_store and
prepare_load, reads of disk-only chunks, move) also runs outside the lock, but
those calls block on it: with a disk tier (`has_disk_tier`), call them from
a worker thread, never from an event loop (`prepare_load_in_cpu` is the
loop's way to pin a chunk that is already in CPU). Every other method only takes the lock briefly;
stats() walks the index (O(chunks)).

Buffers: ticket views and tensors alias a slot of the store's pool. They are
valid until commit_store / complete_load, which release the ticket's view; a
tensor or a view derived from it must not be used after that either.

`ChunkStore` is the front; its parts, one file each, share its one lock:
- `records`: the tickets, the per-chunk record and StoreStats;
- `index`: the records, the LRU, events, counters and stats under
  the lock; `metadata`: what that bookkeeping costs per chunk;
- `tiers`: spills to disk, promotions back to CPU, moves;
- `events`: the event queue.
"""

from __future__ import annotations

from typing import Callable, Iterable

import xxhash

from kvmesh.config import StoreConfig
from kvmesh.errors import StoreError
from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.slab_pool import SlabPool
from kvmesh.store.events import REMOVED, STORED, StoreEvent
from kvmesh.store.index import ChunkIndex
from kvmesh.store.records import ChunkRecord, LoadTicket, StoreStats, StoreTicket, release_view
from kvmesh.store.tiers import TierMover
from kvmesh.types import ChunkKey, key_hex

TIERS = ("cpu", "disk")
MAX_PENDING_EVENTS = 1 << 16

__all__ = ["ChunkStore", "LoadTicket", "StoreEvent", "StoreStats", "StoreTicket"]


class ChunkStore:
    """The store front; contracts, threading included, in the module docstring."""

    def __init__(self, config: StoreConfig, slot_bytes: int, shared: bool = True, *,
                 max_pending_events: int = MAX_PENDING_EVENTS) -> None:
        self.slot_bytes = slot_bytes
        self._pool = SlabPool(slot_bytes, config.cpu_bytes, shared, config.prefault)
        try:
            self._disk = DiskTier(config.disk_dir, config.disk_bytes) if config.disk_dir else None
        except BaseException:
            self._pool.close()
            raise
        self._index = ChunkIndex(self._pool, self._disk, max_pending_events)
        self._lock = self._index.lock  # the one store lock, shared with the parts
        self._chunks = self._index.chunks  # the same dict: never rebound
        self._tiers = TierMover(self._index)
        if self._disk is not None:
            self._index.adopt_disk_chunks(slot_bytes)

    @property
    def cpu_slots(self) -> int:
        return self._pool.num_slots

    @property
    def has_disk_tier(self) -> bool:
        """With a disk tier, loads and stores may do disk I/O: keep them off event loops."""
        return self._disk is not None

    @property
    def shares_pool(self) -> bool:
        """Whether same-host peers may map the CPU pool (see SlabPool)."""
        return self._pool.shared

    @property
    def pool_proc_path(self) -> str | None:
        """The shared pool as this process sees it (/proc/<pid>/fd/<n>): for
        tests and debugging on this host only; never sent to anyone."""
        return self._pool.proc_path

    def share_pool_fd(self) -> tuple[int, int]:
        """(a new read-only descriptor of the CPU pool, its size), for a
        same-host peer; the caller closes the descriptor once it is sent."""
        return self._pool.share_fd(), self._pool.size

    def offset(self, slot: int) -> int:
        """Byte offset of `slot` in the shared CPU pool."""
        return self._pool.offset(slot)

    # -- store -----------------------------------------------------------

    def prepare_store(self, key: ChunkKey) -> StoreTicket | None:
        """Reserve a slot for `key`, evicting (spilling) LRU chunks if needed.

        None: the key is already committed or being stored. StoreFullError:
        every slot is pinned or in flight; nothing was changed.
        """
        with self._lock:
            self._index.check_open()
            if key in self._chunks:
                return None
            spill = self._tiers.make_room(key)  # the common case evicts without I/O, right here
            chunk = self._chunks[key] = ChunkRecord(key)
            chunk.pins = 1
            if spill is None:
                chunk.slot = self._pool.alloc()
        if chunk.slot is None:
            try:
                self._tiers.write_spill(*spill, drop_if_pinned=False)
                slot = self._tiers.take_slot(key)
            except BaseException:
                with self._lock:
                    if self._chunks.get(key) is chunk:
                        del self._chunks[key]
                raise
            with self._lock:
                chunk.slot = slot
        return StoreTicket(key, chunk.slot, self._pool.view(chunk.slot), self._pool.tensor(chunk.slot), chunk)

    def commit_store(self, ticket: StoreTicket, ok: bool = True, length: int | None = None,
                     checksum: int | None = None) -> bool:
        """Publish the chunk (ok=True) or give its slot back (ok=False).

        Checksums the first `length` bytes (default: the whole slot), unless
        the caller passes the `checksum` it has already verified them against
        (a pulled chunk: hashing 2 MiB again would cost as much as copying it). Returns
        True when the chunk is now committed and visible. Raises StoreError if
        the ticket was already committed or abandoned.
        """
        length = self.slot_bytes if length is None else length
        if ok and not 0 <= length <= self.slot_bytes:
            raise ValueError(f"length {length} is outside [0, {self.slot_bytes}]")
        try:
            if checksum is None or not ok:
                checksum = xxhash.xxh3_64_intdigest(ticket.view[:length]) if ok else 0
        except ValueError:  # the view was released: this ticket already ended
            checksum = None
        chunk = ticket._chunk
        ix = self._index
        with self._lock:
            if ix.closed:
                return False
            if self._chunks.get(ticket.key) is not chunk or chunk.committed or checksum is None:
                raise StoreError(f"store ticket for {key_hex(ticket.key)} was already committed or abandoned")
            release_view(ticket.view)
            if not ok:
                del self._chunks[ticket.key]
                self._pool.free(chunk.slot)
                return False
            chunk.length, chunk.checksum, chunk.committed = length, checksum, True
            chunk.pins -= 1
            ix.refresh(chunk)
            ix.events.put(STORED, ticket.key)
            return True

    # -- load ------------------------------------------------------------

    def prepare_load(self, key: ChunkKey) -> LoadTicket:
        """Pin a committed chunk for reading, bringing it into CPU if it is on disk only.

        Raises ChunkMissingError when the chunk is not held (or its file was
        corrupt: the file is then deleted); StoreFullError when a disk-only
        chunk cannot get a slot. Every call that returns a ticket is a hit,
        every one that raises a miss.
        """
        return self._tiers.load(key, count=True)

    def prepare_load_in_cpu(self, key: ChunkKey) -> LoadTicket | None:
        """`prepare_load` without disk I/O, so safe on an event loop: None
        (nothing pinned, nothing counted) when the chunk is held on disk only;
        call prepare_load on a worker thread for that one."""
        return self._tiers.load(key, count=True, promote=False)

    def complete_load(self, ticket: LoadTicket) -> None:
        """Unpin; exactly once per prepare_load (a second call raises StoreError)."""
        with self._lock:
            if ticket._done:
                raise StoreError(f"complete_load called twice for chunk {key_hex(ticket.key)}")
            ticket._done = True
            release_view(ticket.view)
            if not self._index.closed:
                ticket._chunk.pins -= 1
                self._index.refresh(ticket._chunk)

    # -- queries ---------------------------------------------------------

    def contains(self, key: ChunkKey) -> bool:
        chunk = self._chunks.get(key)
        return chunk is not None and chunk.committed

    def tier_of(self, key: ChunkKey) -> str | None:
        """The fastest tier holding a committed chunk: "cpu", "disk", or None."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed:
                return None
            return "cpu" if chunk.slot is not None else "disk"

    def leading_hits(self, keys: Iterable[ChunkKey]) -> int:
        """How many of `keys`, from the first, are committed in any tier."""
        with self._lock:
            n = 0
            for key in keys:
                chunk = self._chunks.get(key)
                if chunk is None or not chunk.committed:
                    break
                n += 1
            return n

    def checksum(self, key: ChunkKey) -> int | None:
        with self._lock:
            chunk = self._chunks.get(key)
            return chunk.checksum if chunk is not None and chunk.committed else None

    def keys(self) -> list[ChunkKey]:
        with self._lock:
            return [key for key, chunk in self._chunks.items() if chunk.committed]

    # -- operator actions ------------------------------------------------

    def pin(self, key: ChunkKey) -> bool:
        """Add an operator pin; False if the chunk is not committed here."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed:
                return False
            chunk.held += 1
            self._index.refresh(chunk)
            return True

    def unpin(self, key: ChunkKey) -> bool:
        """Drop one operator pin; False if unknown or not pinned by an operator."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None or chunk.held == 0:
                return False
            chunk.held -= 1
            self._index.refresh(chunk)
            return True

    def remove(self, key: ChunkKey) -> bool:
        """Drop a chunk from every tier; False if unknown, pinned or in flight."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed or chunk.pinned:
                return False
            self._index.forget(chunk, REMOVED)
            return True

    def clear(self, tier: str | None = None) -> list[ChunkKey]:
        """Drop every unpinned committed chunk from `tier` (None: all tiers).

        Returns the keys dropped from that tier. A chunk cleared from one tier
        but still held in the other stays visible ("spilled" when only its disk
        copy is left); one held nowhere any more is "removed".
        """
        if tier is not None and tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS} or None, got {tier!r}")
        ix = self._index
        with self._lock:
            ix.check_open()
            cleared = []
            for chunk in [c for c in self._chunks.values() if c.committed and not c.pinned]:
                in_cpu, in_disk = chunk.slot is not None, chunk.on_disk
                if tier == "cpu" and in_cpu and in_disk:
                    ix.drop_from_cpu(chunk)  # still held on disk
                elif tier == "disk" and in_disk and in_cpu:
                    self._disk.remove(chunk.key)  # still held in CPU
                    chunk.on_disk = False
                elif tier is None or (in_cpu if tier == "cpu" else in_disk):
                    ix.forget(chunk, REMOVED)
                else:
                    continue
                cleared.append(chunk.key)
            return cleared

    def move(self, key: ChunkKey, tier: str) -> bool:
        """Move a committed chunk to "cpu" or "disk"; True if it is now there.

        False if unknown, in flight, or the target tier has no room (or there is
        no disk tier). Operator pins do not prevent a move. Moving to "disk"
        frees the CPU slot; moving to "cpu" keeps the disk copy.
        """
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        if tier == "cpu":
            try:
                self.complete_load(self._tiers.load(key, count=False))
            except StoreError:
                return False
            return True
        return self._tiers.move_to_disk(key)

    def set_event_listener(self, listener: Callable[[str], None] | None) -> None:
        """Have `listener(kind)` called on each event as it is queued: under the
        store lock, on whichever thread changed the store, so it must return at
        once and must not call back into the store."""
        with self._lock:
            self._index.events.listener = listener

    def take_events(self) -> list[StoreEvent]:
        """Every change since the last call, coalesced per key (see events)."""
        with self._lock:
            return self._index.events.take()

    def stats(self) -> StoreStats:
        with self._lock:
            return self._index.stats(self.slot_bytes)

    def close(self) -> None:
        """Release the pool and the disk tier's directory lock (its files stay
        for the next start). Afterwards queries see an empty store,
        complete_load and commit_store are no-ops, and every other call raises
        StoreError. Safe to call twice."""
        with self._lock:
            if self._index.closed:
                return
            self._index.closed = True
            self._tiers.promoted.notify_all()
            self._chunks.clear()
            self._index.lru.clear()
            self._pool.close()
            if self._disk is not None:
                self._disk.close()
