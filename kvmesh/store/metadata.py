"""What the chunk store's bookkeeping costs per chunk, in bytes of Python objects.

Reported in StoreStats.metadata_bytes_per_chunk (and by `kvmesh bench store`)
so the overhead of the index can be weighed against the payload it tracks.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from functools import cache

from kvmesh.store.records import ChunkRecord
from kvmesh.types import ChunkKey


@cache
def metadata_bytes_per_chunk() -> int:
    """Bytes of Python objects per committed chunk, measured with sys.getsizeof:
    the record, its key, its checksum int, and its entries in the index dict
    and the LRU OrderedDict (their tables amortized over 1024 entries).
    Measured on the first call, then cached."""
    n = 1024
    keys = [ChunkKey(i.to_bytes(16, "little")) for i in range(n)]
    records = {k: ChunkRecord(k, 0, 1, (1 << 63) + i, True) for i, k in enumerate(keys)}
    lru = OrderedDict(records)
    per_record = sys.getsizeof(records[keys[0]]) + sys.getsizeof(keys[0]) + sys.getsizeof(1 << 63)
    return per_record + (sys.getsizeof(records) + sys.getsizeof(lru)) // n
