"""The chunk store's counters and its StoreStats snapshots.

`StoreCounters` are the running hit/miss/eviction/spill counts; `snapshot`
builds a StoreStats from them, the records and both tiers. Only the index
calls either, under the store lock (see `index`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from kvmesh.store.disk_tier import DiskTier
from kvmesh.store.metadata import metadata_bytes_per_chunk
from kvmesh.store.records import ChunkRecord, StoreStats
from kvmesh.store.slab_pool import SlabPool


@dataclass(slots=True)
class StoreCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # chunks no longer held in any tier for lack of room
    spills: int = 0  # chunks moved from CPU to disk


def snapshot(records: Collection[ChunkRecord], pool: SlabPool, disk: DiskTier | None, slot_bytes: int,
             counters: StoreCounters, events_dropped: int) -> StoreStats:
    """StoreStats of `records` (every record, in flight included); O(records)."""
    committed = [c for c in records if c.committed]
    return StoreStats(
        cpu_slots_total=pool.num_slots,
        cpu_slots_used=pool.used_slots,
        cpu_bytes_cap=pool.num_slots * slot_bytes,
        cpu_bytes_used=pool.used_slots * slot_bytes,
        disk_bytes_cap=disk.cap_bytes if disk is not None else 0,
        disk_bytes_used=disk.used_bytes if disk is not None else 0,
        chunks_cpu=sum(c.slot is not None for c in committed),
        chunks_disk=sum(c.on_disk for c in committed),
        pinned=sum(c.pinned for c in records),
        hits=counters.hits,
        misses=counters.misses,
        evictions=counters.evictions,
        spills=counters.spills,
        events_dropped=events_dropped,
        metadata_bytes_per_chunk=metadata_bytes_per_chunk(),
    )
