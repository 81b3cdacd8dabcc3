"""How long an engine's kvmesh loads take: a timing wrapper around its peer.

`LoadTimer.install()` puts a wrapper around the peer the vLLM connector opens
(through `peer_factory.set_factories`, its documented hook). Each load job
is timed from `start_load` until the connector has taken its last result,
i.e. pull, decode and scatter of every chunk: the time a hit spends getting
its KV. Nothing else about the peer changes. Call `install` in the engine's
process before the engine starts; `take()` returns the loads finished since
the last call. Thread-safe: loads finish on the connector's load threads.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from kvmesh.connectors.vllm import peer_factory


class LoadTimer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: list[dict] = []

    @classmethod
    def install(cls) -> "LoadTimer":
        from kvmesh.peers.embedded import open_lookup_client, open_peer  # noqa: PLC0415

        timer = cls()
        peer_factory.set_factories(open_peer=lambda *a: _TimedPeer(open_peer(*a), timer),
                                   open_lookup_client=open_lookup_client)
        return timer

    def take(self) -> list[dict]:
        """[{"seconds", "chunks", "bytes"}] of the loads finished since the last call;
        chunks and bytes count what landed (bytes as received: envelopes stay short)."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def record(self, seconds: float, chunks: int, nbytes: int) -> None:
        with self._lock:
            self._done.append({"seconds": seconds, "chunks": chunks, "bytes": nbytes})


class _TimedPeer:
    """The connector's peer, its load jobs timed; every other call passes through."""

    def __init__(self, inner, timer: LoadTimer) -> None:
        self._inner = inner
        self._timer = timer
        self.slot_bytes = inner.slot_bytes

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def start_load(self, keys, reader=None):
        start = time.perf_counter()
        job = self._inner.start_load(keys, reader)
        inner_results = job.results
        timer = self._timer

        def results(timeout_s: float) -> Iterator:
            chunks = nbytes = 0
            try:
                for result in inner_results(timeout_s):
                    if result.data is not None:
                        chunks += 1
                        nbytes += result.data.numel()
                    elif result.consumed:
                        chunks += 1
                    yield result
            finally:  # after the consumer's work on the last result
                timer.record(time.perf_counter() - start, chunks, nbytes)

        job.results = results
        return job
