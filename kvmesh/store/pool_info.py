"""What a chunk store tells the rest of the peer about its CPU pool.

`PoolInfo` is `ChunkStore.pool`: a read-only face of the store's SlabPool
for the peer that serves it: how many slots it has, whether same-host peers
may map it, a descriptor to hand them, where a slot lies in it. It exposes
neither the slot accounting nor the buffer: slots are handed out only
through the store's tickets.

Threading: any thread; it reads only state fixed when the pool was made
(`share_fd` opens a new descriptor each call).
"""

from __future__ import annotations

from kvmesh.store.slab_pool import SlabPool


class PoolInfo:
    __slots__ = ("_pool",)

    def __init__(self, pool: SlabPool) -> None:
        self._pool = pool

    @property
    def slots(self) -> int:
        """The number of CPU slots (every one `slot_bytes` long)."""
        return self._pool.num_slots

    @property
    def shared(self) -> bool:
        """Whether same-host peers may map the pool (see SlabPool)."""
        return self._pool.shared

    @property
    def proc_path(self) -> str | None:
        """The shared pool as this process sees it (/proc/<pid>/fd/<n>): for
        tests and debugging on this host only; never sent to anyone. None
        for a pool that is not shared."""
        return self._pool.proc_path

    def share_fd(self) -> tuple[int, int]:
        """(a new read-only descriptor of the pool, its size), for a same-host
        peer; the caller closes the descriptor once it is sent. StoreError if
        the pool is not shared or is closed."""
        return self._pool.share_fd(), self._pool.size

    def offset(self, slot: int) -> int:
        """Byte offset of `slot` in the pool (and in the shared pool's file)."""
        return self._pool.offset(slot)
