"""Consistent hashing with virtual nodes.

Each peer places `vnodes` points on a 64-bit circle; a key belongs to the first
`r` distinct peers clockwise from its own point. Adding or removing one of N
peers moves about 1/N of the keys. The ring is a plain value: no I/O, no
clocks, and the point hash can be injected for tests.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable

import xxhash

from kvmesh.types import ChunkKey, PeerId

PointHash = Callable[[bytes], int]


def default_point_hash(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


class HashRing:
    def __init__(self, peers: Iterable[PeerId] = (), vnodes: int = 128,
                 point_hash: PointHash = default_point_hash) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._hash = point_hash
        self._points: list[int] = []
        self._owners: list[PeerId] = []
        self._peers: set[PeerId] = set()
        for peer in peers:
            self.add(peer)

    @property
    def peers(self) -> frozenset[PeerId]:
        return frozenset(self._peers)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def copy(self) -> "HashRing":
        """An independent ring with the same peers and points (no rehashing)."""
        other = HashRing(vnodes=self.vnodes, point_hash=self._hash)
        other._points, other._owners, other._peers = (list(self._points), list(self._owners),
                                                      set(self._peers))
        return other

    def add(self, peer: PeerId) -> bool:
        """Place a peer's virtual nodes; False if it was already on the ring."""
        if peer in self._peers:
            return False
        self._peers.add(peer)
        for i in range(self.vnodes):
            point = self._hash(f"{peer}#{i}".encode())
            at = bisect.bisect_left(self._points, point)
            self._points.insert(at, point)
            self._owners.insert(at, peer)
        return True

    def remove(self, peer: PeerId) -> bool:
        """Take a peer's virtual nodes off; False if it was not on the ring."""
        if peer not in self._peers:
            return False
        self._peers.discard(peer)
        keep = [(p, o) for p, o in zip(self._points, self._owners) if o != peer]
        self._points = [p for p, _ in keep]
        self._owners = [o for _, o in keep]
        return True

    def owners(self, key: ChunkKey | bytes, r: int) -> list[PeerId]:
        """The first `r` distinct peers clockwise from the key (fewer if the ring is smaller)."""
        if not self._points:
            return []
        want = min(r, len(self._peers))
        start = bisect.bisect_right(self._points, self.key_point(key))
        found: list[PeerId] = []
        n = len(self._points)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner not in found:
                found.append(owner)
                if len(found) == want:
                    break
        return found

    def key_point(self, key: ChunkKey | bytes) -> int:
        # Keys are already uniform hashes: their first 8 bytes are their point.
        return int.from_bytes(bytes(key[:8]), "little")

    def shares(self) -> dict[PeerId, float]:
        """Fraction of the circle each peer owns as primary."""
        if not self._points:
            return {}
        span = 1 << 64
        out = {peer: 0.0 for peer in self._peers}
        # The arc ending at point i belongs to that point's owner.
        for i, owner in enumerate(self._owners):
            prev = self._points[i - 1] if i else self._points[-1] - span
            out[owner] += (self._points[i] - prev) / span
        return out
