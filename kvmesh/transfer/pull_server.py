"""Serving one connection's PULLs: chunks streamed, or shared by reference.

Every chunk served is pinned from the moment it is chosen, so eviction never
pulls a slot out from under a transfer, and every pin is drawn from the
holder's `PinBudget` in the name of the connection's peer (over budget: a
MISS).

- Streamed (TCP, UCX): the chunk is pinned while its CHUNK frame is written,
  and unpinned as soon as the write ends or fails (a puller that stops
  reading is cut off by the connection's send timeout, and its pins go with
  it). With a `wire` form (a wire codec) each chunk is sent as what it
  returns (a raw chunk's envelope), under that form's checksum; the next
  WIRE_LOOKAHEAD chunks are pinned and encoded while one is sent.
- Shared (the puller proved through the pool door that it is on this host):
  chunks are answered with CHUNK_REFS, REFS_PER_FRAME at a time, each frame
  under a lease of its own whose id the holder picks. The puller copies
  straight out of the pool, so the pins must outlive anything that happens
  to the connection: they hold until the puller's RELEASE of that lease id
  (sent as soon as it has copied the frame's chunks), or SHARED_LEASE_S
  after the lease began (see `kvmesh.transfer.shm`), whichever comes first.
  A puller that asks to share without that proof is streamed to instead.

A pin over the budget waits up to `pin_wait_s` for pins to come back (a
shared pull first sends the refs it has pinned so far, which the puller can
then release), so a pull larger than a peer's share of the pool goes on as
the puller releases its earlier batches; past that wait the chunk is a MISS, and so is every
later chunk of that pull that finds no room at once (a puller that releases
nothing costs one wait per pull, not one per chunk).

Loop thread only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Hashable, Protocol

from kvmesh.transfer import frames as f
from kvmesh.transfer.pin_budget import PinBudget
from kvmesh.transfer.shm import SHARED_LEASE_S
from kvmesh.types import ChunkKey

# Chunk refs per CHUNK_REFS frame: the puller starts copying the first batch
# while later ones are pinned; one frame per chunk cost ~30 us of decode each.
REFS_PER_FRAME = 16
# Chunks of an encoded stream being encoded while the one before them is sent.
WIRE_LOOKAHEAD = 2


class ChunkSource(Protocol):
    async def open_chunk(self, key: ChunkKey) -> Any | None:
        """Pin a chunk for sending: a ticket with view/length/checksum/offset, or None."""

    def close_chunk(self, ticket: Any) -> None: ...


# wire(ticket) -> what a stream sends for a pinned chunk (view/length/checksum): the
# ticket itself, or an encoded copy (see `kvmesh.peers.serving`); never for shared pulls.
WireForm = Callable[[Any], Awaitable[Any]]


class PullServer:
    def __init__(self, source: ChunkSource, budget: PinBudget, who: Hashable,
                 send: Callable[[f.Frame], Awaitable[None]], pin_wait_s: float,
                 wire: WireForm | None = None) -> None:
        self._source = source
        self._wire = wire
        self._budget = budget
        self._pin_wait_s = pin_wait_s
        self._who = who  # whose pins these are (the connection's peer id, shared by its connections)
        self._send = send
        self._leases: dict[int, list[Any]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ids = itertools.count(1)

    async def serve(self, pull: f.Pull, shared: bool) -> None:
        if shared:
            await self._serve_shared(pull)
        elif self._wire is not None:
            await self._serve_encoded(pull)
        else:
            await self._serve_streamed(pull)

    def release(self, lease: int) -> None:
        """Unpin a shared lease (the puller's RELEASE, or its timer); unknown ids are ignored."""
        timer = self._timers.pop(lease, None)
        if timer is not None:
            timer.cancel()
        for ticket in self._leases.pop(lease, ()):
            self._unpin(ticket)

    @property
    def leases(self) -> int:
        return len(self._leases)

    async def _open(self, key: ChunkKey, pull: "_PullPins",
                    before_wait: Callable[[], Awaitable[None]] | None) -> Any | None:
        """Pin `key` for sending, or None (a MISS). A pull may wait for room
        until one wait runs out; then it takes only what is free at once.
        `before_wait()` runs before a wait: pins the puller has not been told
        of yet cannot come back, so they must be sent first."""
        if pull.may_wait:
            if before_wait is not None and not self._budget.has_room(self._who):
                await before_wait()
            pinned = await self._budget.take_within(self._who, self._pin_wait_s)
            pull.may_wait = pinned
        else:
            pinned = self._budget.take(self._who)
        if not pinned:
            return None
        ticket = None
        try:
            ticket = await self._source.open_chunk(key)
        finally:
            if ticket is None:
                self._budget.give_back(self._who)
        return ticket

    def _unpin(self, ticket: Any) -> None:
        self._source.close_chunk(ticket)
        self._budget.give_back(self._who)

    async def _pinned(self, pull: f.Pull, before_wait: Callable[[], Awaitable[None]] | None = None
                      ) -> AsyncIterator[tuple[int, ChunkKey, Any]]:
        """Each of the pull's chunks that could be pinned, with its ticket, in
        order; a MISS is sent for each of the others."""
        pins = _PullPins()
        for index, key in enumerate(pull.keys):
            ticket = await self._open(key, pins, before_wait)
            if ticket is None:
                await self._send(f.Miss(pull.request_id, index, key))
            else:
                yield index, key, ticket

    async def _serve_streamed(self, pull: f.Pull) -> None:
        async for index, key, ticket in self._pinned(pull):
            try:
                await self._send(f.Chunk(pull.request_id, index, key, ticket.checksum,
                                         ticket.length, ticket.view))
            finally:
                self._unpin(ticket)

    async def _serve_encoded(self, pull: f.Pull) -> None:
        """Streamed through the wire form: the next WIRE_LOOKAHEAD chunks are
        pinned and encoding (on worker threads) while the one before is sent.
        Before a wait for pins, every chunk ahead is sent (its pin comes back)."""
        ahead: deque[tuple[int, ChunkKey, Any, asyncio.Task]] = deque()
        loop = asyncio.get_running_loop()

        async def send_ahead() -> None:
            while ahead:
                await self._send_encoded(pull.request_id, ahead.popleft())

        try:
            async for index, key, ticket in self._pinned(pull, before_wait=send_ahead):
                ahead.append((index, key, ticket, loop.create_task(self._wire(ticket))))
                if len(ahead) > WIRE_LOOKAHEAD:
                    await self._send_encoded(pull.request_id, ahead.popleft())
            await send_ahead()
        finally:
            for *_, ticket, encoding in ahead:  # never sent: the connection failed, or we were cancelled
                encoding.cancel()
                self._unpin(ticket)

    async def _send_encoded(self, request_id: int, item: tuple[int, ChunkKey, Any, asyncio.Task]) -> None:
        index, key, ticket, encoding = item
        try:
            sent = await encoding  # the checksum sent is always that of the bytes sent
            await self._send(f.Chunk(request_id, index, key, sent.checksum, sent.length, sent.view))
        finally:
            self._unpin(ticket)

    async def _serve_shared(self, pull: f.Pull) -> None:
        """Refs REFS_PER_FRAME at a time, each frame under a lease of its own;
        fewer when the pull must wait for pins (the puller can only give back
        those it was sent: waiting on a batch of our own would wait out the
        whole wait, on pins this very pull holds)."""
        batch: list[tuple[int, ChunkKey, Any]] = []

        async def flush() -> None:
            nonlocal batch
            if batch:
                sending, batch = batch, []
                await self._send_refs(pull.request_id, sending)

        try:
            async for pinned in self._pinned(pull, before_wait=flush):
                batch.append(pinned)
                if len(batch) == REFS_PER_FRAME:
                    await flush()
            await flush()
        finally:
            for *_, ticket in batch:  # pinned, never leased (the connection failed, or we were cancelled)
                self._unpin(ticket)

    async def _send_refs(self, request_id: int, batch: list[tuple[int, ChunkKey, Any]]) -> None:
        """Lease the batch's pins (until RELEASE or the lease's end), then send its refs."""
        lease = next(self._ids)
        self._leases[lease] = [ticket for *_, ticket in batch]
        self._timers[lease] = asyncio.get_running_loop().call_later(SHARED_LEASE_S, self.release,
                                                                    lease)
        await self._send(_chunk_refs(request_id, lease, batch))

    def stop(self) -> None:
        """The connection is gone. Shared leases stay: their timers unpin them
        (the puller may still be copying refs it has read)."""


class _PullPins:
    """One pull's standing with the pin budget."""

    __slots__ = ("may_wait",)

    def __init__(self) -> None:
        self.may_wait = True


def _chunk_refs(request_id: int, lease: int, batch: list[tuple[int, ChunkKey, Any]]) -> f.ChunkRefs:
    return f.ChunkRefs(request_id, tuple(i for i, _, _ in batch), tuple(k for _, k, _ in batch),
                       tuple(t.checksum for *_, t in batch), tuple(t.length for *_, t in batch),
                       tuple(t.offset for *_, t in batch), lease)
