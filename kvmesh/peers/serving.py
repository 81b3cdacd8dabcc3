"""What a peer's server asks of it: the `ServingNode` of `kvmesh.transfer.server`.

`ServingAdapter` answers the requests of other peers (and of this engine's
own lookup clients) from the parts of one peer: directory queries from its
shard, pulls from its store (pins drawn from one `PinBudget`), advertise and
withdraw into its shard, pool-door tokens, identity checks (VOUCH both
ways), and prefix lookups and fetches through the peer's own verbs. With a
wire codec, streamed pulls send raw chunks encoded (`wire_form`); shared
pulls always read the stored bytes.
Loop thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from kvmesh.directory.shard import Directory
from kvmesh.errors import KvmeshError
from kvmesh.membership.states import LIVE, MemberState
from kvmesh.peers.stats import PeerStats
from kvmesh.store import ChunkStore
from kvmesh.store.chunk_codec import Encoder
from kvmesh.store.records import LoadTicket
from kvmesh.transfer import frames as f
from kvmesh.transfer.pin_budget import PinBudget
from kvmesh.transfer.pool_door import PoolDoor
from kvmesh.types import ChunkKey, PeerId


@dataclass(frozen=True, slots=True)
class ServedChunk:
    """A pinned chunk as the server sends it."""

    ticket: LoadTicket
    view: memoryview
    length: int
    checksum: int
    offset: int


@dataclass(frozen=True, slots=True)
class ServingIdentity:
    """What the handshake tells others about this peer."""

    peer_id: PeerId
    namespace: bytes
    host_id: str
    ucx_port: int
    control_port: int


@dataclass(frozen=True, slots=True)
class PeerCalls:
    """The peer's own verbs and views the adapter answers with."""

    identity: Callable[[], ServingIdentity]
    state_of: Callable[[PeerId], MemberState | None]
    members: Callable[[], Sequence[PeerId]]
    matched: Callable[[Sequence[ChunkKey]], Awaitable[int]]
    fetch: Callable[[Sequence[ChunkKey], PeerId], Awaitable[int]]
    verify: Callable[[PeerId, bytes], Awaitable[bool]]
    vouch: Callable[[PeerId, bytes], bool]
    on_member: Callable[[PeerId, f.Info], None]


class ServingAdapter:
    """A `ServingNode` over one peer's parts; see the module docstring."""

    def __init__(self, calls: PeerCalls, store: ChunkStore, directory: Directory,
                 door: PoolDoor | None, stats: PeerStats, wire: Encoder | None = None) -> None:
        self._calls = calls
        self._store = store
        self._directory = directory
        self._door = door
        self._stats = stats
        self._wire = wire
        self.pins = PinBudget.for_slots(store.pool.slots)
        # Streamed chunks are sent as stored unless a wire codec is set.
        self.wire_form = self._encoded_for_wire if wire is not None else None

    def identity(self) -> ServingIdentity:
        """What the handshake tells a connecting peer (read once per connection)."""
        return self._calls.identity()

    def pool_token(self, on_proven: Callable[[], None]) -> bytes:
        return self._door.issue(on_proven) if self._door is not None else b""

    def revoke_pool_token(self, token: bytes) -> None:
        if self._door is not None:
            self._door.revoke(token)

    async def verify(self, claimed: PeerId, nonce: bytes) -> bool:
        return await self._calls.verify(claimed, nonce)

    def vouch(self, asker: PeerId, nonce: bytes) -> bool:
        return self._calls.vouch(asker, nonce)

    def on_member(self, peer: PeerId, info: f.Info) -> None:
        self._calls.on_member(peer, info)

    def holders(self, keys: tuple[ChunkKey, ...]) -> list[tuple[PeerId, ...]]:
        return [self._directory.holders(k) for k in keys]

    def on_advertise(self, holder: PeerId, keys: tuple[ChunkKey, ...]) -> None:
        # Only a holder that announced its leave is refused. One we never heard
        # of, or hold dead, is talking to us right now: its gossip (a join, or
        # the refutation after a partition heals) may simply trail its advertise.
        if self._calls.state_of(holder) is not MemberState.LEFT:
            self._directory.add(holder, keys)

    def on_withdraw(self, holder: PeerId, keys: tuple[ChunkKey, ...]) -> None:
        self._directory.remove(holder, keys)

    def members_exchange(self, peers: tuple[PeerId, ...]) -> tuple[PeerId, ...]:
        """Old-style member lists are answered, not learned from: SWIM gossip is the source."""
        return tuple(self._calls.members())

    async def prefix(self, keys: tuple[ChunkKey, ...]) -> int:
        return await self._calls.matched(keys)

    async def fetch(self, keys: tuple[ChunkKey, ...], holder: PeerId) -> int:
        """Pull `keys` from `holder`, which must be a live member of the mesh
        (never a peer only the request names)."""
        if self._calls.state_of(holder) not in LIVE:
            return 0
        return await self._calls.fetch(keys, holder)

    async def open_chunk(self, key: ChunkKey) -> ServedChunk | None:
        """Pin a chunk for sending, or None when it is not held (a MISS). A
        chunk on disk only (or whose bytes a recode is rewriting) is pinned on
        a worker thread, off the loop."""
        try:
            ticket = self._store.prepare_load_in_cpu(key)
            if ticket is None:
                ticket = await self._load_off_loop(key)
        except KvmeshError:
            return None
        self._stats.bytes_served += ticket.length
        return ServedChunk(ticket, ticket.view, ticket.length, ticket.checksum,
                           self._store.pool.offset(ticket.slot))

    async def _encoded_for_wire(self, served: ServedChunk) -> ServedChunk:
        """`wire_form` with a wire codec: a raw chunk's envelope, encoded on a
        worker thread, under its own checksum; an envelope (or a chunk the
        codec cannot shorten) as it is stored. The served bytes are counted
        as sent. If the pull is cancelled meanwhile, the thread may go on
        reading a slot that is handed out again: its result is thrown away."""
        if served.length % 2:
            return served
        encoded = await asyncio.to_thread(self._wire.encode, served.view)
        if encoded is None:
            return served
        saved = served.length - len(encoded)
        self._stats.bytes_served -= saved
        self._stats.wire_saved(self._wire.name, saved)
        return ServedChunk(served.ticket, encoded.data, len(encoded), encoded.checksum, served.offset)

    async def _load_off_loop(self, key: ChunkKey) -> LoadTicket:
        """`prepare_load` on a worker thread. The thread cannot be stopped: if
        the caller is cancelled meanwhile (its puller hung up), the pin the
        thread takes is given back once it is done, else it would stay for
        the life of the store."""
        loading = asyncio.get_running_loop().run_in_executor(None, self._store.prepare_load, key)
        try:
            return await asyncio.shield(loading)
        except asyncio.CancelledError:
            loading.add_done_callback(self._unpin_orphan)
            raise

    def _unpin_orphan(self, loading: asyncio.Future) -> None:
        if not loading.cancelled() and loading.exception() is None:
            self._store.complete_load(loading.result())

    def close_chunk(self, served: ServedChunk) -> None:
        self._store.complete_load(served.ticket)
