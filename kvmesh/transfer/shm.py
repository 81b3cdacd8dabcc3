"""The same-host path: copy chunks straight out of a holder's shared pool.

The holder pins the chunk and tells us its offset in its pool; we map the
pool read-only once per connection (`PoolMapping`, over the descriptor the
holder's pool door handed us: `kvmesh.transfer.pool_door`), copy the bytes
into our destination (on a copy thread, so the loop lands one batch while the
next is copied), then release the pin. No byte crosses a wire, so what could make a copy wrong is the slot
being reused while we read it, and the pin rules that out for as long as it
holds. The holder keeps the pins of a shared pull until the puller's RELEASE
or until SHARED_LEASE_S after the PULL reached it, whatever happens to the
connection; the puller copies only while `lease_deadline` (its own clock at
the PULL's send, plus the lease, less a margin) has not passed when the copy
ends. Durations, not clock readings, cross the process boundary, so the
clocks need not agree.

`verify_checksum=True` (KVMESH_SHM_VERIFY=checksum) also checks every copy
against the holder's checksum, in one pass with the copy
(`kvmesh.native.copy_checksum`), to catch a holder that breaks its pins. It
costs ~40% of the copy's speed on these CPUs (one-pass copy+xxh3 runs at
~0.55x memcpy), which is why it is not the default.

A pull may bring a reader instead of destinations: each chunk's bytes are then
handed to it in place (the vLLM worker scatters them straight into paged KV),
one copy instead of two, under the same lease and checks.

A mapping lives as long as the connection it came with: when the connection
closes (the holder left, died or restarted with a new pool), the client drops
it, and the kernel frees a dead holder's pool once no mapping or view of it
is left (copies in flight hold views until they end).
"""

from __future__ import annotations

import logging
import mmap
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import xxhash

from kvmesh import native
from kvmesh.transfer.reader import ChunkReader

log = logging.getLogger(__name__)

# Part of the protocol: how long a holder keeps a shared pull's chunks pinned
# when the puller sends no RELEASE. Far above any pull's timeout.
SHARED_LEASE_S = 30.0
# Pullers stop copying this long before the lease could end.
LEASE_MARGIN_S = 2.0
# Threads that copy chunks out of holders' pools (see SharedPoolReader).
COPY_THREADS = 2


@lru_cache(maxsize=1)
def host_id() -> str:
    """Identifies this OS instance: same id means shared /dev/shm is reachable."""
    parts = [socket.gethostname()]
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path) as fh:
                parts.append(fh.read().strip())
        except OSError:
            pass
    return xxhash.xxh3_64_hexdigest("|".join(parts).encode())


class PoolMapping:
    """One holder's pool, mapped read-only. Loop thread, except that the
    views `source` returns may be read on the copy threads."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self._mapping: mmap.mmap | None = mapping

    def source(self, offset: int, length: int) -> memoryview | None:
        """The chunk's bytes in the holder's pool, or None if out of its bounds
        (the offset and length come from the holder's frames)."""
        mapping = self._mapping
        if mapping is None or offset < 0 or length < 0 or offset + length > len(mapping):
            return None
        return memoryview(mapping)[offset:offset + length]

    def close(self) -> None:
        """Drop the mapping; views still alive keep it until they go."""
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # a copy still reads a view; it unmaps when that ends
                pass


class SharedCopier:
    """The threads that copy chunks out of holders' pools, and the checks
    that say whether a copy is good.

    `read` and `copy` run on `copier`, so that a pull's bookkeeping on the
    loop (decoding refs, landing and reporting chunks) overlaps the copies
    instead of waiting for them. The copies release the GIL, and `copier` has
    COPY_THREADS threads: one core's copy stops well short of what the memory
    system moves (two threads' np.copyto ran at ~1.7x one thread's here:
    `bench transfer`), and a same-host hit is usually what a request is
    waiting for. A reader may therefore be called from several threads at
    once, for different chunks.
    """

    def __init__(self, verify_checksum: bool = False) -> None:
        self.verify_checksum = verify_checksum
        self.copier = ThreadPoolExecutor(max_workers=COPY_THREADS,
                                         thread_name_prefix="kvmesh-shm-copy")

    @staticmethod
    def lease_deadline(pull_sent: float) -> float:
        """The last `time.monotonic()` at which a copy for a pull sent at `pull_sent` may end."""
        return pull_sent + SHARED_LEASE_S - LEASE_MARGIN_S

    def read(self, reader: ChunkReader, index: int, src: memoryview, checksum: int,
             lease_deadline: float) -> bool:
        """Hand `src` to `reader(index, src)` in place; True only if the read is
        known good: it ended within the lease (and, when verifying, the bytes
        matched the checksum)."""
        # The reader reads first and the hash comes after, as in copy_checksum:
        # bytes that changed under the read fail the hash.
        try:
            ok = reader(index, src) is True
        except Exception:  # noqa: BLE001 - a reader's bug fails its chunk, not the batch
            log.exception("shared-memory chunk reader failed")
            ok = False
        if ok and self.verify_checksum:
            ok = xxhash.xxh3_64_intdigest(src) == checksum
        return ok and time.monotonic() < lease_deadline

    def copy(self, out: memoryview, src: memoryview, checksum: int, lease_deadline: float) -> bool:
        """Copy `src` into `out`; True only if the copy is known good: it ended
        within the lease (and the bytes matched the checksum when verifying)."""
        length = len(src)
        if length > len(out):
            return False
        if self.verify_checksum:
            ok = native.copy_checksum(out, src) == checksum
        else:
            native.copy_stream(out, src)  # streaming stores: ~1.3x np.copyto at 2 MiB
            ok = True
        return ok and time.monotonic() < lease_deadline

    def close(self) -> None:
        self.copier.shutdown(wait=True)  # copies in flight take milliseconds
