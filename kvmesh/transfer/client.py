"""One outgoing connection to a remote peer, multiplexing many requests.

Replies are matched to requests by id. A pull streams its chunks back in any
order; where they land, how each is verified and reported is the pull
receiver's job (`kvmesh.transfer.pull_receiver`), which this connection
owns and hands every frame of a pull. Every request is bounded by the
caller's deadline; a timed-out or broken connection is closed whole, so no
late payload can write into a buffer the caller has already given back.
Every failure comes out as a `KvmeshError`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Callable

from kvmesh.errors import HandshakeError, KvmeshError, RemoteProtocolError, TransferError
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer import limits
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.deadline import within
from kvmesh.transfer.pull_receiver import DestFn, DoneFn, PullReceiver, await_progress
from kvmesh.transfer.reader import ChunkReader
from kvmesh.transfer.shm import PoolMapping, SharedCopier
from kvmesh.transfer.streams import Stream
from kvmesh.types import ChunkKey, PeerId

# RELEASEs waiting to be sent on one connection; past this many the holder's
# lease timers unpin the rest (a holder that stops reading cannot grow it).
MAX_PENDING_RELEASES = 256


@dataclass
class RemoteInfo:
    """What the server told us: its WELCOME, then (after AUTH) its INFO."""

    peer_id: PeerId
    version: int
    host_id: str
    ucx_port: int
    control_port: int
    pool_token: bytes  # b"": it shares no pool with us


class PeerClient:
    """Use `PeerClient.open(...)`; then `request`, `notify`, `pull`, `close`."""

    def __init__(self, conn: FramedConnection, remote: RemoteInfo, max_inflight: int) -> None:
        self.remote = remote
        self._conn = conn
        self._pulls = PullReceiver(remote.peer_id)
        self._on_close: list[Callable[[], None]] = []
        self._to_release: set[int] = set()  # leases whose RELEASE is yet to be sent
        self._releaser: asyncio.Task | None = None  # sends them, one at a time
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._slots = asyncio.Semaphore(max_inflight)
        conn.set_sink(self._pulls.sink)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        self.transport = conn.stream.kind

    @classmethod
    async def open(cls, stream: Stream, hello: f.Hello, info: f.Info, namespace: bytes,
                   secret: bytes | None, timeout_s: float, max_inflight: int,
                   dialed: PeerId | None = None) -> "PeerClient":
        """Handshake on a fresh stream (HELLO, WELCOME, AUTH, then INFO both
        ways); closes it and raises HandshakeError on refusal, or when the
        server answers as another peer than `dialed`."""
        conn = FramedConnection(stream)
        try:
            remote = await within(_handshake(conn, hello, info, namespace, secret), timeout_s)
            if dialed is not None and remote.peer_id != dialed:
                raise HandshakeError(f"dialled {dialed}, answered as {remote.peer_id!r}")
        except asyncio.TimeoutError:
            conn.close()
            raise HandshakeError(f"no handshake within {timeout_s}s") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, remote, max_inflight)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Have `callback()` run once, when this connection closes."""
        self._on_close.append(callback)

    def use_pool(self, mapping: PoolMapping, copier: SharedCopier) -> None:
        """Pull through the holder's pool from now on (its door granted it)."""
        self._pulls.use_pool(mapping, copier)
        self.transport = "shm"

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def fresh(self) -> bool:
        """Open, and in use or used within CLIENT_IDLE_S. A connection idle
        longer than that is about to be closed by its server (the idle
        timeout, `kvmesh.transfer.limits`): dial again rather than race that
        close with a request."""
        if self._conn.closed:
            return False
        if self._replies or self._pulls.in_flight:
            return True
        return time.monotonic() - self._conn.last_active < limits.CLIENT_IDLE_S

    async def request(self, make: Callable[[int], f.Frame], timeout_s: float) -> f.Frame:
        """Send a request built around a fresh id and wait for its reply, which
        is of the request's reply type (`frames.REPLY_TO`) or raises: an ERROR
        as TransferError, any other frame as RemoteProtocolError."""
        async with self._slots:
            rid = next(self._ids)
            fut = asyncio.get_running_loop().create_future()
            self._replies[rid] = fut
            request = make(rid)
            try:
                await within(self._send_and_wait(request, fut), timeout_s)
                reply = fut.result()
            except asyncio.TimeoutError:
                self.close()
                raise TransferError(f"{self.remote.peer_id}: no reply within {timeout_s}s") from None
            finally:
                self._replies.pop(rid, None)
            want = f.REPLY_TO[type(request)]
            if not isinstance(reply, want):
                self.close()
                raise RemoteProtocolError(f"{self.remote.peer_id} answered a {type(request).__name__} "
                                          f"with {type(reply).__name__}")
            return reply

    async def notify(self, frame: f.Frame, timeout_s: float) -> None:
        """Send a one-way frame (advertise, withdraw)."""
        try:
            await within(self._conn.send(frame), timeout_s)
        except asyncio.TimeoutError:
            self.close()
            raise TransferError(f"{self.remote.peer_id}: send timed out") from None

    async def pull(self, keys: tuple[ChunkKey, ...], dest: DestFn, done: DoneFn, timeout_s: float,
                   stall_s: float | None = None, reader: ChunkReader | None = None) -> None:
        """Fetch chunks; `done` is called once per key (False for a miss or failure).

        With `reader`, a pull through the holder's shared pool hands each
        chunk's bytes to `reader(index, src)` on a copy thread, in place,
        instead of copying them into `dest`; `src` is valid only during the
        call. Other transports ignore it (their bytes must land somewhere).

        The pull gives up after `timeout_s` in all, or as soon as `stall_s`
        passes without a single chunk landing: a holder that died without its
        connection noticing (UCX can miss that) costs one stall, not the budget.
        """
        async with self._slots:
            rid = next(self._ids)
            state = self._pulls.begin(rid, keys, dest, done, reader,
                                      lambda lease: self._release_soon(lease, timeout_s))
            try:
                await within(self._conn.send(f.Pull(rid, keys, self._pulls.shares_pool)), timeout_s)
                await await_progress(state, timeout_s, stall_s or timeout_s)
            except (asyncio.TimeoutError, KvmeshError):
                # Close first: once the reader is gone no payload can land late.
                await self.aclose()
            except asyncio.CancelledError:
                # The same when the caller gives up: a payload may be landing in
                # one of this pull's slots, which the finally below frees.
                self.close()
                raise
            finally:
                # Landed chunks are reported, copies drained, then the rest
                # fail; the pull's leases still held go to the RELEASE sender.
                await self._pulls.end(rid, state)

    def _release_soon(self, lease: int, timeout_s: float) -> None:
        """Send RELEASE for one lease soon (from a copy's callback, on the loop).

        The lease ids come from the holder: one sender per connection, and at
        most MAX_PENDING_RELEASES waiting, so a holder that sends refs frames
        and stops reading cannot make us pile up tasks. A lease not released
        here is unpinned by the holder's own timer.
        """
        if self.closed or len(self._to_release) >= MAX_PENDING_RELEASES:
            return
        self._to_release.add(lease)
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.get_running_loop().create_task(self._send_releases(timeout_s))

    async def _send_releases(self, timeout_s: float) -> None:
        while self._to_release and not self.closed:
            lease = self._to_release.pop()
            try:
                await self.notify(f.Release(lease), timeout_s)
            except KvmeshError:  # the connection is going: the holder's timers unpin
                self._to_release.clear()

    def close(self) -> None:
        self._reader.cancel()
        self._closed(TransferError(f"{self.remote.peer_id}: connection closed"))

    def _closed(self, why: Exception) -> None:
        """Everything a closed connection ends: requests, pulls, RELEASEs, the pool mapping."""
        self._conn.close()
        self._to_release.clear()
        if self._releaser is not None:
            self._releaser.cancel()
        self._fail_all(why)
        self._pulls.close_pool()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    async def aclose(self) -> None:
        self.close()
        try:
            await self._reader
        except BaseException:
            pass

    # ---- internals ----------------------------------------------------------

    async def _send_and_wait(self, frame: f.Frame, fut: asyncio.Future) -> None:
        await self._conn.send(frame)
        await fut

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._conn.read_frame()
                if not self._pulls.take(frame):
                    self._on_reply(frame)
        except KvmeshError as exc:  # closed, reset, or a protocol error
            self._closed(TransferError(f"{self.remote.peer_id}: {exc}"))
        except asyncio.CancelledError:
            raise

    def _on_reply(self, frame: f.Frame) -> None:
        rid = getattr(frame, "request_id", None)
        fut = self._replies.get(rid)
        if fut is not None and not fut.done():
            if isinstance(frame, f.Error):
                fut.set_exception(TransferError(f"{self.remote.peer_id}: {frame.message}"))
            else:
                fut.set_result(frame)

    def _fail_all(self, exc: Exception) -> None:
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pulls.fail_all(exc)


async def _handshake(conn: FramedConnection, hello: f.Hello, info: f.Info, namespace: bytes,
                     secret: bytes | None) -> RemoteInfo:
    await conn.send(hello)
    welcome = await _expect(conn, f.Welcome)
    handshake.check_version(welcome.version)
    handshake.check_namespace(namespace, welcome.namespace)
    handshake.check_proof(secret, welcome.proof, b"server", hello.nonce, welcome.nonce)
    await conn.send(f.Auth(handshake.proof(secret, b"client", welcome.nonce, hello.nonce)))
    await conn.send(info)
    theirs = await _expect(conn, f.Info)  # sent only once our AUTH checked out
    return RemoteInfo(PeerId(welcome.peer_id), welcome.version, theirs.host_id, theirs.ucx_port,
                      theirs.control_port, theirs.pool_token)


async def _expect(conn: FramedConnection, kind: type) -> f.Frame:
    frame = await conn.read_frame()
    if isinstance(frame, f.Error):
        raise HandshakeError(f"refused: {frame.message}")
    if not isinstance(frame, kind):
        raise HandshakeError(f"expected {kind.__name__.upper()}, got {type(frame).__name__}")
    return frame
