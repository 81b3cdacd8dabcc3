"""A dict-backed `MeshPeer` for the backend's unit tests.

Committed chunks live in `chunks` (key bytes -> uint8 tensor). Keys in
`fail_keys` fail to load (a dead holder or a checksum mismatch look the same
to the backend); keys in `stall_keys` never land, so they fail at the
deadline. Every pin taken by a load is counted, to check they are released.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from kvmesh.peers.api import ChunkResult, SaveTicket
from kvmesh.types import ChunkKey


class FakeJob:
    def __init__(self, peer: "FakeMeshPeer", keys: Sequence[ChunkKey]) -> None:
        self._peer = peer
        self.keys = list(keys)
        self.cancelled = False

    def results(self, timeout_s: float) -> Iterator[ChunkResult]:
        deadline = time.monotonic() + timeout_s
        stalled = []
        for i in reversed(range(len(self.keys))):  # land out of order, like the mesh
            if bytes(self.keys[i]) in self._peer.stall_keys:
                stalled.append(i)
                continue
            yield self._result(i)
        if stalled:
            time.sleep(max(0.0, deadline - time.monotonic()))
            self.cancelled = True
            for i in stalled:
                yield ChunkResult(i, self.keys[i], None, "")

    def ready(self) -> list[ChunkResult]:
        return []

    @property
    def done(self) -> bool:
        return False

    def cancel(self) -> None:
        self.cancelled = True

    def _result(self, i: int) -> ChunkResult:
        key = bytes(self.keys[i])
        data = self._peer.pin(key)
        if data is None:
            return ChunkResult(i, self.keys[i], None, "")
        return ChunkResult(i, self.keys[i], data, "local", self._peer.unpin)


@dataclass
class FakeMeshPeer:
    slot_bytes: int
    chunks: dict = field(default_factory=dict)
    fail_keys: set = field(default_factory=set)
    stall_keys: set = field(default_factory=set)
    full: bool = False  # prepare_save finds no free slot
    namespace: object = None
    lookups: int = 0
    pins: int = 0
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        with self._lock:
            self.lookups += 1
            n = 0
            while n < len(keys) and bytes(keys[n]) in self.chunks:
                n += 1
            return n

    def start_load(self, keys: Sequence[ChunkKey]) -> FakeJob:
        return FakeJob(self, keys)

    def prepare_save(self, key: ChunkKey) -> SaveTicket | None:
        if self.full or bytes(key) in self.chunks:
            return None
        return SaveTicket(key, torch.full((self.slot_bytes,), 0xEE, dtype=torch.uint8), None)

    def commit_save(self, ticket: SaveTicket, ok: bool = True) -> None:
        if ok:
            with self._lock:
                self.chunks[bytes(ticket.key)] = ticket.data.clone()

    def pin(self, key: bytes) -> torch.Tensor | None:
        with self._lock:
            if key in self.fail_keys or key not in self.chunks:
                return None
            self.pins += 1
            return self.chunks[key].clone()

    def unpin(self) -> None:
        with self._lock:
            self.pins -= 1

    def clear(self) -> int:
        with self._lock:
            n = len(self.chunks)
            self.chunks.clear()
            return n

    def close(self) -> None:
        self.closed = True


def fake_opener(peers: list, **overrides):
    """An `open_peer` that makes a FakeMeshPeer per call and records it in `peers`."""

    def open_peer(config, namespace, slot_bytes, engine_id, tp_rank):
        peer = FakeMeshPeer(slot_bytes=slot_bytes, namespace=namespace, **overrides)
        peers.append(peer)
        return peer

    return open_peer
