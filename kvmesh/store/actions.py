"""Operator actions on the chunk store: pins, remove, clear, move.

What an operator (the control API) does to a store by hand, beside the
engine's two-step I/O. `ChunkStore` exposes each under the same name and
states its contract; this module composes them from the operations of the
index's parts (`index`) and the tier mover, and is reached only through the store.

Threading: pin, unpin, remove and clear take the store lock once, briefly
(clear walks every record: O(chunks)). move does disk I/O outside the lock
and blocks on it: with a disk tier, call it from a worker thread.
"""

from __future__ import annotations

from kvmesh.store.index import ChunkIndex
from kvmesh.store.tiers import TierMover
from kvmesh.types import ChunkKey

TIERS = ("cpu", "disk")


class OperatorActions:
    """The store's pin, unpin, remove, clear and move; see the store's docstrings."""

    def __init__(self, index: ChunkIndex, tiers: TierMover) -> None:
        self._records = index.records
        self._book = index.book
        self._lock = index.locked()
        self._tiers = tiers

    def pin(self, key: ChunkKey) -> bool:
        rec = self._records
        with self._lock:
            chunk = rec.committed(key)
            if chunk is None:
                return False
            rec.operator_pin(chunk)
            return True

    def unpin(self, key: ChunkKey) -> bool:
        rec = self._records
        with self._lock:
            chunk = rec.record(key)
            if chunk is None or chunk.held == 0:
                return False
            rec.operator_unpin(chunk)
            return True

    def remove(self, key: ChunkKey) -> bool:
        with self._lock:
            chunk = self._records.committed(key)
            if chunk is None or chunk.pinned:
                return False
            self._book.remove(chunk)
            return True

    def clear(self, tier: str | None) -> list[ChunkKey]:
        """The keys dropped from `tier` (None: every tier). A chunk still held
        in the other tier keeps its record; one held nowhere is "removed"."""
        if tier is not None and tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS} or None, got {tier!r}")
        rec, book = self._records, self._book
        with self._lock:
            rec.check_open()
            cleared = []
            for chunk in rec.unpinned_committed():
                in_cpu, in_disk = chunk.slot is not None, chunk.on_disk
                if tier == "cpu" and in_cpu and in_disk:
                    book.drop_from_cpu(chunk)  # still held on disk: "spilled"
                elif tier == "disk" and in_disk and in_cpu:
                    book.drop_from_disk(chunk)  # still held in CPU
                elif tier is None or (in_cpu if tier == "cpu" else in_disk):
                    book.remove(chunk)
                else:
                    continue
                cleared.append(chunk.key)
            return cleared

    def move(self, key: ChunkKey, tier: str) -> bool:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        if tier == "cpu":
            return self._tiers.move_to_cpu(key)
        return self._tiers.move_to_disk(key)
