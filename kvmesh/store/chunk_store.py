"""The chunk store: a CPU slab tier, an optional disk tier, LRU and pins.

Two-step I/O, each step called exactly once per chunk:
    prepare_store -> caller fills ticket.view / ticket.tensor -> commit_store(ok)
    prepare_load  -> caller reads ticket.view                 -> complete_load
Only committed chunks are visible (contains, tier_of, leading_hits, keys,
prepare_load, "stored" events), so a half-written chunk is never advertised.

Pins are refcounts. A chunk being stored, loaded, spilled or recoded is
pinned in flight; pin()/unpin() add operator pins. A pinned chunk is never
evicted or removed, and no in-flight chunk changes tier.

Codecs. A chunk's bytes are raw (even length) or a codec's envelope (odd
length, `kvmesh.codecs`); the store never decodes. With `disk_codec` a spill
writes a raw chunk's envelope, and a chunk read back from such a file keeps
it (shorter than the slot). `recode` re-encodes a held chunk in place.

Tiers. When every CPU slot is taken, the least recently used unpinned chunk
makes room: with a disk tier it is spilled there ("spilled"), else dropped
("evicted"). The disk tier is inclusive: a chunk read back from disk keeps its
file, so evicting it again costs no write. The disk tier has its own byte cap
and LRU; a chunk that leaves it while not in CPU is "evicted".

Threading: every method is thread-safe. One lock guards the metadata; payload
bytes are hashed and copied outside it. Disk I/O (spills in prepare_store and
prepare_load, reads of disk-only chunks, move, recode) also runs outside the lock, but
those calls block on it: with a disk tier (`has_disk_tier`), call them from
a worker thread, never from an event loop (`prepare_load_in_cpu` is the
loop's way to pin a chunk that is already in CPU). Every other method only takes the lock briefly;
stats() walks the index (O(chunks)).

Buffers: ticket views and tensors alias a slot of the store's pool. They are
valid until commit_store / complete_load, which release the ticket's view; a
tensor or a view derived from it must not be used after that either.

`ChunkStore` is the one front: other packages use it, and besides it only
the types in `records`, the event kinds in `events` and
`slab_pool.map_shared_fd` (a same-host reader's mapping). Behind it, one
file each:
- `index`: the one lock and the three parts it guards, each changed only
  through its named operations: `record_table` (the records and their
  lifecycle), `tier_book` (slot and file accounting, the LRU, moves between
  tiers), `stats` (events, counters, StoreStats snapshots); `metadata`:
  what the bookkeeping costs per chunk;
- `tiers`: making room, and the disk I/O of spills, promotions back to CPU
  and moves;
- `actions`: the operator's pin, unpin, remove, clear and move; `recode`:
  its compress; `chunk_codec`: what an encoder of chunks is;
- `records`: the tickets, the per-chunk record and StoreStats;
- `events`: the event queue; `slab_pool`, `disk_tier`: the two tiers;
  `pool_info`: the store's `pool`, the CPU pool as the peer sees it.
"""

from __future__ import annotations

from typing import Callable, Iterable

import xxhash

from kvmesh.config import StoreConfig
from kvmesh.errors import StoreError
from kvmesh.store.actions import OperatorActions
from kvmesh.store.chunk_codec import Encoder
from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.slab_pool import SlabPool
from kvmesh.store.events import StoreEvent
from kvmesh.store.index import ChunkIndex
from kvmesh.store.pool_info import PoolInfo
from kvmesh.store.recode import ChunkRecoder, Recoded
from kvmesh.store.records import LoadTicket, StoreStats, StoreTicket, release_view
from kvmesh.store.tiers import TierMover
from kvmesh.types import ChunkKey, key_hex

MAX_PENDING_EVENTS = 1 << 16

__all__ = ["ChunkStore", "LoadTicket", "StoreEvent", "StoreStats", "StoreTicket"]


