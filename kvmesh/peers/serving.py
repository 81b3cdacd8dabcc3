"""What a peer's server asks of it: the `ServingNode` of `kvmesh.transfer.server`.

`ServingAdapter` answers the requests of other peers (and of this engine's
own lookup clients) from the parts of one peer: directory queries from its
shard, pulls from its store, advertise and withdraw into its shard, and
prefix lookups and fetches through the peer's own verbs. Loop thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from kvmesh.directory.shard import Directory
from kvmesh.errors import KvmeshError
from kvmesh.membership.states import MemberState
from kvmesh.peers.stats import PeerStats
from kvmesh.store import ChunkStore
from kvmesh.store.records import LoadTicket
from kvmesh.transfer import frames as f
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
    shm_path: str
    ucx_port: int
    control_port: int


class ServingAdapter:
    """A `ServingNode` over one peer's parts; see the module docstring."""

    def __init__(self, identity: Callable[[], ServingIdentity], store: ChunkStore,
                 directory: Directory, state_of: Callable[[PeerId], MemberState | None],
                 on_connected: Callable[[f.Hello], None],
                 matched: Callable[[Sequence[ChunkKey]], Awaitable[int]],
                 fetch: Callable[[Sequence[ChunkKey], PeerId], Awaitable[int]],
                 members: Callable[[], Sequence[PeerId]], stats: PeerStats) -> None:
        self._identity = identity
        self._store = store
        self._directory = directory
        self._state_of = state_of
        self._on_connected = on_connected
        self._matched = matched
        self._fetch = fetch
        self._members = members
        self._stats = stats

    def identity(self) -> ServingIdentity:
        """What the handshake tells a connecting peer (read once per connection)."""
        return self._identity()

    def on_connected(self, hello: f.Hello) -> None:
        self._on_connected(hello)

    def holders(self, keys: tuple[ChunkKey, ...]) -> list[tuple[PeerId, ...]]:
        return [self._directory.holders(k) for k in keys]

    def on_advertise(self, holder: PeerId, keys: tuple[ChunkKey, ...]) -> None:
        # Only a holder that announced its leave is refused. One we never heard
        # of, or hold dead, is talking to us right now: its gossip (a join, or
        # the refutation after a partition heals) may simply trail its advertise.
        if self._state_of(holder) is not MemberState.LEFT:
            self._directory.add(holder, keys)

    def on_withdraw(self, holder: PeerId, keys: tuple[ChunkKey, ...]) -> None:
        self._directory.remove(holder, keys)

    def members_exchange(self, peers: tuple[PeerId, ...]) -> tuple[PeerId, ...]:
        """Old-style member lists are answered, not learned from: SWIM gossip is the source."""
        return tuple(self._members())

    async def prefix(self, keys: tuple[ChunkKey, ...]) -> int:
        return await self._matched(keys)

    async def fetch(self, keys: tuple[ChunkKey, ...], holder: PeerId) -> int:
        return await self._fetch(keys, holder)

    def open_chunk(self, key: ChunkKey) -> ServedChunk | None:
        """Pin a chunk for sending, or None when it is not held (a MISS)."""
        try:
            ticket = self._store.prepare_load(key)
        except KvmeshError:
            return None
        self._stats.bytes_served += ticket.length
        return ServedChunk(ticket, ticket.view, ticket.length, ticket.checksum,
                           self._store.offset(ticket.slot))

    def close_chunk(self, served: ServedChunk) -> None:
        self._store.complete_load(served.ticket)
