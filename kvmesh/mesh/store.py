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
those calls block on it: with a disk tier, call them from a worker thread,
never from an event loop. Every other method only takes the lock briefly;
stats() walks the index (O(chunks)).

Buffers: ticket views and tensors alias a slot of the store's pool. They are
valid until commit_store / complete_load, which release the ticket's view; a
tensor or a view derived from it must not be used after that either.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from typing import Iterable

import torch
import xxhash

from kvmesh.config import StoreConfig
from kvmesh.errors import ChunkMissingError, StoreError, StoreFullError
from kvmesh.mesh.disk_tier import DiskTier
from kvmesh.mesh.slab_pool import SlabPool
from kvmesh.mesh.store_events import EVICTED, REMOVED, SPILLED, STORED, EventQueue, StoreEvent
from kvmesh.types import ChunkKey, key_hex

log = logging.getLogger(__name__)

TIERS = ("cpu", "disk")
MAX_PENDING_EVENTS = 1 << 16

__all__ = ["ChunkStore", "LoadTicket", "StoreEvent", "StoreStats", "StoreTicket"]


@dataclass(slots=True, eq=False)
class StoreTicket:
    """A reserved slot to fill; pass it to commit_store exactly once."""

    key: ChunkKey
    slot: int
    view: memoryview  # the whole slot, writable
    tensor: torch.Tensor  # uint8, the same memory
    _chunk: "_Chunk" = field(repr=False)


@dataclass(slots=True, eq=False)
class LoadTicket:
    """A pinned chunk to read; pass it to complete_load exactly once."""

    key: ChunkKey
    slot: int
    view: memoryview  # the payload: slot bytes [0:length]
    length: int
    checksum: int  # xxh3_64 of the payload, recorded at commit
    tier: str  # where it was found: "cpu", or "disk" (read back into a slot)
    _chunk: "_Chunk" = field(repr=False)
    _done: bool = field(default=False, repr=False)


@dataclass(frozen=True, slots=True)
class StoreStats:
    cpu_slots_total: int
    cpu_slots_used: int  # committed, being stored, or being read back from disk
    cpu_bytes_cap: int  # slots * slot_bytes
    cpu_bytes_used: int  # used slots * slot_bytes
    disk_bytes_cap: int
    disk_bytes_used: int  # whole files, headers included
    chunks_cpu: int  # committed chunks in a CPU slot
    chunks_disk: int  # committed chunks with a disk copy (inclusive tier: some also in CPU)
    pinned: int  # chunks pinned by an operator or in flight
    hits: int
    misses: int
    evictions: int  # chunks no longer held in any tier for lack of room
    spills: int  # chunks moved from CPU to disk
    events_dropped: int  # events lost to the queue bound (see store_events)
    metadata_bytes_per_chunk: int


class _Chunk:
    """Per-chunk metadata. Mutated only under the store lock."""

    __slots__ = ("key", "slot", "length", "checksum", "committed", "on_disk", "pins", "held", "promoting")

    def __init__(self, key: ChunkKey, slot: int | None = None, length: int = 0, checksum: int = 0,
                 committed: bool = False, on_disk: bool = False) -> None:
        self.key = key
        self.slot = slot  # None: not in a CPU slot
        self.length = length
        self.checksum = checksum
        self.committed = committed
        self.on_disk = on_disk
        self.pins = 0  # in flight: stores, loads, spills
        self.held = 0  # operator pins
        self.promoting = False  # being read back from disk into a slot

    @property
    def pinned(self) -> bool:
        return self.pins > 0 or self.held > 0


