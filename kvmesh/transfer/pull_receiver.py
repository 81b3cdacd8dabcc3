"""The puller's side of PULL: where each chunk of a pull lands, and its report.

`PullReceiver` holds the pulls in flight on one connection (`PeerClient`
owns one and hands it the frames that belong to pulls). A chunk streamed
back lands in a destination buffer the caller chose (a store slot) and is
verified before it is reported: by the decoder, against its checksum, piece
by piece as it lands (see `kvmesh.transfer.codec`). Chunk refs into the
holder's shared pool are copied out (or read in place by a `reader`) on the
copy threads and checked against the holder's pin lease (see
`kvmesh.transfer.shm`). Each chunk moves through the states of
`pull_states` (waiting, landing, landed, copying, done).

The contracts the caller's buffers rest on:

- `done` is called exactly once per key of a pull (False for a miss or any
  failure), on the loop;
- copies in flight are drained before the chunks still open are reported as
  failures (`end`), since those copies write into the slots a failure frees;
- no payload lands in a slot the caller already gave back: the owner closes
  the connection whole (its reader gone) before it ends a pull that failed.

Leases: the holder pins each CHUNK_REFS frame's chunks under a lease of
their own. A lease whose copies have all ended is released (`release(lease)`,
which queues a RELEASE) at once while chunks of the pull are still
unanswered: the holder lends each peer only part of its pool at once
(`pin_budget`), and a pull larger than that part gets no more refs until
earlier batches come back. Once every chunk is answered, the rest wait for
the pull's end: sent as each frame's copies ended, they took loop time from
the copies still landing.

Loop thread, except `_copy_part`, which runs on a copy thread. A little
over 300 lines: `PullState` and the receiver share the chunk table and the
lease bookkeeping, and each would reach into the other's if split.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from kvmesh.errors import TransferError
from kvmesh.transfer import frames as f
from kvmesh.transfer.pull_states import ChunkState, PullTable
from kvmesh.transfer.reader import ChunkReader
from kvmesh.transfer.shm import COPY_THREADS, PoolMapping, SharedCopier
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
# Copied leases held back for the pull's end at most; past it they go at once
# (lease ids come from the holder, which may send frame after frame of nothing).
MAX_HELD_LEASES = 64
_WAITING, _LANDING, _LANDED, _COPYING, _DONE = (
    ChunkState.WAITING, ChunkState.LANDING, ChunkState.LANDED, ChunkState.COPYING, ChunkState.DONE)


@dataclass
class PullState:
    """One pull in flight: `PullReceiver.begin` makes it, `end` finishes it."""

    keys: tuple[ChunkKey, ...]
    dest: DestFn
    done: DoneFn
    table: PullTable
    finished: asyncio.Future
    lease_deadline: float = 0.0  # time.monotonic() by which shared copies must end
    copies: set[asyncio.Future] = field(default_factory=set)  # copy batches in flight
    leases: dict[int, int] = field(default_factory=dict)  # lease -> copies of it in flight
    reader: ChunkReader | None = None  # consumes shared chunks in place of `dest`
    release: Callable[[int], None] = lambda lease: None  # sends RELEASE for a lease
    copied_leases: set[int] = field(default_factory=set)  # every copy ended; not yet released

    def copied(self, lease: int, count: int) -> None:
        """`count` copies of `lease` ended. Once none is left, release it now
        if the holder has chunks of this pull to answer still (it may be
        waiting for pins to come back), else at the pull's end."""
        left = self.leases.get(lease, 0) - count
        if left > 0:
            self.leases[lease] = left
        elif lease in self.leases:
            del self.leases[lease]
            self.copied_leases.add(lease)
            if self.table.waiting or len(self.copied_leases) >= MAX_HELD_LEASES:
                self.release_copied()

    def release_copied(self) -> None:
        for lease in sorted(self.copied_leases):
            self.release(lease)
        self.copied_leases.clear()

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