class ChunkStore:
    """The store front; contracts, threading included, in the module docstring.

    Fixed at construction: `slot_bytes`, and `pool`, what the peer may know
    of the CPU pool (its slot count, sharing it with same-host peers, slot
    offsets: see `pool_info`).
    """

    def __init__(self, config: StoreConfig, slot_bytes: int, shared: bool = True, *,
                 max_pending_events: int = MAX_PENDING_EVENTS, disk_codec: Encoder | None = None) -> None:
        self.slot_bytes = slot_bytes
        self._pool = SlabPool(slot_bytes, config.cpu_bytes, shared, config.prefault)
        self.pool = PoolInfo(self._pool)
        try:
            self._disk = DiskTier(config.disk_dir, config.disk_bytes) if config.disk_dir else None
        except BaseException:
            self._pool.close()
            raise
        self._index = ChunkIndex(self._pool, self._disk, max_pending_events)
        self._lock = self._index.locked()  # the one store lock, shared with the parts
        self._records, self._book, self._log = self._index.records, self._index.book, self._index.log
        self._tiers = TierMover(self._index, self._pool, self._disk, disk_codec)
        self._actions = OperatorActions(self._index, self._tiers)
        self._recoder = ChunkRecoder(self._index, self._pool, self._disk, self._tiers.promoted)
        if self._disk is not None:
            self._index.adopt_disk_chunks(slot_bytes)

    @property
    def has_disk_tier(self) -> bool:
        """With a disk tier, loads and stores may do disk I/O: keep them off event loops."""
        return self._disk is not None

    # -- store -----------------------------------------------------------

    def prepare_store(self, key: ChunkKey) -> StoreTicket | None:
        """Reserve a slot for `key`, evicting (spilling) LRU chunks if needed.

        None: the key is already committed or being stored. StoreFullError:
        every slot is pinned or in flight; nothing was changed.
        """
        rec = self._records
        with self._lock:
            chunk = rec.reserve(key)  # pinned, with a slot unless every one is taken
            if chunk is None:
                return None
            # no slot free: make room; the common case evicts without I/O, right here
            spill = None if chunk.slot is not None else self._tiers.room_for(chunk)
        if spill is not None:
            try:
                self._tiers.write_spill(*spill, drop_if_pinned=False)
                slot = self._tiers.take_slot(key)
            except BaseException:
                with self._lock:
                    rec.abandon(chunk)
                raise
            with self._lock:
                self._book.place(chunk, slot)
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
        rec = self._records
        with self._lock:
            # each changes nothing unless the ticket's record is still in flight
            if checksum is not None and (rec.publish(chunk, length, checksum) if ok else rec.abandon(chunk)):
                release_view(ticket.view)
                return ok
            if rec.closed:  # close() forgot every record
                return False
            raise StoreError(f"store ticket for {key_hex(ticket.key)} was already committed or abandoned")

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
            self._records.unpin(ticket._chunk)  # a no-op once closed

    # -- queries ---------------------------------------------------------

    def contains(self, key: ChunkKey) -> bool:
        return self._records.contains(key)

    def tier_of(self, key: ChunkKey) -> str | None:
        """The fastest tier holding a committed chunk: "cpu", "disk", or None."""
        with self._lock:
            chunk = self._records.committed(key)
            if chunk is None:
                return None
            return "cpu" if chunk.slot is not None else "disk"

    def leading_hits(self, keys: Iterable[ChunkKey]) -> int:
        """How many of `keys`, from the first, are committed in any tier."""
        with self._lock:
            return self._records.leading_hits(keys)

    def checksum(self, key: ChunkKey) -> int | None:
        with self._lock:
            chunk = self._records.committed(key)
            return chunk.checksum if chunk is not None else None

    def keys(self) -> list[ChunkKey]:
        with self._lock:
            return self._records.committed_keys()

    # -- operator actions ------------------------------------------------

    def pin(self, key: ChunkKey) -> bool:
        """Add an operator pin; False if the chunk is not committed here."""
        return self._actions.pin(key)

    def unpin(self, key: ChunkKey) -> bool:
        """Drop one operator pin; False if unknown or not pinned by an operator."""
        return self._actions.unpin(key)

    def remove(self, key: ChunkKey) -> bool:
        """Drop a chunk from every tier; False if unknown, pinned or in flight."""
        return self._actions.remove(key)

    def clear(self, tier: str | None = None) -> list[ChunkKey]:
        """Drop every unpinned committed chunk from `tier` (None: all tiers).

        Returns the keys dropped from that tier. A chunk cleared from one tier
        but still held in the other stays visible ("spilled" when only its disk
        copy is left); one held nowhere any more is "removed". ValueError for
        another tier name.
        """
        return self._actions.clear(tier)

    def move(self, key: ChunkKey, tier: str) -> bool:
        """Move a committed chunk to "cpu" or "disk"; True if it is now there.

        False if unknown, in flight, or the target tier has no room (or there is
        no disk tier). Operator pins do not prevent a move. Moving to "disk"
        frees the CPU slot; moving to "cpu" keeps the disk copy. ValueError
        for another tier name.
        """
        return self._actions.move(key, tier)

    def recode(self, key: ChunkKey, encoder: Encoder) -> Recoded:
        """Re-encode a held raw chunk in place, in every tier holding it (see
        `recode`): the outcome, with its length before and after. A chunk in
        flight is BUSY and left as it is; operator pins do not prevent it.
        Blocks on the lock and does disk I/O: call it from a worker thread."""
        return self._recoder.recode(key, encoder)

    def set_event_listener(self, listener: Callable[[str], None] | None) -> None:
        """Have `listener(kind)` called on each event as it is queued: under the
        store lock, on whichever thread changed the store, so it must return at
        once and must not call back into the store."""
        with self._lock:
            self._log.set_listener(listener)

    def take_events(self) -> list[StoreEvent]:
        """Every change since the last call, coalesced per key (see events)."""
        with self._lock:
            return self._log.take_events()

    def stats(self) -> StoreStats:
        with self._lock:
            return self._index.stats(self.slot_bytes)

    def close(self) -> None:
        """Release the pool and the disk tier's directory lock (its files stay
        for the next start). Afterwards queries see an empty store,
        complete_load and commit_store are no-ops, and every other call raises
        StoreError. Safe to call twice."""
        with self._lock:
            if self._records.closed:
                return
            self._index.close()
            self._tiers.promoted.notify_all()
            self._pool.close()
            if self._disk is not None:
                self._disk.close()