class ChunkStore:
    def __init__(self, config: StoreConfig, slot_bytes: int, shared: bool = True, *,
                 max_pending_events: int = MAX_PENDING_EVENTS) -> None:
        self.slot_bytes = slot_bytes
        self._pool = SlabPool(slot_bytes, config.cpu_bytes, shared)
        try:
            self._disk = DiskTier(config.disk_dir, config.disk_bytes) if config.disk_dir else None
        except BaseException:
            self._pool.close()
            raise
        self._lock = threading.Lock()
        self._promoted = threading.Condition(self._lock)
        self._chunks: dict[ChunkKey, _Chunk] = {}
        self._lru: OrderedDict[ChunkKey, _Chunk] = OrderedDict()  # committed, in CPU, unpinned; oldest first
        self._events = EventQueue(max_pending_events)
        self._hits = self._misses = self._evictions = self._spills = 0
        self._closed = False
        if self._disk is not None:
            self._adopt_disk_chunks(self._disk)

    @property
    def shm_path(self) -> str | None:
        """The CPU pool's file, for same-host peers (see SlabPool)."""
        return self._pool.shm_path

    def offset(self, slot: int) -> int:
        """Byte offset of `slot` in the file at `shm_path`."""
        return self._pool.offset(slot)

    # -- store -----------------------------------------------------------

    def prepare_store(self, key: ChunkKey) -> StoreTicket | None:
        """Reserve a slot for `key`, evicting (spilling) LRU chunks if needed.

        None: the key is already committed or being stored. StoreFullError:
        every slot is pinned or in flight; nothing was changed.
        """
        with self._lock:
            self._check_open()
            if key in self._chunks:
                return None
            spill = self._make_room(key)  # the common case evicts without I/O, right here
            chunk = self._chunks[key] = _Chunk(key)
            chunk.pins = 1
            if spill is None:
                chunk.slot = self._pool.alloc()
        if chunk.slot is None:
            try:
                self._write_spill(*spill, drop_if_pinned=False)
                slot = self._take_slot(key)
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
        with self._lock:
            if self._closed:
                return False
            if self._chunks.get(ticket.key) is not chunk or chunk.committed or checksum is None:
                raise StoreError(f"store ticket for {key_hex(ticket.key)} was already committed or abandoned")
            _release(ticket.view)
            if not ok:
                del self._chunks[ticket.key]
                self._pool.free(chunk.slot)
                return False
            chunk.length, chunk.checksum, chunk.committed = length, checksum, True
            chunk.pins -= 1
            self._refresh(chunk)
            self._events.put(STORED, ticket.key)
            return True

    # -- load ------------------------------------------------------------

    def prepare_load(self, key: ChunkKey) -> LoadTicket:
        """Pin a committed chunk for reading, bringing it into CPU if it is on disk only.

        Raises ChunkMissingError when the chunk is not held (or its file was
        corrupt: the file is then deleted); StoreFullError when a disk-only
        chunk cannot get a slot. Every call that returns a ticket is a hit,
        every one that raises a miss.
        """
        return self._load(key, count=True)

    def complete_load(self, ticket: LoadTicket) -> None:
        """Unpin; exactly once per prepare_load (a second call raises StoreError)."""
        with self._lock:
            if ticket._done:
                raise StoreError(f"complete_load called twice for chunk {key_hex(ticket.key)}")
            ticket._done = True
            _release(ticket.view)
            if not self._closed:
                ticket._chunk.pins -= 1
                self._refresh(ticket._chunk)

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
            self._refresh(chunk)
            return True

    def unpin(self, key: ChunkKey) -> bool:
        """Drop one operator pin; False if unknown or not pinned by an operator."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None or chunk.held == 0:
                return False
            chunk.held -= 1
            self._refresh(chunk)
            return True

    def remove(self, key: ChunkKey) -> bool:
        """Drop a chunk from every tier; False if unknown, pinned or in flight."""
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed or chunk.pinned:
                return False
            self._forget(chunk, REMOVED)
            return True

    def clear(self, tier: str | None = None) -> list[ChunkKey]:
        """Drop every unpinned committed chunk from `tier` (None: all tiers).

        Returns the keys dropped from that tier. A chunk cleared from one tier
        but still held in the other stays visible ("spilled" when only its disk
        copy is left); one held nowhere any more is "removed".
        """
        if tier is not None and tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS} or None, got {tier!r}")
        with self._lock:
            self._check_open()
            cleared = []
            for chunk in [c for c in self._chunks.values() if c.committed and not c.pinned]:
                in_cpu, in_disk = chunk.slot is not None, chunk.on_disk
                if tier == "cpu" and in_cpu and in_disk:
                    self._drop_from_cpu(chunk)  # still held on disk
                elif tier == "disk" and in_disk and in_cpu:
                    self._disk.remove(chunk.key)  # still held in CPU
                    chunk.on_disk = False
                elif tier is None or (in_cpu if tier == "cpu" else in_disk):
                    self._forget(chunk, REMOVED)
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
                self.complete_load(self._load(key, count=False))
            except StoreError:
                return False
            return True
        return self._move_to_disk(key)

    def take_events(self) -> list[StoreEvent]:
        """Every change since the last call, coalesced per key (see store_events)."""
        with self._lock:
            return self._events.take()

    def stats(self) -> StoreStats:
        with self._lock:
            committed = [c for c in self._chunks.values() if c.committed]
            pool, disk = self._pool, self._disk
            return StoreStats(
                cpu_slots_total=pool.num_slots,
                cpu_slots_used=pool.used_slots,
                cpu_bytes_cap=pool.num_slots * self.slot_bytes,
                cpu_bytes_used=pool.used_slots * self.slot_bytes,
                disk_bytes_cap=disk.cap_bytes if disk is not None else 0,
                disk_bytes_used=disk.used_bytes if disk is not None else 0,
                chunks_cpu=sum(c.slot is not None for c in committed),
                chunks_disk=sum(c.on_disk for c in committed),
                pinned=sum(c.pinned for c in self._chunks.values()),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                spills=self._spills,
                events_dropped=self._events.dropped,
                metadata_bytes_per_chunk=_metadata_bytes_per_chunk(),
            )

    def close(self) -> None:
        """Release the pool and the disk tier's directory lock (its files stay
        for the next start). Afterwards queries see an empty store,
        complete_load and commit_store are no-ops, and every other call raises
        StoreError. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._promoted.notify_all()
            self._chunks.clear()
            self._lru.clear()
            self._pool.close()
            if self._disk is not None:
                self._disk.close()

    # -- private: loading ------------------------------------------------

    def _load(self, key: ChunkKey, count: bool) -> LoadTicket:
        with self._lock:
            self._check_open()
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed:
                self._misses += count
                raise ChunkMissingError(f"chunk {key_hex(key)} is not in this store")
            chunk.pins += 1
            self._refresh(chunk)
            if chunk.slot is not None:
                self._hits += count
                return self._load_ticket(chunk, "cpu")
        try:
            self._promote(chunk)
        except BaseException:
            with self._lock:
                self._misses += count
                if not self._closed:
                    chunk.pins -= 1
                    self._refresh(chunk)
            raise
        with self._lock:
            self._hits += count
            return self._load_ticket(chunk, "disk")

    def _promote(self, chunk: _Chunk) -> None:
        """Read a pinned disk-only chunk into a slot; one reader at a time per chunk."""
        with self._lock:
            while chunk.promoting:
                self._promoted.wait()
            self._check_open()
            if chunk.slot is not None:
                return  # another loader brought it in while we waited
            if self._chunks.get(chunk.key) is not chunk:
                raise ChunkMissingError(f"chunk {key_hex(chunk.key)} is not in this store")
            chunk.promoting = True
        slot = None
        try:
            slot = self._take_slot(chunk.key)
            view = self._pool.view(slot)
            _, checksum = self._disk.read_into(chunk.key, view)
            _release(view)
            if checksum != chunk.checksum:
                self._disk.remove(chunk.key)
                raise ChunkMissingError(f"chunk file for {key_hex(chunk.key)} holds other bytes; deleted")
        except BaseException as exc:
            with self._lock:
                chunk.promoting = False
                self._promoted.notify_all()
                if not self._closed:
                    if slot is not None:
                        self._pool.free(slot)
                    if isinstance(exc, ChunkMissingError) and self._chunks.get(chunk.key) is chunk:
                        chunk.on_disk = False  # the disk tier already dropped the file
                        self._forget(chunk, EVICTED)
            raise
        with self._lock:
            chunk.promoting = False
            self._promoted.notify_all()
            self._check_open()
            chunk.slot = slot

    def _load_ticket(self, chunk: _Chunk, tier: str) -> LoadTicket:
        view = self._pool.view(chunk.slot)[:chunk.length]
        return LoadTicket(chunk.key, chunk.slot, view, chunk.length, chunk.checksum, tier, chunk)

    # -- private: making room --------------------------------------------

    def _take_slot(self, for_key: ChunkKey) -> int:
        """A free slot owned by the caller, evicting LRU chunks for it.

        Called without the lock; spills are written between lock holds.
        Raises StoreFullError when every slot is pinned or in flight.
        """
        while True:
            with self._lock:
                self._check_open()
                spill = self._make_room(for_key)
                if spill is None:
                    return self._pool.alloc()
            self._write_spill(*spill, drop_if_pinned=False)

    def _make_room(self, for_key: ChunkKey) -> tuple[_Chunk, memoryview] | None:
        """Free slots until one is free; or return a victim whose spill must be written first."""
        while self._pool.free_slots == 0:
            if not self._lru:
                raise StoreFullError(
                    f"cannot place chunk {key_hex(for_key)}: all {self._pool.num_slots} CPU slots "
                    "are pinned or in flight")
            victim = next(iter(self._lru.values()))
            if self._disk is None or victim.on_disk:
                self._drop_from_cpu(victim)
                continue
            try:
                for key in self._disk.reserve(victim.length):
                    self._lost_disk_copy(key)
            except StoreFullError:
                self._forget(victim, EVICTED)  # nowhere to spill it
                continue
            victim.pins += 1
            self._refresh(victim)
            return victim, self._pool.view(victim.slot)[:victim.length]
        return None

    def _write_spill(self, chunk: _Chunk, view: memoryview, drop_if_pinned: bool) -> None:
        """Write a chunk reserved on disk, then free its slot unless it got pinned
        meanwhile (`drop_if_pinned`: operator pins do not keep it in CPU)."""
        try:
            self._disk.write_reserved(chunk.key, view, chunk.checksum, pinned=True)
            written = True
        except (OSError, StoreError) as exc:
            log.warning("spilling chunk %s to disk failed: %s", key_hex(chunk.key), exc)
            written = False
        finally:
            _release(view)
        with self._lock:
            if self._closed:
                return
            chunk.pins -= 1
            chunk.on_disk = written
            if chunk.pins > 0 or (chunk.held > 0 and not drop_if_pinned):
                self._refresh(chunk)  # still wanted in CPU
            elif written:
                self._drop_from_cpu(chunk)
            else:
                self._forget(chunk, EVICTED)

    def _move_to_disk(self, key: ChunkKey) -> bool:
        with self._lock:
            self._check_open()
            chunk = self._chunks.get(key)
            if chunk is None or not chunk.committed or self._disk is None or chunk.pins > 0:
                return False
            if chunk.slot is None or chunk.on_disk:
                if chunk.slot is not None:
                    self._drop_from_cpu(chunk)
                return True
            try:
                for victim in self._disk.reserve(chunk.length):
                    self._lost_disk_copy(victim)
            except StoreFullError:
                return False
            chunk.pins += 1
            self._refresh(chunk)
            view = self._pool.view(chunk.slot)[:chunk.length]
        self._write_spill(chunk, view, drop_if_pinned=True)
        with self._lock:
            return chunk.slot is None and chunk.on_disk

    # -- private: bookkeeping (lock held) --------------------------------

    def _refresh(self, chunk: _Chunk) -> None:
        """Make the LRU and the disk tier's pins match the chunk's state."""
        if chunk.committed and chunk.slot is not None and not chunk.pinned:
            if chunk.key not in self._lru:
                self._lru[chunk.key] = chunk  # appended: most recently used
        else:
            self._lru.pop(chunk.key, None)
        if chunk.on_disk:
            (self._disk.pin if chunk.pinned else self._disk.unpin)(chunk.key)

    def _drop_from_cpu(self, chunk: _Chunk) -> None:
        """Free the slot of a chunk with no pins in flight: "spilled" if it has
        a disk copy, else "evicted"."""
        if not chunk.on_disk:
            self._forget(chunk, EVICTED)
            return
        self._pool.free(chunk.slot)
        chunk.slot = None
        self._refresh(chunk)
        self._spills += 1
        self._events.put(SPILLED, chunk.key)

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

    def _forget(self, chunk: _Chunk, kind: str) -> None:
        """Drop a chunk from every tier and report it."""
        del self._chunks[chunk.key]
        self._lru.pop(chunk.key, None)
        if chunk.slot is not None:
            self._pool.free(chunk.slot)
            chunk.slot = None
        if chunk.on_disk:
            self._disk.remove(chunk.key)
            chunk.on_disk = False
        self._evictions += kind == EVICTED
        self._events.put(kind, chunk.key)

    def _adopt_disk_chunks(self, disk: DiskTier) -> None:
        """Index chunks a previous run left on disk; they are reported as stored."""
        for key in disk.keys():
            entry = disk.entry(key)
            if entry is not None and entry.length <= self.slot_bytes:
                self._chunks[key] = _Chunk(key, None, entry.length, entry.checksum, committed=True, on_disk=True)
                self._events.put(STORED, key)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the chunk store is closed")


def _release(view: memoryview) -> None:
    """Invalidate a view handed out, so use after its ticket ends fails loudly.
    A view something else still borrows from stays valid (BufferError)."""
    try:
        view.release()
    except BufferError:
        pass


@cache
def _metadata_bytes_per_chunk() -> int:
    """Bytes of Python objects per committed chunk, measured with sys.getsizeof:
    the record, its key, its checksum int, and its entries in the index dict
    and the LRU OrderedDict (their tables amortized over 1024 entries)."""
    n = 1024
    keys = [ChunkKey(i.to_bytes(16, "little")) for i in range(n)]
    records = {k: _Chunk(k, 0, 1, (1 << 63) + i, True) for i, k in enumerate(keys)}
    lru = OrderedDict(records)
    per_record = sys.getsizeof(records[keys[0]]) + sys.getsizeof(keys[0]) + sys.getsizeof(1 << 63)
    return per_record + (sys.getsizeof(records) + sys.getsizeof(lru)) // n
