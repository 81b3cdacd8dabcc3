"""The peer: one per engine process (per tensor-parallel rank).

Owns the chunk store, this peer's directory shard, its view of the mesh
(SWIM membership and ring, in `gossip.py`), outgoing connections and the
listeners. Everything here runs on the peer's own event loop; engines reach
it through the sync facade in `facade.py`.

Data flow:
  lookup   local store, then one LOOKUP per ring owner in parallel
  load     ChunkLoader: local tiers, then PULL from holders into store slots
  save     store commit, then ADVERTISE to the key's ring owners (batched)
  evict    store events -> WITHDRAW to the owners (batched)
  ring     a member joins: ADVERTISE held keys to their new owners only;
           a member dies or leaves: drop its directory entries, same re-advertise
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Iterable, Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.errors import KvmeshError
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.hashring.ring import HashRing
from kvmesh.directory.shard import Directory
from kvmesh.directory.lookup_plan import plan_queries
from kvmesh.directory.placement import replicas
from kvmesh.directory.rebalance import new_owners, unowned
from kvmesh.store.chunk_store import ChunkStore
from kvmesh.store.events import EVICTED, REMOVED
from kvmesh.membership.swim import Swim
from kvmesh.membership.states import MemberState
from kvmesh.peers.connections import ConnectionPool, is_mesh_failure
from kvmesh.peers.gossip import MeshGossip, open_listeners
from kvmesh.peers.loader import ChunkLoader, ReaderFn, ResultFn
from kvmesh.peers.stats import PeerStats
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.server import serve_connection
from kvmesh.transfer.shm import host_id
from kvmesh.transfer.streams import TcpStream
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)

# Withdrawals that come in a burst (an eviction run) go out together: after
# withdrawing, the pump lets this long go by before it takes events again.
EVENT_PUMP_INTERVAL_S = 0.05
REBALANCE_BATCH_KEYS = 4096  # keys placed per loop turn while rebalancing
# A ring that stayed unchanged this many probe periods has spread through the
# mesh: entries this peer no longer owns can go (lookups from peers still on
# the old ring get a miss meanwhile, never a wrong holder).
PRUNE_AFTER_PROBES = 10
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
        self.membership: Swim | None = None
        self._gossip: MeshGossip | None = None
        self._placed: HashRing | None = None  # the ring our keys were last advertised under
        # Whether this peer owns every directory entry (a small mesh): set on
        # the loop thread at each ring change, read by engine threads.
        self.owns_whole_directory = config.mesh.full_directory_upto >= 1
        self._ring_changed = asyncio.Event()
        self._withdrawals_due = asyncio.Event()  # set through _on_store_event
        self._withdrawal_noted = False  # a wake-up is on its way to the pump
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
        mesh, timeout = self.config.mesh, self.config.transfer.timeout_s
        listeners = await open_listeners(mesh, timeout)
        self._sock, self.peer_id = listeners.sock, listeners.peer_id
        self._gossip = MeshGossip(listeners, mesh, self.namespace, self._on_membership_change,
                                  timeout)
        self.membership = self._gossip.membership
        self._placed = HashRing([self.peer_id], vnodes=mesh.vnodes)
        self.pool = ConnectionPool(self.config, self.namespace, self._hello, self.note_control_port)
        self.loader = ChunkLoader(self.peer_id, self.store, self.pool, self.find_holders,
                                  self.advertise, self.config.transfer.timeout_s, self.stats)
        if self.config.transfer.transport == "ucx":
            from kvmesh.transfer.ucx import UcxListener  # noqa: PLC0415 - optional extra

            self._ucx_listener = UcxListener(self._serve_stream)
            self.ucx_port = self._ucx_listener.port
        self.store.set_event_listener(partial(self._on_store_event, loop))
        self._tasks = [loop.create_task(self._accept_loop()),
                       loop.create_task(self._rebalance_loop()),
                       loop.create_task(self._event_pump())]
        if self.config.control.enabled:
            from kvmesh.peers.control_api import start_control_api  # noqa: PLC0415

            self._control, self.control_url = await start_control_api(self, self.config.control)
            self.control_port = int(self.control_url.rsplit(":", 1)[1])
            self.control_urls[self.peer_id] = self.control_url
        await self._gossip.join()

    async def stop(self, graceful: bool = True) -> None:
        """Leave the mesh (graceful: tell the others now) and release everything.

        The others drop our directory entries when they learn we left, and
        holders re-advertise the keys whose owners changed: that is the
        hand-off. Chunks held only here are lost to the mesh (no push).
        """
        if self._gossip is not None:
            await self._gossip.close(graceful)
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
        self.store.set_event_listener(None)
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

    def _on_membership_change(self, joined: set[PeerId], left: set[PeerId]) -> None:
        """Swim's callback (loop thread, must not block): forget the gone, rebalance later."""
        log.info("mesh change at %s: joined %s, left %s", self.peer_id, sorted(joined), sorted(left))
        for peer in left:
            self.directory.drop_holder(peer)
            if self.pool is not None:
                self.pool.drop(peer)
        self._holder_cache.clear()
        ring = self.membership.ring
        self.owns_whole_directory = self._replicas(ring) >= len(ring)
        self._ring_changed.set()

    async def _rebalance_loop(self) -> None:
        """Re-advertise held keys to the owners each ring change made new for
        them; once the ring has been quiet for a while, forget the directory
        entries this peer no longer owns.

        Changes that arrive while a pass runs are folded into the next pass,
        which compares against the ring the previous one advertised under.
        Keys are placed in batches so lookups keep flowing meanwhile.
        """
        quiet_s = PRUNE_AFTER_PROBES * self.config.mesh.probe_interval_s
        while True:
            await self._ring_changed.wait()
            self._ring_changed.clear()
            old, new = self._placed, self.membership.ring.copy()
            self._placed = new
            keys = self.store.keys()
            for start in range(0, len(keys), REBALANCE_BATCH_KEYS):
                batch = keys[start:start + REBALANCE_BATCH_KEYS]
                moved = new_owners(batch, old, new, self._replicas(old), self._replicas(new))
                for owner, owned in moved.items():
                    self._queue_to(owner, owned, withdraw=False)
                await asyncio.sleep(0)
            # Not asyncio.wait_for: with it, stop() hung in about one test run
            # in five, this task cancelling while wait_for's inner Event.wait
            # task stayed pending. asyncio.wait never awaits the inner task.
            changed = asyncio.ensure_future(self._ring_changed.wait())
            try:
                done, _ = await asyncio.wait({changed}, timeout=quiet_s)
            finally:
                changed.cancel()
            if not done:
                await self._prune_directory()

    async def _prune_directory(self) -> None:
        """Forget entries for keys this peer does not own on the current ring."""
        keys = self.directory.keys()
        for start in range(0, len(keys), REBALANCE_BATCH_KEYS):
            ring = self.membership.ring
            batch = keys[start:start + REBALANCE_BATCH_KEYS]
            self.directory.forget(unowned(batch, ring, self._replicas(ring), self.peer_id))
            await asyncio.sleep(0)

    # ---- directory ------------------------------------------------------------

    def advertise(self, keys: Sequence[bytes]) -> None:
        self._queue(keys, withdraw=False)

    def withdraw(self, keys: Sequence[bytes]) -> None:
        self._queue(keys, withdraw=True)

    def _replicas(self, ring: HashRing) -> int:
        """Directory owners per key on `ring` (see kvmesh.directory.placement)."""
        mesh = self.config.mesh
        return replicas(len(ring), mesh.replication, mesh.full_directory_upto)

    def _queue(self, keys: Sequence[bytes], withdraw: bool) -> None:
        ring = self.membership.ring
        r = self._replicas(ring)
        for key in keys:
            for owner in ring.owners(key, r):
                self._queue_to(owner, [key], withdraw)

    def _queue_to(self, owner: PeerId, keys: Sequence[bytes], withdraw: bool) -> None:
        if owner == self.peer_id:
            (self.directory.remove if withdraw else self.directory.add)(self.peer_id, keys)
            return
        self._outbox[(owner, withdraw)].extend(keys)
        if not self._flush_scheduled:
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

    def _on_store_event(self, loop: asyncio.AbstractEventLoop, kind: str) -> None:
        """The store's event listener (any thread, under the store lock): wake
        the pump for a withdrawal, once until it has run."""
        if kind in (EVICTED, REMOVED) and not self._withdrawal_noted:
            self._withdrawal_noted = True
            try:
                loop.call_soon_threadsafe(self._withdrawals_due.set)
            except RuntimeError:
                pass  # the loop is closed: the peer has stopped

    async def _event_pump(self) -> None:
        """Withdraw chunks the store dropped, and re-advertise everything after
        a refuted death. Woken by the store when it drops a chunk (polling every
        50 ms, as it once did, cost an idle engine ~20 wake-ups a second), and
        once a probe period to check the incarnation."""
        loop = asyncio.get_running_loop()
        incarnation = 0
        while True:
            timer = loop.call_later(self.config.mesh.probe_interval_s, self._withdrawals_due.set)
            try:
                await self._withdrawals_due.wait()
            finally:
                timer.cancel()
            self._withdrawals_due.clear()
            self._withdrawal_noted = False  # before taking: a later drop wakes us again
            gone = [k for ev in self.store.take_events() if ev.kind in (EVICTED, REMOVED)
                    for k in ev.keys]
            if gone:
                self.withdraw(gone)
            if self.membership.incarnation != incarnation:
                # We refuted a suspicion or a death: whoever buried us dropped our
                # entries without our ring changing, so advertise everything again.
                incarnation = self.membership.incarnation
                self.advertise(self.store.keys())
            if gone:
                await asyncio.sleep(EVENT_PUMP_INTERVAL_S)  # let the rest of a burst gather

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
        """Holders per key, asking as few owners as possible (see lookup_plan).

        Keys we own are answered here; an owner that cannot be asked is struck
        off and its keys are planned again over their other owners.
        """
        ring = self.membership.ring
        r = self._replicas(ring)
        answers: list[tuple[str, ...]] = [()] * len(keys)
        candidates = [ring.owners(k, r) for k in keys]
        todo = list(range(len(keys)))
        while todo:
            plan = plan_queries([candidates[i] for i in todo], self.peer_id)
            for j in plan.pop(self.peer_id, ()):
                answers[todo[j]] = self.directory.holders(keys[todo[j]])
            asks = [(owner, [todo[j] for j in idx]) for owner, idx in plan.items()]
            coros = [self._ask_owner(owner, [keys[i] for i in idx]) for owner, idx in asks]
            # One owner (the common case for short prompts): no task for gather to make.
            replies = [await coros[0]] if len(coros) == 1 else await asyncio.gather(*coros)
            todo = []
            for (owner, idx), reply in zip(asks, replies):
                if reply is not None:
                    for i, holders in zip(idx, reply):
                        answers[i] = holders
                    continue
                for i in idx:
                    candidates[i] = [o for o in candidates[i] if o != owner]
                todo += [i for i in idx if candidates[i]]
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

    def matched_in_own_directory(self, keys: Sequence[bytes], local: int) -> int:
        """Extend `local` leading store hits with the keys this peer's own
        directory says another peer holds; what lookup_prefix answers when
        `owns_whole_directory`. Any thread: one dict read and one tuple built
        per key, each atomic under the GIL (holders are str peer ids)."""
        return local + self._held_elsewhere(self.directory.holders(k) for k in keys[local:])

    async def lookup_prefix(self, keys: Sequence[bytes]) -> int:
        """Leading keys held here or anywhere in the mesh."""
        self.stats.lookups += 1
        self.stats.lookup_chunks += len(keys)
        local = self.store.leading_hits(keys)
        matched = local
        if local < len(keys):
            matched += self._held_elsewhere(await self.find_holders(keys[local:], fresh=True))
        self.stats.lookup_hit_chunks += matched
        return matched

    def _held_elsewhere(self, holder_lists: Iterable[Sequence[str]]) -> int:
        """How many leading entries name a holder other than this peer; stops
        at the first that does not (the iterable may be lazy)."""
        matched = 0
        for holders in holder_lists:
            if not any(h != self.peer_id for h in holders):
                break
            matched += 1
        return matched

    async def load(self, keys: Sequence[bytes], on_result: ResultFn,
                   reader: ReaderFn | None = None) -> None:
        def counted(index: int, ok: bool, source: str, consumed: bool) -> None:
            if ok and source in ("cpu", "disk", "local"):
                self.stats.local_hits += 1
            elif not ok:
                self.stats.load_failures += 1
            on_result(index, ok, source, consumed)

        await self.loader.load(keys, counted, reader=reader)

    # ---- ServingNode (called by transfer.server) -----------------------------

    def on_connected(self, hello: f.Hello) -> None:
        if not hello.peer_id:
            return  # a lookup client of our own engine, not a mesh member
        self._gossip.learn(hello.peer_id)
        self.note_control_port(hello.peer_id, hello.control_port)

    async def learn_control_urls(self, peers: Sequence[str]) -> None:
        """Dial members whose control URL we lack: their handshake tells it. Bounded."""
        unknown = [PeerId(p) for p in peers if p not in self.control_urls and p != self.peer_id]
        await asyncio.gather(*(self.pool.get(p) for p in unknown), return_exceptions=True)

    def note_control_port(self, peer_id: str, port: int) -> None:
        if port:
            self.control_urls[peer_id] = f"http://{PeerAddress.parse(peer_id).host}:{port}"

    def holders(self, keys: tuple[bytes, ...]) -> list[tuple[str, ...]]:
        return [self.directory.holders(k) for k in keys]

    def on_advertise(self, holder: str, keys: tuple[bytes, ...]) -> None:
        # Only a holder that announced its leave is refused. One we never heard
        # of, or hold dead, is talking to us right now: its gossip (a join, or
        # the refutation after a partition heals) may simply trail its advertise.
        if self.membership.state_of(holder) is not MemberState.LEFT:
            self.directory.add(holder, keys)

    def on_withdraw(self, holder: str, keys: tuple[bytes, ...]) -> None:
        self.directory.remove(holder, keys)

    def members_exchange(self, peers: tuple[str, ...]) -> tuple[str, ...]:
        """Old-style member lists are answered, not learned from: SWIM gossip is the source."""
        return tuple(self.membership.members)

    async def prefix(self, keys: tuple[bytes, ...]) -> int:
        return await self.lookup_prefix(keys)

    async def fetch(self, keys: Sequence[bytes], holder: str) -> int:
        """Pull these keys from `holder` into our store; returns how many arrived."""
        arrived = []
        await self.loader.load(keys, lambda i, ok, _src, _consumed: ok and arrived.append(i),
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
