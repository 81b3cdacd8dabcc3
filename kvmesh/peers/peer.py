"""The peer: one per engine process (per tensor-parallel rank).

Owns the chunk store, this peer's directory shard, its view of the mesh
(membership and ring), outgoing connections and the listeners. Everything
here runs on the peer's own event loop; engines reach it through the sync
facade in `facade.py`.

Data flow:
  lookup   local store, then one LOOKUP per ring owner in parallel
  load     ChunkLoader: local tiers, then PULL from holders into store slots
  save     store commit, then ADVERTISE to the key's ring owners (batched)
  evict    store events -> WITHDRAW to the owners (batched)
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.errors import KvmeshError
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.mesh.directory import Directory
from kvmesh.mesh.membership import StaticMembership
from kvmesh.mesh.store import ChunkStore
from kvmesh.peers.connections import ConnectionPool, is_mesh_failure
from kvmesh.peers.loader import ChunkLoader, ResultFn
from kvmesh.peers.stats import PeerStats
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.server import serve_connection
from kvmesh.transfer.shm import host_id
from kvmesh.transfer.streams import TcpStream
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)

GOSSIP_INTERVAL_S = 0.5
EVENT_PUMP_INTERVAL_S = 0.05
HOLDER_CACHE_KEYS = 1 << 16
HOLDER_CACHE_TTL_S = 5.0


class Peer:
    def __init__(self, config: KvmeshConfig, hasher: ChunkHasher, slot_bytes: int) -> None:
        self.config = config
        self.hasher = hasher
        # Peers of one mesh share a namespace without the per-request cache salt.
        self.namespace = hasher.namespace.with_salt("").digest()
        self.slot_bytes = slot_bytes
        self.stats = PeerStats()
        self.store = ChunkStore(config.store, slot_bytes, shared=True)
        self.directory = Directory()
        self.host_id = host_id()
        self.shm_path = self.store.shm_path or ""
        self.ucx_port = 0
        self.control_port = 0
        self.control_urls: dict[str, str] = {}  # peer id -> control API base URL
        self.peer_id = PeerId("")
        self.membership: StaticMembership | None = None
        self.pool: ConnectionPool | None = None
        self.loader: ChunkLoader | None = None
        self.control_url = ""
        self._sock: socket.socket | None = None
        self._ucx_listener = None
        self._tasks: list[asyncio.Task] = []
        self._serving: set[asyncio.Task] = set()
        self._holder_cache: OrderedDict[bytes, tuple[tuple[str, ...], float]] = OrderedDict()
        self._outbox: dict[tuple[str, bool], list[bytes]] = defaultdict(list)
        self._flush_scheduled = False
        self._control = None

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        mesh = self.config.mesh
        self._sock = socket.create_server((mesh.host, mesh.port), reuse_port=False)
        self._sock.setblocking(False)
        self.peer_id = PeerAddress(mesh.host, self._sock.getsockname()[1]).peer_id
        self.membership = StaticMembership(self.peer_id, mesh.vnodes, self._on_membership_change)
        self.pool = ConnectionPool(self.config, self.namespace, self._hello, self.note_control_port)
        self.loader = ChunkLoader(self.peer_id, self.store, self.pool, self.find_holders,
                                  self.advertise, self.config.transfer.timeout_s, self.stats)
        if self.config.transfer.transport == "ucx":
            from kvmesh.transfer.ucx import UcxListener  # noqa: PLC0415 - optional extra

            self._ucx_listener = UcxListener(self._serve_stream)
            self.ucx_port = self._ucx_listener.port
        self._tasks = [loop.create_task(self._accept_loop()),
                       loop.create_task(self._gossip_loop()),
                       loop.create_task(self._event_pump())]
        if self.config.control.enabled:
            from kvmesh.peers.control_api import start_control_api  # noqa: PLC0415

            self._control, self.control_url = await start_control_api(self, self.config.control)
            self.control_port = int(self.control_url.rsplit(":", 1)[1])
            self.control_urls[self.peer_id] = self.control_url
        await self._join([s.peer_id for s in mesh.seeds])

    async def stop(self) -> None:
        for task in self._tasks + list(self._serving):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._serving, return_exceptions=True)
        if self._control is not None:
            await self._control.cleanup()
        if self._ucx_listener is not None:
            self._ucx_listener.close()
        if self.pool is not None:
            await self.pool.close()
        if self._sock is not None:
            self._sock.close()
        self.store.close()

    def _hello(self) -> f.Hello:
        return f.Hello(self.peer_id, f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, self.namespace,
                       self.host_id, self.shm_path, handshake.new_nonce(), self.ucx_port,
                       self.control_port)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            self._spawn_serving(self._serve_stream(TcpStream(conn)))

    def _spawn_serving(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve_stream(self, stream) -> None:
        await serve_connection(stream, self, self.config.mesh.secret, self.config.transfer.timeout_s)

    # ---- membership ----------------------------------------------------------

    async def _join(self, seeds: Sequence[str]) -> None:
        self.membership.learn([s for s in seeds if s != self.peer_id])
        await asyncio.gather(*(self._exchange_members(p) for p in self.membership.others()))

    async def _gossip_loop(self) -> None:
        while True:
            await asyncio.sleep(GOSSIP_INTERVAL_S * (0.5 + random.random()))
            others = self.membership.others()
            if others:
                await self._exchange_members(random.choice(others))

    async def _exchange_members(self, peer: PeerId) -> None:
        timeout = self.config.transfer.timeout_s
        try:
            client = await self.pool.get(peer)
            reply = await client.request(lambda rid: f.Members(rid, tuple(self.membership.members)),
                                         timeout)
        except Exception as exc:  # noqa: BLE001
            if not is_mesh_failure(exc):
                raise
            self.stats.note_failure(f"contact {peer}: {exc}")
            if self.membership.contact_failed(peer):
                log.info("peer %s considered dead", peer)
            return
        self.membership.contact_ok(peer)
        self.membership.learn(reply.peers)

    def _on_membership_change(self, joined: set[PeerId], left: set[PeerId]) -> None:
        for peer in left:
            self.directory.drop_holder(peer)
            if self.pool is not None:
                self.pool.drop(peer)
        self._holder_cache.clear()
        self._rebalance()

    def _rebalance(self) -> None:
        """Re-advertise what we hold: owners under the new ring may lack it.

        Sends only to owners that are not ourselves; re-advertising to an
        owner that already has the entry is harmless.
        """
        keys = self.store.keys()
        if keys:
            self.advertise(keys)

    # ---- directory ------------------------------------------------------------

    def advertise(self, keys: Sequence[bytes]) -> None:
        self._queue(keys, withdraw=False)

    def withdraw(self, keys: Sequence[bytes]) -> None:
        self._queue(keys, withdraw=True)

    def _queue(self, keys: Sequence[bytes], withdraw: bool) -> None:
        ring, r = self.membership.ring, self.config.mesh.replication
        for key in keys:
            for owner in ring.owners(key, r):
                if owner == self.peer_id:
                    (self.directory.remove if withdraw else self.directory.add)(self.peer_id, [key])
                else:
                    self._outbox[(owner, withdraw)].append(key)
        if self._outbox and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let everything queued in this loop turn join the batch
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, defaultdict(list)
        await asyncio.gather(*(self._send_batch(owner, withdraw, keys)
                               for (owner, withdraw), keys in outbox.items()))

    async def _send_batch(self, owner: str, withdraw: bool, keys: list[bytes]) -> None:
        kind = f.Withdraw if withdraw else f.Advertise
        try:
            client = await self.pool.get(PeerId(owner))
            for start in range(0, len(keys), f.MAX_KEYS_PER_REQUEST):
                batch = tuple(keys[start:start + f.MAX_KEYS_PER_REQUEST])
                await client.notify(kind(self.peer_id, batch), self.config.transfer.timeout_s)
        except Exception as exc:  # noqa: BLE001
            if not is_mesh_failure(exc):
                raise
            self.stats.note_failure(f"{kind.__name__.lower()} to {owner}: {exc}")

    async def _event_pump(self) -> None:
        while True:
            await asyncio.sleep(EVENT_PUMP_INTERVAL_S)
            gone = [k for ev in self.store.take_events() if ev.kind in ("evicted", "removed")
                    for k in ev.keys]
            if gone:
                self.withdraw(gone)

    # ---- lookups and loads ------------------------------------------------------

    async def find_holders(self, keys: Sequence[bytes], fresh: bool = False) -> list[tuple[str, ...]]:
        """Holders of each key per the directory owners; () where unknown.

        A load right after its lookup reuses the lookup's answer (kept for
        HOLDER_CACHE_TTL_S); `fresh` always asks the owners.
        """
        now = time.monotonic()
        out: list[tuple[str, ...] | None] = [None] * len(keys)
        if not fresh:
            for i, key in enumerate(keys):
                cached = self._holder_cache.get(key)
                if cached is not None and now - cached[1] < HOLDER_CACHE_TTL_S:
                    out[i] = cached[0]
        missing = [i for i, h in enumerate(out) if h is None]
        if missing:
            answers = await self._ask_owners([keys[i] for i in missing])
            for i, holders in zip(missing, answers):
                out[i] = holders
                self._remember(keys[i], holders)
        return [h or () for h in out]

    async def _ask_owners(self, keys: list[bytes]) -> list[tuple[str, ...]]:
        ring, r = self.membership.ring, self.config.mesh.replication
        answers: list[tuple[str, ...]] = [()] * len(keys)
        pending = {i: ring.owners(k, r) for i, k in enumerate(keys)}
        while pending:
            by_owner: dict[str, list[int]] = defaultdict(list)
            for i, owners in pending.items():
                if owners:
                    by_owner[owners.pop(0)].append(i)
            if not by_owner:
                break
            replies = await asyncio.gather(*(self._ask_owner(o, [keys[i] for i in idx])
                                             for o, idx in by_owner.items()))
            for (owner, idx), reply in zip(by_owner.items(), replies):
                for pos, i in enumerate(idx):
                    if reply is not None:
                        answers[i] = reply[pos]
                        pending.pop(i, None)
            pending = {i: o for i, o in pending.items() if o}
        return answers

    async def _ask_owner(self, owner: str, keys: list[bytes]) -> list[tuple[str, ...]] | None:
        """The owner's answer, or None if it could not be asked (try the next owner)."""
        if owner == self.peer_id:
            return [self.directory.holders(k) for k in keys]
        try:
            client = await self.pool.get(PeerId(owner))
            out: list[tuple[str, ...]] = []
            for start in range(0, len(keys), f.MAX_KEYS_PER_REQUEST):
                batch = tuple(keys[start:start + f.MAX_KEYS_PER_REQUEST])
                reply = await client.request(lambda rid: f.Lookup(rid, batch),
                                             self.config.transfer.timeout_s)
                out.extend(reply.holders)
            return out
        except Exception as exc:  # noqa: BLE001
            if not is_mesh_failure(exc):
                raise
            self.stats.note_failure(f"lookup at {owner}: {exc}")
            return None

    def _remember(self, key: bytes, holders: tuple[str, ...]) -> None:
        self._holder_cache[key] = (holders, time.monotonic())
        self._holder_cache.move_to_end(key)
        if len(self._holder_cache) > HOLDER_CACHE_KEYS:
            self._holder_cache.popitem(last=False)

    async def lookup_prefix(self, keys: Sequence[bytes]) -> int:
        """Leading keys held here or anywhere in the mesh."""
        self.stats.lookups += 1
        self.stats.lookup_chunks += len(keys)
        local = self.store.leading_hits(keys)
        matched = local
        if local < len(keys):
            holders = await self.find_holders(keys[local:], fresh=True)
            for hs in holders:
                if not any(h != self.peer_id for h in hs):
                    break
                matched += 1
        self.stats.lookup_hit_chunks += matched
        return matched

    async def load(self, keys: Sequence[bytes], on_result: ResultFn) -> None:
        def counted(index: int, ok: bool, source: str) -> None:
            if ok and source in ("cpu", "disk", "local"):
                self.stats.local_hits += 1
            elif not ok:
                self.stats.load_failures += 1
            on_result(index, ok, source)

        await self.loader.load(keys, counted)

    # ---- ServingNode (called by transfer.server) -----------------------------

    def on_connected(self, hello: f.Hello) -> None:
        if not hello.peer_id:
            return  # a lookup client of our own engine, not a mesh member
        self.membership.learn([hello.peer_id], direct=True)
        self.membership.contact_ok(PeerId(hello.peer_id))
        self.note_control_port(hello.peer_id, hello.control_port)

    def note_control_port(self, peer_id: str, port: int) -> None:
        if port:
            self.control_urls[peer_id] = f"http://{PeerAddress.parse(peer_id).host}:{port}"

    def holders(self, keys: tuple[bytes, ...]) -> list[tuple[str, ...]]:
        return [self.directory.holders(k) for k in keys]

    def on_advertise(self, holder: str, keys: tuple[bytes, ...]) -> None:
        if holder in self.membership.members:
            self.directory.add(holder, keys)

    def on_withdraw(self, holder: str, keys: tuple[bytes, ...]) -> None:
        self.directory.remove(holder, keys)

    def members_exchange(self, peers: tuple[str, ...]) -> tuple[str, ...]:
        self.membership.learn(peers)
        return tuple(self.membership.members)

    async def prefix(self, keys: tuple[bytes, ...]) -> int:
        return await self.lookup_prefix(keys)

    async def fetch(self, keys: Sequence[bytes], holder: str) -> int:
        """Pull these keys from `holder` into our store; returns how many arrived."""
        arrived = []
        await self.loader.load(keys, lambda i, ok, _src: ok and arrived.append(i),
                               holders=[(holder,)] * len(keys))
        return len(arrived)

    async def push(self, keys: Sequence[bytes], target: str) -> int:
        """Have `target` copy these chunks from us (the control API's move to a peer)."""
        if target == self.peer_id:
            return sum(1 for k in keys if self.store.tier_of(k) is not None)
        client = await self.pool.get(PeerId(target))
        budget = self.config.transfer.timeout_s + len(keys) * self.slot_bytes / (50 << 20)
        reply = await client.request(lambda rid: f.Fetch(rid, tuple(keys), self.peer_id), budget)
        return reply.count

    def open_chunk(self, key: bytes):
        try:
            ticket = self.store.prepare_load(key)
        except KvmeshError:
            return None
        self.stats.bytes_served += ticket.length
        return ServedChunk(ticket, ticket.view, ticket.length, ticket.checksum,
                           self.store.offset(ticket.slot))

    def close_chunk(self, served: "ServedChunk") -> None:
        self.store.complete_load(served.ticket)


@dataclass(frozen=True, slots=True)
class ServedChunk:
    """A pinned chunk as the server sends it."""

    ticket: object
    view: memoryview
    length: int
    checksum: int
    offset: int
