"""One outgoing connection to a remote peer, multiplexing many requests.

Replies are matched to requests by id. A pull streams its chunks back in any
order; each lands in a destination buffer chosen by the caller (a store
slot) and is verified before it is reported: against its checksum when it
came over a stream (by the decoder, piece by piece as it lands; see
`kvmesh.transfer.codec`), against the holder's pin lease when it was copied out of
the holder's shared pool (see `kvmesh.transfer.shm`). Every
request is bounded by the caller's deadline; a timed-out or broken
connection is closed whole, so no late payload can write into a buffer the
caller has already given back. Each chunk of a pull moves through the
states of `pull_states` (waiting, landing, landed, copying, done); every
failure comes out as a `KvmeshError`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from kvmesh.errors import HandshakeError, KvmeshError, RemoteProtocolError, TransferError
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer import limits
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.deadline import within
from kvmesh.transfer.pull_states import ChunkState, PullTable
from kvmesh.transfer.reader import ChunkReader
from kvmesh.transfer.shm import COPY_THREADS, PoolMapping, SharedCopier
from kvmesh.transfer.streams import Stream
from kvmesh.types import ChunkKey, PeerId

# dest(index, length) -> writable buffer for that chunk, or None to drop it.
DestFn = Callable[[int, int], "memoryview | None"]
# done(index, ok, length, checksum) -> None; called exactly once per key of a pull.
DoneFn = Callable[[int, bool, int, int], None]
# Chunks that landed over a stream are reported (`done`) in batches: when the
# read loop is about to wait for the socket, or once this many bytes are
# waiting (a few ms of a stream). One report per chunk woke the engine thread
# per chunk, and each wake-up took the GIL from the loop mid-stream: batches
# of 16 MiB cut the puller's CPU per 256 MiB pulled from 0.13 s to 0.10 s.
REPORT_BATCH_BYTES = 16 << 20
_WAITING, _LANDING, _LANDED, _COPYING, _DONE = (
    ChunkState.WAITING, ChunkState.LANDING, ChunkState.LANDED, ChunkState.COPYING, ChunkState.DONE)




@dataclass
class _PullState:
    keys: tuple[ChunkKey, ...]
    dest: DestFn
    done: DoneFn
    table: PullTable
    finished: asyncio.Future
    lease_deadline: float = 0.0  # time.monotonic() by which shared copies must end
    copies: set[asyncio.Future] = field(default_factory=set)  # copy batches in flight
    leases: set[int] = field(default_factory=set)  # the holder's lease ids, to RELEASE
    reader: ChunkReader | None = None  # consumes shared chunks in place of `dest`

    def at(self, index: int) -> ChunkState | None:
        """The chunk's state, or None for an index no key of this pull has
        (the holder's frames are not trusted to stay in range)."""
        return self.table[index] if 0 <= index < len(self.table) else None

    def resolve(self, index: int, ok: bool, length: int, checksum: int = 0) -> None:
        """Report the chunk (once: a chunk already done is left as it is)."""
        if self.at(index) in (None, _DONE):
            return
        self.table.move(index, _DONE)
        self.done(index, ok, length, checksum)
        if not self.table.open and not self.finished.done():
            self.finished.set_result(None)


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
        self._shm: SharedCopier | None = None  # set when pulls use the holder's shared pool
        self._pool_map: PoolMapping | None = None
        self._on_close: list[Callable[[], None]] = []
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._pulls: dict[int, _PullState] = {}
        self._landed: list[tuple[_PullState, f.Chunk]] = []  # to report, see REPORT_BATCH_BYTES
        self._landed_bytes = 0
        self._slots = asyncio.Semaphore(max_inflight)
        conn.set_sink(self._sink)
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
        self._pool_map, self._shm = mapping, copier
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
        if self._replies or self._pulls:
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
            state = _PullState(keys, dest, done, PullTable(len(keys)),
                               asyncio.get_running_loop().create_future(),
                               SharedCopier.lease_deadline(time.monotonic()), reader=reader)
            self._pulls[rid] = state
            try:
                await within(self._conn.send(f.Pull(rid, keys, self._pool_map is not None)), timeout_s)
                await self._await_progress(state, timeout_s, stall_s or timeout_s)
            except (asyncio.TimeoutError, KvmeshError):
                # Close first: once the reader is gone no payload can land late.
                await self.aclose()
            except asyncio.CancelledError:
                # The same when the caller gives up: a payload may be landing in
                # one of this pull's slots, which the finally below frees.
                self.close()
                raise
            finally:
                self._pulls.pop(rid, None)
                self._report_landed()  # landed and verified: not failures
                await _drain(state.copies)  # they write into slots failing frees
                for index in state.table.not_done():
                    state.resolve(index, False, 0)
                if state.leases and not self.closed:
                    await self._release(state.leases, timeout_s)

    def close(self) -> None:
        self._reader.cancel()
        self._closed(TransferError(f"{self.remote.peer_id}: connection closed"))

    def _closed(self, why: Exception) -> None:
        """Everything a closed connection ends: requests, pulls, the pool mapping."""
        self._conn.close()
        self._fail_all(why)
        if self._pool_map is not None:
            self._pool_map.close()
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

    @staticmethod
    async def _await_progress(state: _PullState, timeout_s: float, stall_s: float) -> None:
        """Wait for the pull to finish; raise TimeoutError on the budget or a stall."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not state.finished.done():
            left, window = state.table.open, min(stall_s, deadline - loop.time())
            if window <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait({state.finished}, timeout=window)
            if not state.finished.done() and state.table.open == left:
                raise asyncio.TimeoutError  # nothing landed for a whole window
        state.finished.result()  # re-raise a connection failure

    async def _send_and_wait(self, frame: f.Frame, fut: asyncio.Future) -> None:
        await self._conn.send(frame)
        await fut

    async def _release(self, leases: set[int], timeout_s: float) -> None:
        try:
            for lease in sorted(leases):
                await self.notify(f.Release(lease), timeout_s)
        except KvmeshError:
            pass

    def _sink(self, chunk: f.Chunk) -> memoryview | None:
        state = self._pulls.get(chunk.request_id)
        if state is None or state.at(chunk.index) is not _WAITING:
            return None
        buf = state.dest(chunk.index, chunk.length)
        if buf is not None:
            state.table.move(chunk.index, _LANDING)
        return buf

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._conn.read_frame()
                if isinstance(frame, f.ChunkRefs):
                    self._on_chunk_refs(frame)
                else:
                    self._dispatch(frame)
        except KvmeshError as exc:  # closed, reset, or a protocol error
            self._closed(TransferError(f"{self.remote.peer_id}: {exc}"))
        except asyncio.CancelledError:
            raise

    def _dispatch(self, frame: f.Frame) -> None:
        if isinstance(frame, f.Chunk):
            self._on_chunk(frame)
        elif isinstance(frame, f.Miss):
            state = self._pulls.get(frame.request_id)
            if state and state.at(frame.index) is _WAITING:  # not one already on its way
                state.resolve(frame.index, False, 0)
        elif isinstance(frame, f.Error) and frame.request_id in self._pulls:
            state = self._pulls[frame.request_id]  # the holder refused the whole pull
            if not state.finished.done():
                state.finished.set_exception(TransferError(f"{self.remote.peer_id}: {frame.message}"))
        else:
            rid = getattr(frame, "request_id", None)
            fut = self._replies.get(rid)
            if fut is not None and not fut.done():
                if isinstance(frame, f.Error):
                    fut.set_exception(TransferError(f"{self.remote.peer_id}: {frame.message}"))
                else:
                    fut.set_result(frame)

    def _on_chunk(self, chunk: f.Chunk) -> None:
        state = self._pulls.get(chunk.request_id)
        if state is None or state.at(chunk.index) not in (_WAITING, _LANDING):
            return  # not ours, or a second CHUNK for one index
        if not self._landed:
            # Runs once this read loop waits (call_soon callbacks run only then).
            asyncio.get_running_loop().call_soon(self._report_landed)
        state.table.move(chunk.index, _LANDED)
        self._landed.append((state, chunk))
        self._landed_bytes += chunk.length
        if self._landed_bytes >= REPORT_BATCH_BYTES:
            self._report_landed()

    def _report_landed(self) -> None:
        landed, self._landed, self._landed_bytes = self._landed, [], 0
        for state, chunk in landed:
            # No payload: dropped by the sink, or it failed its checksum in the decoder.
            state.resolve(chunk.index, chunk.payload is not None, chunk.length, chunk.checksum)

    def _on_chunk_refs(self, frame: f.ChunkRefs) -> None:
        """Hand one frame's chunk refs (all of one pull) to the copy threads,
        split between them, and go on reading: one batch is copied while the
        loop lands the one before (see SharedCopier). Destinations are taken
        here, on the loop."""
        state = self._pulls.get(frame.request_id)
        if state is None:
            return
        state.leases.add(frame.lease)  # released at the pull's end, whatever comes of it
        if self._pool_map is None:
            return  # refs for a pull we did not ask to share: its chunks stay misses
        jobs = []
        for ref in frame.refs():
            if state.at(ref.index) is not _WAITING:
                continue
            # With a reader the chunk is read in place; else it is copied into `dest`.
            out = None if state.reader is not None else state.dest(ref.index, ref.length)
            src = (self._pool_map.source(ref.offset, ref.length)
                   if state.reader is not None or out is not None else None)
            if src is None:
                state.resolve(ref.index, False, ref.length, ref.checksum)
                continue
            state.table.move(ref.index, _COPYING)
            jobs.append((ref, out, src))
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        parts = min(len(jobs), COPY_THREADS)  # every copy thread gets a share of the frame
        for part in (jobs[i::parts] for i in range(parts)):
            fut = loop.run_in_executor(self._shm.copier, self._copy_part, state, part)
            state.copies.add(fut)
            fut.add_done_callback(lambda done, part=part: _copied(state, part, done))

    def _copy_part(self, state: _PullState, part: list) -> list[bool]:
        """On a copy thread: copy or read each chunk of `part`; whether each is good."""
        shm, deadline, reader = self._shm, state.lease_deadline, state.reader
        if reader is not None:
            return [shm.read(reader, ref.index, src, ref.checksum, deadline) for ref, _, src in part]
        return [shm.copy(out, src, ref.checksum, deadline) for ref, out, src in part]

    def _fail_all(self, exc: Exception) -> None:
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(exc)
        for state in self._pulls.values():
            if not state.finished.done():
                state.finished.set_exception(exc)


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


def _copied(state: _PullState, jobs: list, done: asyncio.Future) -> None:
    """A batch of shared-memory copies ended (on the loop): report each chunk."""
    state.copies.discard(done)
    oks = done.result() if not done.cancelled() and done.exception() is None else []
    for i, (ref, _, _) in enumerate(jobs):
        state.resolve(ref.index, i < len(oks) and oks[i], ref.length, ref.checksum)


async def _drain(copies: set[asyncio.Future]) -> None:
    """Wait until no copy of a pull is in flight, even through a cancellation
    (re-raised after): the copies write into slots the caller is about to free."""
    cancelled = False
    pending = set(copies)
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
        pending = {fut for fut in pending if not fut.done()}
    if cancelled:
        raise asyncio.CancelledError
