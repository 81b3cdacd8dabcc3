"""Which chunks may make room: the CPU LRU, and the disk tier's pins.

A committed chunk in a CPU slot with no pins is in the LRU, least recently
used first; the disk copy of a pinned chunk is pinned in the disk tier. So
neither tier evicts a chunk in use, and CPU room is made in LRU order.
`refresh(chunk)` brings both in line with a record after any change to its
pins, slot, disk copy or commit.

Owned and called only by the store's index, under the store lock.
"""

from __future__ import annotations

from collections import OrderedDict

from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.records import ChunkRecord
from kvmesh.types import ChunkKey


class EvictionOrder:
    __slots__ = ("_disk", "_lru")

    def __init__(self, disk: DiskTier | None) -> None:
        self._lru: OrderedDict[ChunkKey, ChunkRecord] = OrderedDict()  # committed, in CPU, unpinned
        self._disk = disk

    def refresh(self, chunk: ChunkRecord) -> None:
        """Make the LRU and the disk tier's pins match the chunk's state."""
        if chunk.committed and chunk.slot is not None and not chunk.pinned:
            if chunk.key not in self._lru:
                self._lru[chunk.key] = chunk  # appended: most recently used
        else:
            self._lru.pop(chunk.key, None)
        if chunk.on_disk:
            (self._disk.pin if chunk.pinned else self._disk.unpin)(chunk.key)

    def oldest(self) -> ChunkRecord | None:
        """The least recently used unpinned chunk in CPU; None if there is none."""
        return next(iter(self._lru.values()), None)

    def discard(self, key: ChunkKey) -> None:
        """Forget a chunk leaving every tier (its disk file goes with it)."""
        self._lru.pop(key, None)

    def clear(self) -> None:
        self._lru.clear()
