"""The peer: one per engine process (per tensor-parallel rank).

`Peer` is a front of a few verbs over parts with one job each:

- the store (`kvmesh.store.ChunkStore`) and the network
  (`kvmesh.peers.network`), both passed in or built from the config;
- `PeerParts` (`assembly.py`): builds the parts below in order, and closes them;
- `MeshGossip`: SWIM membership and discovery (the ring);
- `Contacts`: what this peer tells in handshakes, and members' control URLs;
- `DirectorySync`: advertise/withdraw batches, rebalancing, the event pump;
- `HolderLookup`: prefix lookups and holder queries, with their cache;
- `ChunkLoader`: local tiers, then pulls from holders;
- `ServingAdapter`: what the server asks of us on each inbound connection;
- `InboundConnections`: the accept loop and the caps on inbound connections;
- `ConnectionPool`: outgoing connections, one per remote peer.

Everything runs on the peer's own event loop, except the verbs marked "any
thread", which engines call through the sync facade (`facade.py`).

`Peer` has a few more methods than the ~20 a class here aims at: they are
its public verbs (the control API's, the connectors', the server's), each
a line or two handing off to one part; splitting the front would split the
one surface callers need.

Data flow:
  lookup   HolderLookup: local store, then one LOOKUP per ring owner in parallel
  load     ChunkLoader: local tiers, then PULL from holders into store slots
  save     commit_save, then ADVERTISE to the key's ring owners (batched)
  evict    store events -> WITHDRAW to the owners (batched)
  ring     a member joins: ADVERTISE held keys to their new owners only;
           a member dies or leaves: drop its directory entries, same re-advertise
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.directory.shard import Directory
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.membership.swim import Swim
from kvmesh.peers.assembly import PeerParts
from kvmesh.peers.codec_settings import PeerCodecs
from kvmesh.peers.connections import ConnectionPool
from kvmesh.peers.contacts import Contacts
from kvmesh.peers.directory_sync import DirectorySync
from kvmesh.peers.holder_lookup import Holders, HolderLookup
from kvmesh.peers.loader import ChunkLoader, ResultFn
from kvmesh.peers.network import Network, TcpNetwork
from kvmesh.peers.stats import PeerStats
from kvmesh.peers.status import PeerStatus
from kvmesh.store import ChunkStore
from kvmesh.store.records import LoadTicket, StoreTicket
from kvmesh.store.recode import Recoded
from kvmesh.transfer import frames as f
from kvmesh.transfer.reader import ChunkReader
from kvmesh.types import ChunkKey, PeerId

# Bytes/s a move to another peer is budgeted at, on top of the timeout.
PUSH_BUDGET_BANDWIDTH = 50 << 20


class Peer:
    def __init__(self, config: KvmeshConfig, hasher: ChunkHasher, slot_bytes: int, *,
                 store: ChunkStore | None = None, network: Network | None = None) -> None:
        self.config = config
        self.hasher = hasher
        # Peers of one mesh share a namespace without the per-request cache salt.
        self.namespace = hasher.namespace.with_salt("").digest()
        self.slot_bytes = slot_bytes
        self.stats = PeerStats()
        # The chunk geometry of its engine's namespace (None: opaque chunks), and the
        # disk and wire codecs it asks for: ConfigError before anything is built.
        self.codecs = PeerCodecs.build(config.codecs, hasher.namespace)
        self.store = store if store is not None else ChunkStore(config.store, slot_bytes, shared=True,
                                                                disk_codec=self.codecs.disk)
        self.directory = Directory()
        self.peer_id = PeerId("")
        self.control_url = ""
        self._parts = PeerParts(config, self.namespace, self.store, self.directory, self.stats,
                                network if network is not None else TcpNetwork(config.tls),
                                wire_codec=self.codecs.wire)
        self._loop: asyncio.AbstractEventLoop | None = None
        # The parts the verbs speak to, bound once `start` has built them.
        self.membership: Swim | None = None
        self.pool: ConnectionPool | None = None
        self._contacts: Contacts | None = None
        self._sync: DirectorySync | None = None
        self._lookup: HolderLookup | None = None
        self._loader: ChunkLoader | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Build the parts, start listening, then join the mesh; on any failure,
        `stop` what was built and re-raise."""
        parts = self._parts
        try:
            self._loop = asyncio.get_running_loop()
            await parts.open(self.fetch)
            # Bound before the loop runs again: the accept loop's first
            # connection may already ask for the verbs that use them.
            self.peer_id, self.membership, self.pool = (parts.endpoint.peer_id,
                                                        parts.gossip.membership, parts.pool)
            self._contacts, self._sync, self._lookup, self._loader = (
                parts.contacts, parts.sync, parts.lookup, parts.loader)
            if self.config.control.enabled:
                self.control_url = await parts.open_control(self)
            await parts.join()
        except BaseException:
            await self.stop()
            raise

    async def stop(self, graceful: bool = True) -> None:
        """Leave the mesh (graceful: tell the others now) and release everything.

        The others drop our directory entries when they learn we left, and
        holders re-advertise the keys whose owners changed: that is the
        hand-off. Chunks held only here are lost to the mesh (no push).
        """
        await self._parts.close(graceful)
        self.store.close()

    # ---- lookups and loads (loop thread unless marked) ---------------------------

    async def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        """Leading keys held here or anywhere in the mesh."""
        return await self._lookup.matched(keys)

    def lookup_prefix_locally(self, keys: Sequence[ChunkKey]) -> int | None:
        """Any thread: `lookup_prefix` answered without the loop, or None when
        it needs the directory owners (see HolderLookup.matched_locally)."""
        return self._lookup.matched_locally(keys)

    async def find_holders(self, keys: Sequence[ChunkKey], fresh: bool = False) -> list[Holders]:
        return await self._lookup.find_holders(keys, fresh)

    async def load(self, keys: Sequence[ChunkKey], on_result: ResultFn,
                   reader: ChunkReader | None = None) -> None:
        """Bring `keys` into the store (or to `reader`); one `on_result` per key."""
        def counted(index: int, ok: bool, source: str, consumed: bool) -> None:
            if ok and source in ("cpu", "disk", "local"):
                self.stats.local_hits += 1
            elif not ok:
                self.stats.load_failures += 1
            on_result(index, ok, source, consumed)

        await self._loader.load(keys, counted, reader=reader)

    async def fetch(self, keys: Sequence[ChunkKey], holder: PeerId) -> int:
        """Pull these keys from `holder` into our store; returns how many arrived."""
        arrived = []
        await self._loader.load(keys, lambda i, ok, _src, _consumed: ok and arrived.append(i),
                                holders=[(holder,)] * len(keys))
        return len(arrived)

    async def push(self, keys: Sequence[ChunkKey], target: PeerId) -> int:
        """Have `target` copy these chunks from us (the control API's move to a peer)."""
        if target == self.peer_id:
            return sum(1 for k in keys if self.store.tier_of(k) is not None)
        client = await self.pool.get(target)
        budget = self.config.transfer.timeout_s + len(keys) * self.slot_bytes / PUSH_BUDGET_BANDWIDTH
        reply = await client.request(lambda rid: f.Fetch(rid, tuple(keys), self.peer_id), budget)
        return reply.count

    async def ping(self, target: PeerId) -> None:
        """One PING round trip to `target`; raises TransferError if it fails."""
        client = await self.pool.get(target)
        await client.request(lambda rid: f.Ping(rid), self.config.transfer.timeout_s)

    # ---- saves (any thread) ---------------------------------------------------------

    def prepare_save(self, key: ChunkKey) -> StoreTicket | None:
        """A pinned slot for a new chunk, or None if it is stored or being stored;
        raises StoreError when no slot can be freed."""
        return self.store.prepare_store(key)

    def commit_save(self, ticket: StoreTicket, ok: bool = True, length: int | None = None) -> bool:
        """Publish the chunk (then advertise it, on the loop) or drop it."""
        committed = self.store.commit_store(ticket, ok, length)
        if committed and ok:
            self._loop.call_soon_threadsafe(self._sync.saved, ticket.key)
        return committed

    def open_loaded(self, key: ChunkKey) -> LoadTicket:
        """Any thread but the loop when the store has a disk tier (it may read
        the chunk back from disk): pin a held chunk for reading (a load's
        landed result); raises StoreError when it is gone. Give it back with
        `close_loaded`."""
        return self.store.prepare_load(key)

    def open_loaded_in_cpu(self, key: ChunkKey) -> LoadTicket | None:
        """Any thread, the loop included: `open_loaded` for a chunk in CPU;
        None when it is held on disk only (then `open_loaded` on a worker thread)."""
        return self.store.prepare_load_in_cpu(key)

    def close_loaded(self, ticket: LoadTicket) -> None:
        self.store.complete_load(ticket)

    # ---- the store, for operators (loop thread; disk I/O goes to a worker thread) -----

    def held_prefix(self, keys: Sequence[ChunkKey]) -> int:
        """Any thread: how many leading keys this peer's own tiers hold."""
        return self.store.leading_hits(keys)

    def pin(self, keys: Sequence[ChunkKey]) -> list[bool]:
        """Add an operator pin to each held chunk (never evicted while pinned)."""
        return [self.store.pin(k) for k in keys]

    def unpin(self, keys: Sequence[ChunkKey]) -> list[bool]:
        return [self.store.unpin(k) for k in keys]

    async def move(self, keys: Sequence[ChunkKey], tier: str) -> list[bool]:
        """Move each held chunk to "cpu" or "disk"; True where it is now there."""
        return await asyncio.to_thread(lambda: [self.store.move(k, tier) for k in keys])

    async def remove(self, keys: Sequence[ChunkKey]) -> list[ChunkKey]:
        """Drop these chunks from every tier (pinned ones stay) and withdraw them."""
        removed = await asyncio.to_thread(lambda: [k for k in keys if self.store.remove(k)])
        self._sync.withdraw_gone(removed)
        return removed

    async def clear(self, tier: str | None = None) -> list[ChunkKey]:
        """Drop every unpinned chunk from `tier` (None: all) and withdraw what is gone."""
        removed = await asyncio.to_thread(self.store.clear, tier)
        self._sync.withdraw_gone(removed)
        return removed

    async def compress(self, keys: Sequence[ChunkKey], codec: str) -> list[Recoded]:
        """Re-encode each held raw chunk in place with `codec` (see the store's
        `recode`): one outcome per key, with its bytes before and after. A
        chunk in flight is skipped as busy. ConfigError, changing nothing,
        for a codec this peer must not write (see `codec_settings`)."""
        encoder = self.codecs.recoder(codec)
        return await asyncio.to_thread(lambda: [self.store.recode(k, encoder) for k in keys])

    # ---- views ------------------------------------------------------------------------

    def status(self) -> PeerStatus:
        """A snapshot of what this peer knows, for /status, /metrics and inspect."""
        return PeerStatus.of(self.peer_id, self.store.stats(), self.stats, self.membership,
                             self.pool.transports() if self.pool else {}, len(self.directory))

    def members(self) -> frozenset[PeerId]:
        return self.membership.members if self.membership else frozenset({self.peer_id})

    async def control_urls(self, peers: Sequence[PeerId]) -> dict[PeerId, str]:
        """Control API base URLs of these members; dials (bounded) those whose
        URL we lack, since their handshake tells it. Unknown ones are left out."""
        return await self._contacts.control_urls(peers)
