"""The parts of one peer, built in the order they need each other, and closed.

`PeerParts` owns the lifetime of every part `Peer` is a front of, except the
store and the directory, which the peer holds from its construction on:

    endpoint    the mesh sockets (`kvmesh.peers.network`)
    gossip      SWIM membership and discovery (`MeshGossip`)
    contacts    what we tell in handshakes, members' control URLs (`Contacts`)
    pool        outgoing connections, one per remote peer (`ConnectionPool`)
    door        our pool's door, where the store shares its pool (`PoolDoor`)
    sync        advertise/withdraw, rebalancing, the event pump (`DirectorySync`)
    lookup      prefix lookups and holder queries (`HolderLookup`)
    loader      local tiers, then pulls from holders (`ChunkLoader`)
    serving     what the server asks of us (`ServingAdapter`)
    inbound     the accept loop and its caps (`InboundConnections`)
    ucx         the UCX listener, with KVMESH_TRANSPORT=ucx
    control     the control API, when enabled

Starting is three calls: `open` builds the parts and starts listening;
`open_control` starts the control API over the front (it serves the front's
verbs, so the front must be bound to the parts first); `join` joins the mesh,
last, once everything that answers others is up. `close` tears down what was
built, whatever step failed: gossip first (leave the mesh), then the parts
that take or make work (inbound, sync, control, UCX), then the connections
that work went out on, the door, and the sockets last. A part is None until
it is built.

Loop thread.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.directory.shard import Directory
from kvmesh.peers.connections import ConnectionPool
from kvmesh.peers.contacts import Contacts
from kvmesh.peers.directory_parts import DirectoryParts
from kvmesh.peers.directory_sync import DirectorySync
from kvmesh.peers.exposure import enforce_exposure
from kvmesh.peers.gossip import MeshGossip
from kvmesh.peers.holder_lookup import HolderLookup
from kvmesh.peers.inbound import InboundConnections
from kvmesh.peers.loader import ChunkLoader
from kvmesh.peers.network import Endpoint, Network, ReadyStream
from kvmesh.peers.serving import PeerCalls, ServingAdapter
from kvmesh.peers.stats import PeerStats
from kvmesh.store import ChunkStore
from kvmesh.store.chunk_codec import Encoder
from kvmesh.transfer.admission import Admission, ConnectionGate
from kvmesh.transfer.limits import ConnectionCaps, ServerLimits
from kvmesh.transfer.pool_door import PoolDoor, door_path, private_dir
from kvmesh.transfer.server import serve_connection
from kvmesh.types import ChunkKey, PeerId

log = logging.getLogger(__name__)

# fetch(keys, holder) -> chunks that arrived: the front's verb, for FETCH requests.
FetchFn = Callable[[Sequence[ChunkKey], PeerId], Awaitable[int]]


class PeerParts:
    """See the module docstring."""

    def __init__(self, config: KvmeshConfig, namespace: bytes, store: ChunkStore,
                 directory: Directory, stats: PeerStats, network: Network,
                 wire_codec: Encoder | None = None) -> None:
        self._config = config
        self._wire_codec = wire_codec  # streamed pulls send raw chunks encoded
        self._namespace = namespace
        self._store = store
        self._directory = directory
        self._stats = stats
        self._network = network
        self.endpoint: Endpoint | None = None
        self.gossip: MeshGossip | None = None
        self.contacts: Contacts | None = None
        self.pool: ConnectionPool | None = None
        self.door: PoolDoor | None = None
        self.sync: DirectorySync | None = None
        self.lookup: HolderLookup | None = None
        self.loader: ChunkLoader | None = None
        self.serving: ServingAdapter | None = None
        self.inbound: InboundConnections | None = None
        self.ucx = None
        self.control = None

    async def open(self, fetch: FetchFn) -> None:
        """Build every part and start listening (nothing joins the mesh yet)."""
        enforce_exposure(self._config)  # no listener off loopback without the secret
        await self._open_mesh()
        self._build_workers(fetch)
        self._open_inbound()
        self.sync.start()
        self.inbound.start(self.endpoint)

    async def open_control(self, front) -> str:
        """Start the control API over `front` (the `Peer`); its base URL."""
        from kvmesh.peers.control_api import start_control_api  # noqa: PLC0415

        self.control, url = await start_control_api(front, self._config.control)
        self.contacts.note_own_control_url(url)
        return url

    async def join(self) -> None:
        await self.gossip.join()

    async def close(self, graceful: bool) -> None:
        """Leave the mesh (graceful: tell the others now) and close every part built."""
        if self.gossip is not None:
            await self.gossip.close(graceful)
        if self.inbound is not None:
            await self.inbound.close()
        if self.sync is not None:
            await self.sync.stop()
        if self.control is not None:
            await self.control.cleanup()
        if self.ucx is not None:
            self.ucx.close()
        if self.pool is not None:
            await self.pool.close()
        if self.door is not None:
            await self.door.close()
        if self.endpoint is not None:
            self.endpoint.close()

    # ---- the steps of open -------------------------------------------------------

    async def _open_mesh(self) -> None:
        """The sockets, gossip, contacts, outgoing connections, and our pool's door."""
        mesh, timeout = self._config.mesh, self._config.transfer.timeout_s
        self.endpoint = await self._network.open(mesh, timeout)
        peer_id = self.endpoint.peer_id
        self.gossip = MeshGossip(self.endpoint, mesh, self._namespace, self._on_membership_change,
                                 timeout)
        # The pool, built next, is how contacts reach members (it needs their HELLO).
        self.contacts = Contacts(peer_id, self._namespace, self._config.tls, timeout,
                                 lambda peer: self.pool.get(peer), self.gossip.learn)
        contacts = self.contacts
        self.pool = ConnectionPool(self._config, self._namespace, contacts.hello, contacts.info,
                                   self._network, contacts.host_id, contacts.note_control_port)
        run_dir = private_dir(self._config.run_dir)
        path = door_path(run_dir, peer_id)
        if path is None and self._store.pool.shared:
            log.warning("KVMESH_RUN_DIR %s is too long for a Unix socket path: this peer shares "
                        "no pool with same-host peers (they pull over TCP)", run_dir)
        elif self._store.pool.shared:
            self.door = PoolDoor(path, self._store.pool.share_fd, timeout)
            await self.door.open()

    def _build_workers(self, fetch: FetchFn) -> None:
        """The parts that keep the directory, find holders, load, and serve others."""
        peer_id, membership, timeout = (self.endpoint.peer_id, self.gossip.membership,
                                        self._config.transfer.timeout_s)
        parts = DirectoryParts(peer_id, self._config.mesh, timeout, self._store, self._directory,
                               membership, self.pool, self._stats)
        self.sync = DirectorySync(parts)
        self.lookup = HolderLookup(parts)
        self.loader = ChunkLoader(peer_id, self._store, self.pool, self.lookup.find_holders,
                                  self.sync.advertise, timeout, self._stats,
                                  is_member=lambda peer: peer in membership.members)
        contacts = self.contacts
        self.serving = ServingAdapter(
            PeerCalls(contacts.identity, membership.state_of, lambda: membership.members,
                      self.lookup.matched, fetch, contacts.verify, self.pool.opened,
                      contacts.on_member),
            self._store, self._directory, self.door, self._stats, self._wire_codec)

    def _open_inbound(self) -> None:
        """The accept loop's admission (not started yet), and the UCX listener if asked for."""
        gate = ConnectionGate(ConnectionCaps.for_this_process())
        self.inbound = InboundConnections(self._serve, gate, self._stats,
                                          self._config.transfer.timeout_s)
        if self._config.transfer.transport == "ucx":
            from kvmesh.transfer.ucx import UcxListener  # noqa: PLC0415 - optional extra

            self.ucx = UcxListener(lambda stream: self.inbound.serve(ReadyStream(stream)))
            self.contacts.note_ucx_port(self.ucx.port)

    # ---- callbacks -----------------------------------------------------------------

    async def _serve(self, stream, admission: Admission) -> str:
        timeout = self._config.transfer.timeout_s
        return await serve_connection(stream, self.serving, self._config.mesh.secret, timeout,
                                      ServerLimits.default(timeout), admission)

    def _on_membership_change(self, joined: set[PeerId], left: set[PeerId]) -> None:
        """Swim's callback (loop thread, must not block): forget the gone, rebalance later."""
        log.info("mesh change at %s: joined %s, left %s", self.endpoint.peer_id, sorted(joined),
                 sorted(left))
        for peer in left:
            self._directory.drop_holder(peer)
            if self.contacts is not None:
                self.contacts.forget(peer)
            if self.pool is not None:
                self.pool.drop(peer)
        self.lookup.ring_changed()
        self.sync.ring_changed()
