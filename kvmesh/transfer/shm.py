"""The same-host path: copy chunks straight out of a holder's shared pool.

The holder pins the chunk and tells us its offset in its pool file; we map
that file read-only once, copy the bytes into our destination, verify the
checksum (a torn or overwritten read fails it), then release the pin. Copy
and checksum are one pass in C (`kvmesh.native.copy_checksum`): hashing the
destination after a plain copy read every byte from memory twice.
"""

from __future__ import annotations

import mmap
import socket
from functools import lru_cache

import xxhash

from kvmesh.mesh.slab_pool import map_readonly

from kvmesh import native


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


class SharedPoolReader:
    """Read-only mappings of other peers' pools, by file path."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def can_map(self, path: str) -> bool:
        try:
            self._map(path)
            return True
        except (OSError, ValueError):
            return False

    def copy_out(self, path: str, offset: int, length: int, out: memoryview, checksum: int) -> bool:
        """Copy one chunk into `out`; True only if the bytes match the checksum."""
        mapping = self._map(path)
        if offset < 0 or length < 0 or offset + length > len(mapping) or length > len(out):
            return False
        return native.copy_checksum(out, memoryview(mapping)[offset:offset + length]) == checksum

    def forget(self, path: str) -> None:
        mapping = self._maps.pop(path, None)
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # a view is still alive; the GC will unmap it
                pass

    def close(self) -> None:
        for path in list(self._maps):
            self.forget(path)

    def _map(self, path: str) -> mmap.mmap:
        mapping = self._maps.get(path)
        if mapping is None:
            mapping = self._maps[path] = map_readonly(path)
        return mapping
