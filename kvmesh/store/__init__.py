"""The chunk store: a CPU slab pool, an optional disk tier, LRU and pins.

`ChunkStore` (in `chunk_store`) is the one front; its index, records and
tiers are behind it. Contracts and threading: `chunk_store`'s docstring.
"""

from kvmesh.store.chunk_store import ChunkStore

__all__ = ["ChunkStore"]
