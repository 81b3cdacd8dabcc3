"""Bringing chunks into this peer's store: local tiers first, then holders.

Remote chunks land straight in freshly reserved store slots, or, given a
reader, chunks in a same-host holder's shared pool are handed to it in place
and never stored here (the host already holds them once). Each holder gets
one PULL for all the keys it should serve (the stream is pipelined on the
wire, results come back as they land); a key a holder could not serve is
retried on its next holder. Every chunk ends in exactly one `on_result`.

Only live members of the mesh are pulled from: a holder named by a directory
owner's answer that our membership does not know is skipped, so an owner
cannot send us to a server of its choosing.

Slots. Without a disk tier a chunk's slot is reserved as its payload
arrives, inside the decoder's sink: that takes only the store's lock. With
one, reserving may first spill a chunk to disk, which must not run on the
loop; so the slots of a pull are reserved on a worker thread before its PULL
is sent, and the sink hands those out. A key that gets no slot then (the CPU
tier is pinned full) is dropped on arrival and tried on its next holder.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Awaitable, Callable, Sequence

from kvmesh.errors import KvmeshError, StoreError
from kvmesh.peers.connections import ConnectionPool
from kvmesh.peers.stats import PeerStats
from kvmesh.store import ChunkStore
from kvmesh.store.records import StoreTicket
from kvmesh.transfer.reader import ChunkReader
from kvmesh.types import ChunkKey, PeerId

log = logging.getLogger(__name__)

# on_result(index, ok, source, consumed): consumed = taken by the reader, not stored.
ResultFn = Callable[[int, bool, str, bool], None]
HoldersFn = Callable[[Sequence[ChunkKey]], Awaitable[list[tuple[PeerId, ...]]]]
MAX_ATTEMPTS = 3
# Bytes/s below which a pull's whole budget runs out. Low on purpose: a loaded
# host or a slow link must not turn a healthy pull into misses. A dead holder is
# caught sooner: by its closed connection, or by a stall (no chunk landing for
# the configured timeout).
MIN_PULL_BANDWIDTH = 10 << 20


class ChunkLoader:
    def __init__(self, self_id: PeerId, store: ChunkStore, pool: ConnectionPool,
                 find_holders: HoldersFn, advertise: Callable[[list[ChunkKey]], None],
                 timeout_s: float, stats: PeerStats,
                 is_member: Callable[[PeerId], bool] = lambda peer: True) -> None:
        self._self_id = self_id
        self._is_member = is_member
        self._store = store
        self._pool = pool
        self._find_holders = find_holders
        self._advertise = advertise
        self._timeout_s = timeout_s
        self._stats = stats
        self._warned_oversized = False  # said once that a holder's chunks outgrew our slots

    async def load(self, keys: Sequence[ChunkKey], on_result: ResultFn,
                   holders: Sequence[tuple[PeerId, ...]] | None = None,
                   reader: ChunkReader | None = None) -> None:
        """Bring `keys` into the store, or to `reader` (see the module doc);
        `holders` (one tuple per key) skips the lookup."""
        todo = []
        for index, key in enumerate(keys):
            tier = self._store.tier_of(key)
            if tier is not None:
                on_result(index, True, tier, False)
            else:
                todo.append(index)
        if not todo:
            return
        try:
            found = ([holders[i] for i in todo] if holders is not None
                     else await self._find_holders([keys[i] for i in todo]))
        except KvmeshError as exc:  # any lookup failure is a miss
            log.debug("holder lookup failed: %s", exc)
            found = [()] * len(todo)
        candidates = {i: [h for h in hs if h != self._self_id and self._is_member(h)]
                      for i, hs in zip(todo, found)}
        for _ in range(MAX_ATTEMPTS):
            groups: dict[PeerId, list[int]] = defaultdict(list)
            for index in todo:
                if candidates[index]:
                    groups[candidates[index].pop(0)].append(index)
                else:
                    on_result(index, False, "", False)
            if not groups:
                return
            outcomes = await asyncio.gather(*(self._pull_from(holder, indices, keys, on_result,
                                                              reader)
                                              for holder, indices in groups.items()))
            todo = [i for failed in outcomes for i in failed]
            if not todo:
                return
        for index in todo:
            on_result(index, False, "", False)

    async def _pull_from(self, holder: PeerId, indices: list[int], keys: Sequence[ChunkKey],
                         on_result: ResultFn, reader: ChunkReader | None) -> list[int]:
        """Pull from one holder; returns the indices it did not deliver."""
        failed: list[int] = []
        tickets: dict[int, StoreTicket] = {}  # slots a payload is landing in
        reserved: dict[int, StoreTicket] | None = None  # slots taken ahead (disk tier)
        store = self._store
        fetched: list[ChunkKey] = []
        oversized: list[int] = []  # lengths of chunks too long for our slots

        def dest(j: int, length: int):
            if length > store.slot_bytes:
                oversized.append(length)
                return None
            if reserved is not None:
                ticket = reserved.pop(j, None)
            else:
                try:
                    ticket = store.prepare_store(keys[indices[j]])
                except StoreError:
                    return None
            if ticket is None:
                return None
            tickets[j] = ticket
            return ticket.view

        def done(j: int, ok: bool, length: int, checksum: int) -> None:
            index, key = indices[j], keys[indices[j]]
            if reserved:
                _abandon(store, [reserved.pop(j, None)])  # reserved, never landed
            ticket = tickets.pop(j, None)
            if ticket is not None:
                ok = store.commit_store(ticket, ok, length, checksum if ok else None) and ok
            if ok:
                self._stats.bytes_pulled += length
                self._stats.remote_hits += 1
                consumed = ticket is None  # no slot was asked for: the reader took it
                if consumed:
                    self._stats.read_in_place += 1
                else:
                    fetched.append(key)
                on_result(index, True, holder, consumed)
            elif store.tier_of(key) is not None:  # another load stored it meanwhile
                on_result(index, True, "local", False)
            else:
                failed.append(index)

        try:
            client = await self._pool.get(holder)
        except KvmeshError as exc:
            self._stats.note_failure(f"connect to {holder}: {exc}")
            return list(indices)
        self._stats.pulls_inflight += 1
        try:
            # A reader takes shared-pool chunks in place: those need no slot.
            if store.has_disk_tier and (reader is None or client.transport != "shm"):
                reserved = await _reserve(store, [keys[i] for i in indices])
            # PeerClient.pull calls done() exactly once per key, even on failure.
            budget = self._timeout_s + len(indices) * store.slot_bytes / MIN_PULL_BANDWIDTH
            await client.pull(tuple(keys[i] for i in indices), dest, done, budget,
                              stall_s=self._timeout_s,
                              reader=None if reader is None else
                              (lambda j, src: reader(indices[j], src)))
        finally:
            self._stats.pulls_inflight -= 1
            if reserved:
                _abandon(store, list(reserved.values()))
        if fetched:
            self._advertise(fetched)  # we hold a copy now: one more source for others
        if oversized:
            self._note_oversized(holder, oversized)
        if len(failed):
            self._stats.note_failure(f"{len(failed)} chunk(s) not served by {holder}")
        return failed

    def _note_oversized(self, holder: PeerId, lengths: list[int]) -> None:
        """Chunks longer than a slot are misses. Logged once per peer: the
        usual cause is a setting, not a fault (our slots sized for encoded
        chunks, KVMESH_CODEC_CPU, the holder's chunks kept raw)."""
        slot = self._store.slot_bytes
        self._stats.note_failure(f"{len(lengths)} chunk(s) from {holder} longer than a "
                                 f"{slot}-byte slot")
        if not self._warned_oversized:
            self._warned_oversized = True
            log.warning("chunks from %s are longer than this peer's slots (%d > %d bytes) and "
                        "are misses: does it keep chunks raw while this peer's slots hold "
                        "KVMESH_CODEC_CPU envelopes? Give every engine of a mesh the same "
                        "KVMESH_CODEC_CPU", holder, max(lengths), slot)


def _reserve_slots(store: ChunkStore, keys: list[ChunkKey]) -> dict[int, StoreTicket]:
    """On a worker thread: a slot for each key, in order, until the CPU tier
    is full; keys already stored or being stored get none."""
    out: dict[int, StoreTicket] = {}
    for j, key in enumerate(keys):
        try:
            ticket = store.prepare_store(key)
        except StoreError:  # pinned full, or closed: the rest get none either
            break
        if ticket is not None:
            out[j] = ticket
    return out


async def _reserve(store: ChunkStore, keys: list[ChunkKey]) -> dict[int, StoreTicket]:
    """`_reserve_slots` on a worker thread. If the caller is cancelled
    meanwhile, the slots are given back once the thread is done with them."""
    reserving = asyncio.get_running_loop().run_in_executor(None, _reserve_slots, store, keys)
    try:
        return await asyncio.shield(reserving)
    except asyncio.CancelledError:
        def give_back(fut: asyncio.Future) -> None:
            if not fut.cancelled() and fut.exception() is None:
                _abandon(store, list(fut.result().values()))

        reserving.add_done_callback(give_back)
        raise


def _abandon(store: ChunkStore, tickets: list[StoreTicket | None]) -> None:
    """Give back reserved slots that no payload landed in (no I/O: loop-safe)."""
    for ticket in tickets:
        if ticket is not None:
            store.commit_store(ticket, ok=False)
