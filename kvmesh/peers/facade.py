"""The synchronous face of a peer, for engine threads.

`PeerHandle.start(...)` runs a `Peer` on its own event loop in a daemon
thread and implements `kvmesh.peers.api.PeerApi`. Every call crosses into the
loop with `run_coroutine_threadsafe` and waits at most the configured
timeout; a mesh failure never raises out of here, it shows up as a shorter
prefix or a failed chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Iterator, Sequence

import torch

from kvmesh.config import KvmeshConfig
from kvmesh.errors import KvmeshError, StoreError, TransferError
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.peers.api import ChunkResult, SaveTicket
from kvmesh.peers.peer import Peer
from kvmesh.transfer.reader import ChunkReader
from kvmesh.types import ChunkKey

log = logging.getLogger(__name__)


class PeerHandle:
    def __init__(self, peer: Peer, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.peer = peer
        self.slot_bytes = peer.slot_bytes
        self._loop = loop
        self._thread = thread
        self._timeout = peer.config.transfer.timeout_s
        self._local_lookups = _LocalLookupCounts()

    @classmethod
    def start(cls, config: KvmeshConfig, hasher: ChunkHasher, slot_bytes: int) -> "PeerHandle":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="kvmesh-peer", daemon=True)
        thread.start()
        peer = Peer(config, hasher, slot_bytes)
        try:
            asyncio.run_coroutine_threadsafe(peer.start(), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        return cls(peer, loop, thread)

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id

    def call(self, coro, timeout: float | None = None):
        """Run a coroutine on the peer loop and wait (bounded) for its result;
        TransferError when the bound passes first (the coroutine is cancelled)."""
        timeout = self._timeout if timeout is None else timeout
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TransferError(f"the peer did not answer within {timeout}s") from None

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        # All held here, or a small mesh whose whole directory is here: answer
        # on this thread. The hop onto the peer loop and back costs more than
        # the whole lookup.
        matched = self.peer.lookup_prefix_locally(keys)
        if matched is not None:
            self._local_lookups.add(len(keys), matched, self._loop, self.peer.stats)
            return matched
        try:
            return self.call(self.peer.lookup_prefix(list(keys)), self._timeout * 2)
        except KvmeshError as exc:
            log.info("lookup failed, treating as a miss: %s", exc)
            return self.peer.held_prefix(keys)

    def start_load(self, keys: Sequence[ChunkKey],
                   reader: ChunkReader | None = None) -> "PeerLoadJob":
        job = PeerLoadJob(self.peer, list(keys))
        job._future = asyncio.run_coroutine_threadsafe(
            self.peer.load(job.keys, job.on_result, reader), self._loop)
        return job

    def prepare_save(self, key: ChunkKey) -> SaveTicket | None:
        try:
            ticket = self.peer.prepare_save(key)
        except StoreError as exc:
            log.info("cannot save a chunk: %s", exc)
            return None
        if ticket is None:
            return None
        return SaveTicket(key, ticket.tensor, ticket)

    def commit_save(self, ticket: SaveTicket, ok: bool = True, length: int | None = None) -> None:
        self.peer.commit_save(ticket.token, ok, length)

    def clear(self) -> int:
        """Drop every unpinned chunk this peer holds (and withdraw them); how many."""
        return len(self.call(self.peer.clear(), self._timeout * 5))

    def counters(self) -> dict:
        """The peer's counters (PeerStats.as_dict()), read on the loop."""
        return self.call(_read(lambda: self.peer.stats.as_dict()))

    def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.peer.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


