"""The peer: one per engine process (per tensor-parallel rank).

`Peer` is a front of a few verbs over parts with one job each:

- the store (`kvmesh.store.ChunkStore`) and the network
  (`kvmesh.peers.network`), both passed in or built from the config;
- `MeshGossip`: SWIM membership and discovery (the ring);
- `DirectorySync`: advertise/withdraw batches, rebalancing, the event pump;
- `HolderLookup`: prefix lookups and holder queries, with their cache;
- `ChunkLoader`: local tiers, then pulls from holders;
- `ServingAdapter`: what the server asks of us on each inbound connection;
- `InboundConnections`: the accept loop and the caps on inbound connections;
- `ConnectionPool`: outgoing connections, one per remote peer.

Everything runs on the peer's own event loop, except the verbs marked "any
thread", which engines call through the sync facade (`facade.py`).

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
import logging
from typing import Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.directory.shard import Directory
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.membership.swim import Swim
from kvmesh.peers.connections import ConnectionPool
from kvmesh.peers.directory_sync import DirectorySync
from kvmesh.peers.exposure import enforce_exposure
from kvmesh.peers.gossip import MeshGossip
from kvmesh.peers.holder_lookup import Holders, HolderLookup
from kvmesh.peers.inbound import InboundConnections
from kvmesh.peers.loader import ChunkLoader, ResultFn
from kvmesh.peers.network import Endpoint, Network, ReadyStream, TcpNetwork
from kvmesh.peers.serving import PeerCalls, ServingAdapter, ServingIdentity
from kvmesh.peers.stats import PeerStats
from kvmesh.peers.status import PeerStatus
from kvmesh.store import ChunkStore
from kvmesh.store.records import LoadTicket, StoreTicket
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.admission import Admission, ConnectionGate
from kvmesh.transfer.limits import ConnectionCaps, ServerLimits
from kvmesh.transfer.pool_door import PoolDoor, door_path, private_dir
from kvmesh.transfer.reader import ChunkReader
from kvmesh.transfer.server import serve_connection
from kvmesh.transfer.shm import host_id
from kvmesh.transfer.tls import control_scheme
from kvmesh.types import ChunkKey, PeerAddress, PeerId

log = logging.getLogger(__name__)

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
        self.store = store if store is not None else ChunkStore(config.store, slot_bytes, shared=True)
        self.directory = Directory()
        self.peer_id = PeerId("")
        self.control_url = ""
        self._network = network if network is not None else TcpNetwork(config.tls)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host_id = host_id()
        self._ucx_port = 0
        self._control_port = 0
        self._control_urls: dict[PeerId, str] = {}
        self._endpoint: Endpoint | None = None
        self._gossip: MeshGossip | None = None
        self.membership: Swim | None = None
        self.pool: ConnectionPool | None = None
        self._sync: DirectorySync | None = None
        self._lookup: HolderLookup | None = None
        self._loader: ChunkLoader | None = None
        self._serving: ServingAdapter | None = None
        self._door: PoolDoor | None = None
        self._ucx_listener = None
        self._control = None
        self._inbound: InboundConnections | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        enforce_exposure(self.config)  # no listener off loopback without the secret
        mesh, timeout = self.config.mesh, self.config.transfer.timeout_s
        self._loop = asyncio.get_running_loop()
        self._endpoint = await self._network.open(mesh, timeout)
        self.peer_id = self._endpoint.peer_id
        self._gossip = MeshGossip(self._endpoint, mesh, self.namespace, self._on_membership_change,
                                  timeout)
        self.membership = self._gossip.membership
        self.pool = ConnectionPool(self.config, self.namespace, self._hello, self._info,
                                   self._network, self._host_id, self._note_control_port)
        run_dir = private_dir(self.config.run_dir)
        if self.store.pool.shared:
            self._door = PoolDoor(door_path(run_dir, self.peer_id), self.store.pool.share_fd, timeout)
            await self._door.open()
        parts = (self.peer_id, mesh, timeout, self.store, self.directory, self.membership,
                 self.pool, self.stats)
        self._sync = DirectorySync(*parts)
        self._lookup = HolderLookup(*parts)
        self._loader = ChunkLoader(self.peer_id, self.store, self.pool, self._lookup.find_holders,
                                   self._sync.advertise, timeout, self.stats,
                                   is_member=lambda peer: peer in self.membership.members)
        self._serving = ServingAdapter(
            PeerCalls(self._identity, self.membership.state_of, lambda: self.membership.members,
                      self._lookup.matched, self.fetch, self._verify, self.pool.opened,
                      self._on_member),
            self.store, self.directory, self._door, self.stats)
        gate = ConnectionGate(ConnectionCaps.for_this_process())
        self._inbound = InboundConnections(self._serve, gate, self.stats, timeout)
        if self.config.transfer.transport == "ucx":
            from kvmesh.transfer.ucx import UcxListener  # noqa: PLC0415 - optional extra

            self._ucx_listener = UcxListener(
                lambda stream: self._inbound.serve(ReadyStream(stream)))
            self._ucx_port = self._ucx_listener.port
        self._sync.start()
        self._inbound.start(self._endpoint)
        if self.config.control.enabled:
            from kvmesh.peers.control_api import start_control_api  # noqa: PLC0415

            self._control, self.control_url = await start_control_api(self, self.config.control)
            self._control_port = int(self.control_url.rsplit(":", 1)[1])
            self._control_urls[self.peer_id] = self.control_url
        await self._gossip.join()

    async def stop(self, graceful: bool = True) -> None:
        """Leave the mesh (graceful: tell the others now) and release everything.

        The others drop our directory entries when they learn we left, and
        holders re-advertise the keys whose owners changed: that is the
        hand-off. Chunks held only here are lost to the mesh (no push).
        """
        if self._gossip is not None:
            await self._gossip.close(graceful)
        if self._inbound is not None:
            await self._inbound.close()
        if self._sync is not None:
            await self._sync.stop()
        if self._control is not None:
            await self._control.cleanup()
        if self._ucx_listener is not None:
            self._ucx_listener.close()
        if self.pool is not None:
            await self.pool.close()
        if self._door is not None:
            await self._door.close()
        if self._endpoint is not None:
            self._endpoint.close()
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
            self._loop.call_soon_threadsafe(self._saved, ticket.key)
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

    def _saved(self, key: ChunkKey) -> None:
        self.stats.chunks_saved += 1
        self._sync.advertise([key])

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
        self._withdraw_gone(removed)
        return removed

    async def clear(self, tier: str | None = None) -> list[ChunkKey]:
        """Drop every unpinned chunk from `tier` (None: all) and withdraw what is gone."""
        removed = await asyncio.to_thread(self.store.clear, tier)
        self._withdraw_gone(removed)
        return removed

    def _withdraw_gone(self, removed: list[ChunkKey]) -> None:
        gone = [k for k in removed if self.store.tier_of(k) is None]
        if gone:
            self._sync.withdraw(gone)

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
        unknown = [p for p in peers if p not in self._control_urls and p != self.peer_id]
        await asyncio.gather(*(self.pool.get(p) for p in unknown), return_exceptions=True)
        return {p: self._control_urls[p] for p in peers if p in self._control_urls}

    # ---- internals ---------------------------------------------------------------------

    def _identity(self) -> ServingIdentity:
        return ServingIdentity(self.peer_id, self.namespace, self._host_id, self._ucx_port,
                               self._control_port)

    def _hello(self) -> f.Hello:
        return f.Hello(self.peer_id, f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, self.namespace,
                       "", "", handshake.new_nonce())

    def _info(self) -> f.Info:
        """What we tell a server once both proofs are done (our pool we share
        only as a server, through our own door)."""
        return f.Info(self._host_id, self._ucx_port, self._control_port, b"")

    async def _serve(self, stream, admission: Admission) -> str:
        timeout = self.config.transfer.timeout_s
        return await serve_connection(stream, self._serving, self.config.mesh.secret, timeout,
                                      ServerLimits.default(timeout), admission)

    def _on_membership_change(self, joined: set[PeerId], left: set[PeerId]) -> None:
        """Swim's callback (loop thread, must not block): forget the gone, rebalance later."""
        log.info("mesh change at %s: joined %s, left %s", self.peer_id, sorted(joined), sorted(left))
        for peer in left:
            self.directory.drop_holder(peer)
            if self.pool is not None:
                self.pool.drop(peer)
        self._lookup.ring_changed()
        self._sync.ring_changed()

    async def _verify(self, claimed: PeerId, nonce: bytes) -> bool:
        """Ask `claimed`, over our own connection to it, whether it opened the
        connection whose HELLO carried `nonce` (see transfer.server)."""
        client = await self.pool.get(claimed)
        reply = await client.request(lambda rid: f.Vouch(rid, nonce), self.config.transfer.timeout_s)
        return reply.mine

    def _on_member(self, peer: PeerId, info: f.Info) -> None:
        """A member proved its peer id on an inbound connection."""
        self._gossip.learn(peer)
        self._note_control_port(peer, info.control_port)

    def _note_control_port(self, peer: PeerId, port: int) -> None:
        if port:
            host = PeerAddress.parse(peer).host
            scheme = control_scheme(self.config.tls)
            self._control_urls[peer] = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
