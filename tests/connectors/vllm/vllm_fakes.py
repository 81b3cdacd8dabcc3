"""Fakes for the vLLM connector tests: a dict-backed PeerApi and vLLM-shaped objects.

`FakePeer` keeps committed chunks in a dict (shared by reference between
engines in one process when passed around). It can be told to fail keys, to
hold loads until released, and to corrupt chunks, and it counts what happened.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Sequence

import torch

from kvmesh.peers.api import ChunkResult, SaveTicket
from kvmesh.types import ChunkKey


class FakeLoadJob:
    def __init__(self, peer: "FakePeer", keys: Sequence[ChunkKey], reader=None) -> None:
        self._peer = peer
        self._keys = list(keys)
        self._reader = reader if peer.in_place else None
        self._yielded: set[int] = set()
        self._cancelled = threading.Event()

    def results(self, timeout_s: float) -> Iterator[ChunkResult]:
        deadline = time.monotonic() + timeout_s
        gate = self._peer.gate
        if gate is not None:
            gate.wait(max(0.0, min(deadline - time.monotonic(), 30.0)))
        order = range(len(self._keys))
        if self._peer.reverse_order:
            order = reversed(order)
        for i in order:
            late = self._cancelled.is_set() or (gate is not None and not gate.is_set())
            yield self._result(i, fail=late)

    def ready(self) -> list[ChunkResult]:
        if self._peer.gate is not None and not self._peer.gate.is_set():
            return []
        return [self._result(i, fail=False) for i in range(len(self._keys)) if i not in self._yielded]

    @property
    def done(self) -> bool:
        return len(self._yielded) == len(self._keys)

    def cancel(self) -> None:
        self._cancelled.set()

    def _result(self, i: int, fail: bool) -> ChunkResult:
        self._yielded.add(i)
        key = self._keys[i]
        data = None if fail else self._peer.pin(key)
        release = (lambda: self._peer.unpin()) if data is not None else None
        if data is not None and self._reader is not None:
            # As a same-host holder's chunk: read-only bytes, handed over in place.
            consumed = self._reader(i, memoryview(data.numpy().tobytes()))
            self._peer.unpin()
            self._peer.read_in_place += 1
            return ChunkResult(i, key, None, "peer" if consumed else "", consumed=consumed)
        return ChunkResult(i, key, data, "local" if data is not None else "", release)


@dataclass
class FakePeer:
    slot_bytes: int
    chunks: MutableMapping = field(default_factory=dict)  # key bytes -> uint8 tensor
    fail_keys: set[bytes] = field(default_factory=set)
    gate: threading.Event | None = None  # loads wait for it; unset at the deadline = failure
    reverse_order: bool = False
    in_place: bool = False  # hand chunks to a load's reader, as a same-host holder's would be
    read_in_place: int = 0
    last_reader: object = None  # the reader of the last start_load
    namespace: object = None  # as given to open_peer, for tests that hash keys
    lookups: int = 0
    loads_started: int = 0
    chunks_loaded: int = 0
    saves_prepared: int = 0
    saves_committed: int = 0
    pinned: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        with self._lock:
            self.lookups += 1
            n = 0
            for key in keys:
                if bytes(key) not in self.chunks:
                    break
                n += 1
            return n

    def start_load(self, keys: Sequence[ChunkKey], reader=None) -> FakeLoadJob:
        with self._lock:
            self.loads_started += 1
            self.last_reader = reader
        return FakeLoadJob(self, keys, reader)

    def prepare_save(self, key: ChunkKey) -> SaveTicket | None:
        with self._lock:
            if bytes(key) in self.chunks:
                return None
            self.saves_prepared += 1
        return SaveTicket(key, torch.zeros(self.slot_bytes, dtype=torch.uint8), None)

    def commit_save(self, ticket: SaveTicket, ok: bool = True, length: int | None = None) -> None:
        with self._lock:
            if ok:
                self.chunks[bytes(ticket.key)] = ticket.data[:length].clone()
                self.saves_committed += 1

    def pin(self, key: ChunkKey) -> torch.Tensor | None:
        with self._lock:
            if bytes(key) in self.fail_keys or bytes(key) not in self.chunks:
                return None
            self.pinned += 1
            self.chunks_loaded += 1
            return self.chunks[bytes(key)].clone()

    def unpin(self) -> None:
        with self._lock:
            self.pinned -= 1

    def corrupt(self) -> None:
        """Flip every stored chunk to different bytes (a negative control)."""
        with self._lock:
            for key, data in self.chunks.items():
                f = data.view(torch.float32) if data.numel() % 4 == 0 else None
                if f is not None:
                    self.chunks[key] = (f * -1.0 + 0.5).view(torch.uint8).clone()
                else:
                    self.chunks[key] = data ^ 0x5A


class DirChunks(MutableMapping):
    """A chunk dict kept as files in a directory, so that processes can share it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: bytes) -> Path:
        return self.root / f"{bytes(key).hex()}.chunk"

    def __getitem__(self, key: bytes) -> torch.Tensor:
        try:
            return torch.frombuffer(bytearray(self._path(key).read_bytes()), dtype=torch.uint8)
        except FileNotFoundError:
            raise KeyError(key) from None

    def __setitem__(self, key: bytes, data: torch.Tensor) -> None:
        tmp = self.root / f".{bytes(key).hex()}.{os.getpid()}.tmp"
        tmp.write_bytes(data.numpy().tobytes())
        tmp.rename(self._path(key))  # atomic: readers never see half a chunk

    def __delitem__(self, key: bytes) -> None:
        self._path(key).unlink()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._path(key).exists()

    def __iter__(self):
        return (bytes.fromhex(p.stem) for p in self.root.glob("*.chunk"))

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.chunk"))


def fake_request(req_id: str, tokens: list[int], cache_salt: str | None = None,
                 num_tokens: int | None = None,
                 kv_transfer_params: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(request_id=req_id, prompt_token_ids=tokens,
                           num_tokens=len(tokens) if num_tokens is None else num_tokens,
                           cache_salt=cache_salt, kv_transfer_params=kv_transfer_params)


def fake_blocks(block_ids: list[int]) -> SimpleNamespace:
    return SimpleNamespace(get_block_ids=lambda: (list(block_ids),))


def new_req(req_id: str, block_ids: list[int], num_computed_tokens: int) -> SimpleNamespace:
    return SimpleNamespace(req_id=req_id, block_ids=(list(block_ids),),
                           num_computed_tokens=num_computed_tokens)


def sched_output(new=(), cached=(), scheduled: dict[str, int] | None = None,
                 resumed=(), preempted=()) -> SimpleNamespace:
    """A SchedulerOutput-shaped object; `cached` is (req_id, new_block_ids|None, computed)."""
    cached = list(cached)
    return SimpleNamespace(
        scheduled_new_reqs=list(new),
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[c[0] for c in cached],
            new_block_ids=[None if c[1] is None else (list(c[1]),) for c in cached],
            num_computed_tokens=[c[2] for c in cached],
            resumed_req_ids=set(resumed)),
        num_scheduled_tokens=dict(scheduled or {}),
        total_num_scheduled_tokens=sum((scheduled or {}).values()),
        preempted_req_ids=set(preempted),
    )
