"""A peer's inbound connections: the accept loop, admission, the serving tasks.

The accept loop never dies of an OSError. Running out of descriptors,
buffers or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or anything else that
accept raises, is counted (`PeerStats.accept_errors`), logged once per
burst, and retried after a back-off doubling from ACCEPT_BACKOFF_MIN_S to
ACCEPT_BACKOFF_MAX_S: a listener that cannot accept stays readable, so
retrying at once would spin the loop. A connection its client gave up on
before we took it (ECONNABORTED and the like) costs nothing, so the loop
goes straight on. (Before, the first EMFILE ended the loop for good while
/health and gossip still said the peer was fine.)

Every connection, accepted here or by the UCX listener (`serve`), then
passes the `ConnectionGate` by its remote address before a byte of it is
read: beyond a cap it is closed at once (`connections_refused`). Only then is
its stream opened (a TLS handshake, bounded by the timeout), in the
connection's own task. Loop thread only.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Awaitable, Callable

from kvmesh.errors import KvmeshError
from kvmesh.peers.network import Accepted, Endpoint
from kvmesh.peers.stats import PeerStats
from kvmesh.transfer.admission import Admission, ConnectionGate
from kvmesh.transfer.server import END_IDLE, END_SEND_TIMEOUT
from kvmesh.transfer.streams import Stream

log = logging.getLogger(__name__)

ACCEPT_BACKOFF_MIN_S = 0.01
ACCEPT_BACKOFF_MAX_S = 1.0
# accept() errors about one connection only, not about the listener or the process.
ONE_CONNECTION_ERRNOS = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO,
                                   errno.EPERM, errno.EINTR, errno.EAGAIN})
REFUSAL_LOG_INTERVAL_S = 60.0

# serve(stream, admission) -> how the connection ended (kvmesh.transfer.server END_*)
ServeFn = Callable[[Stream, Admission], Awaitable[str]]


class InboundConnections:
    def __init__(self, serve: ServeFn, gate: ConnectionGate, stats: PeerStats,
                 timeout_s: float) -> None:
        self._serve = serve
        self._timeout_s = timeout_s
        self.gate = gate
        self._stats = stats
        self._accepting: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._refusals_logged_at = float("-inf")

    def start(self, endpoint: Endpoint) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(endpoint))

    async def close(self) -> None:
        """Stop accepting and end every connection being served."""
        tasks = [t for t in (self._accepting, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def serve(self, accepted: Accepted) -> None:
        """Serve one inbound connection (refused at once past a cap) until it
        ends. Never raises: a bug is logged and ends this connection only."""
        try:
            await self._serve_admitted(accepted)
        except Exception:  # noqa: BLE001 - one connection's bug must not go unseen
            log.exception("serving an inbound connection from %s failed", accepted.remote or "?")
            accepted.close()

    async def _serve_admitted(self, accepted: Accepted) -> None:
        admission = self.gate.admit(accepted.remote)
        if admission is None:
            accepted.close()
            self._refused()
            return
        try:
            try:
                stream = await accepted.open(self._timeout_s)
            except (KvmeshError, asyncio.TimeoutError) as exc:
                log.info("could not open an inbound connection from %s: %s",
                         accepted.remote or "?", exc)
                accepted.close()
                return
            end = await self._serve(stream, admission)
        finally:
            admission.release()
        if end == END_IDLE:
            self._stats.idle_closed += 1
        elif end == END_SEND_TIMEOUT:
            self._stats.send_timeouts += 1

    async def _accept_loop(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        burst, delay = 0, ACCEPT_BACKOFF_MIN_S
        while True:
            try:
                accepted = await endpoint.accept()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any accept error
                self._stats.accept_errors += 1
                if not isinstance(exc, OSError):
                    log.exception("accepting a connection failed")
                elif exc.errno in ONE_CONNECTION_ERRNOS:
                    log.debug("an inbound connection failed before it was accepted: %s", exc)
                    continue
                if not burst:
                    log.warning("cannot accept connections (%s); retrying with back-off", exc)
                burst += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, ACCEPT_BACKOFF_MAX_S)
                continue
            if burst:
                log.info("accepting connections again after %d failed accepts", burst)
                burst, delay = 0, ACCEPT_BACKOFF_MIN_S
            task = loop.create_task(self.serve(accepted))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _refused(self) -> None:
        self._stats.connections_refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._refusals_logged_at = now
            log.warning("refusing inbound connections past a cap (%s); refused so far by cap: %s",
                        self.gate.caps, self.gate.refused)