class _LocalLookupCounts:
    """Lookups the facade answered itself, folded into the loop-thread-only
    PeerStats within STATS_FOLD_S: waking the loop on every lookup cost about
    as much as the lookup (a self-pipe write, then a GIL hand-off)."""

    STATS_FOLD_S = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()  # engine threads add, the loop thread folds
        self._lookups = self._chunks = self._hits = 0
        self._fold_scheduled = False

    def add(self, chunks: int, hits: int, loop: asyncio.AbstractEventLoop, stats) -> None:
        with self._lock:
            self._lookups += 1
            self._chunks += chunks
            self._hits += hits
            if self._fold_scheduled:
                return
            self._fold_scheduled = True
        loop.call_soon_threadsafe(loop.call_later, self.STATS_FOLD_S, self._fold, stats)

    def _fold(self, stats) -> None:
        with self._lock:
            lookups, chunks, hits = self._lookups, self._chunks, self._hits
            self._lookups = self._chunks = self._hits = 0
            self._fold_scheduled = False
        stats.lookups += lookups
        stats.lookup_chunks += chunks
        stats.lookup_hit_chunks += hits


async def _read(fn):
    return fn()


class PeerLoadJob:
    """Results of one `start_load`, delivered across threads through a queue."""

    def __init__(self, peer: Peer, keys: list[ChunkKey]) -> None:
        self.keys = keys
        self._peer = peer
        self._queue: queue.SimpleQueue[ChunkResult] = queue.SimpleQueue()
        self._delivered = 0
        self._reported: set[int] = set()
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future | None = None

    def on_result(self, index: int, ok: bool, source: str, consumed: bool = False) -> None:
        """Called on the peer loop, once per key; pins the landed chunk for the
        engine. Never reads the disk here: a chunk held only on disk (a local
        disk hit, or one spilled since it landed) is pinned, which reads it
        back into CPU, on a worker thread, which then delivers it."""
        key = self.keys[index]
        if not ok:
            self._deliver(ChunkResult(index, key, None, ""))
        elif consumed:
            self._deliver(ChunkResult(index, key, None, source, consumed=True))
        else:
            try:
                ticket = self._peer.open_loaded_in_cpu(key)
            except StoreError:  # evicted between landing and pinning: a miss
                self._deliver(ChunkResult(index, key, None, ""))
                return
            if ticket is None:
                try:
                    asyncio.get_running_loop().run_in_executor(None, self._pin_from_disk, index,
                                                               source)
                except RuntimeError:  # the peer is shutting down: a miss
                    self._deliver(ChunkResult(index, key, None, ""))
            else:
                self._deliver(self._pinned(index, ticket, source))

    def _pin_from_disk(self, index: int, source: str) -> None:
        """On a worker thread: pin a chunk held on disk only, and deliver it."""
        key = self.keys[index]
        try:
            result = self._pinned(index, self._peer.open_loaded(key), source)
        except StoreError:  # gone meanwhile, or its file was corrupt: a miss
            result = ChunkResult(index, key, None, "")
        self._deliver(result)

    def _pinned(self, index: int, ticket, source: str) -> ChunkResult:
        data = torch.frombuffer(ticket.view, dtype=torch.uint8) if ticket.length else \
            torch.empty(0, dtype=torch.uint8)
        return ChunkResult(index, self.keys[index], data, source,
                           lambda t=ticket: self._peer.close_loaded(t))

    def _deliver(self, result: ChunkResult) -> None:
        """Queue one key's result (any thread); a key already reported (the
        load was given up on) has its pin given back instead."""
        index = result.index
        with self._lock:
            if index in self._reported:
                result.release()
                return
            self._reported.add(index)
        self._queue.put(result)

    @property
    def done(self) -> bool:
        return self._delivered == len(self.keys)

    def ready(self) -> list[ChunkResult]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._delivered += len(out)
        return out

    def results(self, timeout_s: float) -> Iterator[ChunkResult]:
        deadline = time.monotonic() + timeout_s
        while not self.done:
            try:
                result = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.cancel()
                break
            self._delivered += 1
            yield result
        yield from self._fail_rest()

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()

    def _fail_rest(self) -> Iterator[ChunkResult]:
        for result in self.ready():
            yield result
        with self._lock:
            missing = [i for i in range(len(self.keys)) if i not in self._reported]
            self._reported.update(missing)
        for index in missing:
            self._delivered += 1
            yield ChunkResult(index, self.keys[index], None, "")