class PullReceiver:
    """The pulls of one connection; see the module docstring."""

    def __init__(self, remote: PeerId) -> None:
        self._remote = remote  # named in errors
        self._shm: SharedCopier | None = None  # set when pulls use the holder's shared pool
        self._pool_map: PoolMapping | None = None
        self._pulls: dict[int, PullState] = {}
        self._landed: list[tuple[PullState, f.Chunk]] = []  # to report, see REPORT_BATCH_BYTES
        self._landed_bytes = 0

    def use_pool(self, mapping: PoolMapping, copier: SharedCopier) -> None:
        """Copy chunks out of the holder's pool from now on; the mapping is ours to close."""
        self._pool_map, self._shm = mapping, copier

    @property
    def shares_pool(self) -> bool:
        """Whether pulls ask for chunk refs into the holder's pool (PULL's flag)."""
        return self._pool_map is not None

    @property
    def in_flight(self) -> bool:
        return bool(self._pulls)

    def begin(self, rid: int, keys: tuple[ChunkKey, ...], dest: DestFn, done: DoneFn,
              reader: ChunkReader | None, release: Callable[[int], None]) -> PullState:
        """Expect the chunks of pull `rid`; call it just before the PULL is
        sent (its lease deadline counts from now). `release(lease)` is called
        for each of the holder's leases once its copies have ended."""
        state = PullState(keys, dest, done, PullTable(len(keys)),
                           asyncio.get_running_loop().create_future(),
                           SharedCopier.lease_deadline(time.monotonic()), reader=reader,
                           release=release)
        self._pulls[rid] = state
        return state

    async def end(self, rid: int, state: PullState) -> None:
        """Stop taking frames for pull `rid`, report every chunk still open,
        and release every lease of the pull not yet released.

        Landed chunks are reported as they are (landed and verified: not
        failures); copies in flight are waited for, even through a
        cancellation (re-raised after), before the rest fail, since they write
        into slots a failure frees."""
        self._pulls.pop(rid, None)
        self._report_landed()
        await _drain(state.copies)
        for index in state.table.not_done():
            state.resolve(index, False, 0)
        state.copied_leases.update(state.leases)  # no copy of them is left in flight
        state.leases.clear()
        state.release_copied()

    def sink(self, chunk: f.Chunk) -> memoryview | None:
        """The decoder's payload sink: the buffer a CHUNK's payload lands in,
        or None to drop it (not a chunk we wait for, or `dest` declined)."""
        state = self._pulls.get(chunk.request_id)
        if state is None or state.at(chunk.index) is not _WAITING:
            return None
        buf = state.dest(chunk.index, chunk.length)
        if buf is not None:
            state.table.move(chunk.index, _LANDING)
        return buf

    def take(self, frame: f.Frame) -> bool:
        """Handle `frame` if it belongs to a pull (CHUNK, CHUNK_REFS, MISS, or
        an ERROR refusing a pull); False when it is some request's reply."""
        if isinstance(frame, f.Chunk):
            self._on_chunk(frame)
        elif isinstance(frame, f.ChunkRefs):
            self._on_chunk_refs(frame)
        elif isinstance(frame, f.Miss):
            state = self._pulls.get(frame.request_id)
            if state and state.at(frame.index) is _WAITING:  # not one already on its way
                state.resolve(frame.index, False, 0)
        elif isinstance(frame, f.Error) and frame.request_id in self._pulls:
            state = self._pulls[frame.request_id]  # the holder refused the whole pull
            if not state.finished.done():
                state.finished.set_exception(TransferError(f"{self._remote}: {frame.message}"))
        else:
            return False
        return True

    def fail_all(self, exc: Exception) -> None:
        """The connection closed: every pull in flight ends with `exc`."""
        for state in self._pulls.values():
            if not state.finished.done():
                state.finished.set_exception(exc)

    def close_pool(self) -> None:
        """Drop the holder's pool mapping (copies in flight keep their views)."""
        if self._pool_map is not None:
            self._pool_map.close()

    # ---- internals ----------------------------------------------------------

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
        # Released once its copies end, or at the pull's end, whatever comes of it.
        state.leases[frame.lease] = state.leases.get(frame.lease, 0)
        if self._pool_map is None:
            state.copied(frame.lease, 0)  # refs for a pull we did not ask to share: misses
            return
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
        state.leases[frame.lease] += len(jobs)
        if not jobs:
            state.copied(frame.lease, 0)
            return
        loop = asyncio.get_running_loop()
        parts = min(len(jobs), COPY_THREADS)  # every copy thread gets a share of the frame
        for part in (jobs[i::parts] for i in range(parts)):
            fut = loop.run_in_executor(self._shm.copier, self._copy_part, state, part)
            state.copies.add(fut)
            fut.add_done_callback(lambda done, part=part: _copied(state, frame.lease, part, done))

    def _copy_part(self, state: PullState, part: list) -> list[bool]:
        """On a copy thread: copy or read each chunk of `part`; whether each is good."""
        shm, deadline, reader = self._shm, state.lease_deadline, state.reader
        if reader is not None:
            return [shm.read(reader, ref.index, src, ref.checksum, deadline) for ref, _, src in part]
        return [shm.copy(out, src, ref.checksum, deadline) for ref, out, src in part]


async def await_progress(state: PullState, timeout_s: float, stall_s: float) -> None:
    """Wait for the pull to finish; raise TimeoutError on the budget or a stall
    (`stall_s` without a single chunk done), or the connection's failure."""
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


def _copied(state: PullState, lease: int, jobs: list, done: asyncio.Future) -> None:
    """A batch of shared-memory copies ended (on the loop): report each chunk,
    then let the holder unpin them if the lease has no copy left."""
    state.copies.discard(done)
    oks = done.result() if not done.cancelled() and done.exception() is None else []
    for i, (ref, _, _) in enumerate(jobs):
        state.resolve(ref.index, i < len(oks) and oks[i], ref.length, ref.checksum)
    state.copied(lease, len(jobs))


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
