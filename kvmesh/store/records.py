"""The chunk store's records: tickets handed to callers, the per-chunk record, stats.

A ticket is the caller's handle on one step of two-step I/O (see `chunk_store`):
a StoreTicket goes to commit_store exactly once, a LoadTicket to
complete_load exactly once. Its view (and tensor) alias a slot of the
store's pool and are released when the ticket ends (`release_view`).

ChunkRecord is the store's own metadata for one chunk: written only by the
index's record table and tier book (see `index`), under the store lock; the
store's other parts read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvmesh.types import ChunkKey


@dataclass(slots=True, eq=False)
class StoreTicket:
    """A reserved slot to fill; pass it to commit_store exactly once."""

    key: ChunkKey
    slot: int
    view: memoryview  # the whole slot, writable
    tensor: torch.Tensor  # uint8, the same memory
    _chunk: ChunkRecord = field(repr=False)


@dataclass(slots=True, eq=False)
class LoadTicket:
    """A pinned chunk to read; pass it to complete_load exactly once."""

    key: ChunkKey
    slot: int
    view: memoryview  # the payload: slot bytes [0:length]
    length: int
    checksum: int  # xxh3_64 of the payload, recorded at commit
    tier: str  # where it was found: "cpu", or "disk" (read back into a slot)
    _chunk: ChunkRecord = field(repr=False)
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
    events_dropped: int  # events lost to the queue bound (see events)
    metadata_bytes_per_chunk: int
    # Per codec name: bytes spills did not write thanks to the disk codec, and
    # bytes by which re-encoding (`recode`, the control API's /compress) shrank held chunks.
    disk_bytes_saved: dict[str, int] = field(default_factory=dict)
    recode_bytes_saved: dict[str, int] = field(default_factory=dict)


class ChunkRecord:
    """Per-chunk metadata. Written only by the index's parts, under the store lock."""

    __slots__ = ("key", "slot", "length", "checksum", "committed", "on_disk", "pins", "held", "promoting",
                 "rewriting")

    def __init__(self, key: ChunkKey, slot: int | None = None, length: int = 0, checksum: int = 0,
                 committed: bool = False, on_disk: bool = False) -> None:
        self.key = key
        self.slot = slot  # None: not in a CPU slot
        # The bytes of the fastest tier holding it: the slot's, else the disk
        # file's (an encoded spill's file may be an envelope of a raw slot).
        self.length = length
        self.checksum = checksum
        self.committed = committed
        self.on_disk = on_disk
        self.pins = 0  # in flight: stores, loads, spills
        self.held = 0  # operator pins
        self.promoting = False  # being read back from disk into a slot
        self.rewriting = False  # its bytes are being replaced (recode): loads wait

    @property
    def pinned(self) -> bool:
        return self.pins > 0 or self.held > 0


def release_view(view: memoryview) -> None:
    """Invalidate a view handed out, so use after its ticket ends fails loudly.
    A view something else still borrows from stays valid (BufferError)."""
    try:
        view.release()
    except BufferError:
        pass
