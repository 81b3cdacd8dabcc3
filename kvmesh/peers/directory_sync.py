"""Keeping the mesh directory in step with this peer's store and the ring.

`DirectorySync` owns the advertise/withdraw outbox and the three loops that
feed it:

- saves (`saved(key)`) and pulls call `advertise(keys)`; evictions and
  removals reach the event pump through the store's event listener and
  become `withdraw(keys)` (an operator's removals go at once:
  `withdraw_gone`); both are queued per ring owner and flushed in one batch
  per owner at the end of the loop turn (keys this peer owns go straight
  into its own shard);
- a ring change (`ring_changed()`) wakes the rebalance loop, which
  re-advertises held keys to the owners that change made new for them and,
  once the ring has been quiet for PRUNE_AFTER_PROBES periods, forgets the
  shard's entries this peer no longer owns;
- a refuted suspicion or death (our incarnation moved) re-advertises every
  held key, since whoever buried us dropped our entries without a ring change.

Everything runs on the peer's loop except `on_store_event`, which the store
calls from any thread. A failed send is a stale directory entry somewhere
(a miss on pull, never wrong data), noted in the peer's stats.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from functools import partial
from typing import Sequence

from kvmesh.config import MeshConfig
from kvmesh.directory.placement import replicas
from kvmesh.directory.rebalance import new_owners, unowned
from kvmesh.errors import KvmeshError
from kvmesh.hashring.ring import HashRing
from kvmesh.peers.directory_parts import DirectoryParts
from kvmesh.store.events import EVICTED, REMOVED
from kvmesh.transfer import frames as f
from kvmesh.types import ChunkKey, PeerId

# Withdrawals that come in a burst (an eviction run) go out together: after
# withdrawing, the pump lets this long go by before it takes events again.
EVENT_PUMP_INTERVAL_S = 0.05
REBALANCE_BATCH_KEYS = 4096  # keys placed per loop turn while rebalancing
# A ring that stayed unchanged this many probe periods has spread through the
# mesh: entries this peer no longer owns can go (lookups from peers still on
# the old ring get a miss meanwhile, never a wrong holder).
PRUNE_AFTER_PROBES = 10


def directory_replicas(mesh: MeshConfig, ring: HashRing) -> int:
    """Directory owners per key on `ring` (see kvmesh.directory.placement)."""
    return replicas(len(ring), mesh.replication, mesh.full_directory_upto)


class DirectorySync:
    """See the module docstring. Built and started on the peer's loop."""

    def __init__(self, parts: DirectoryParts) -> None:
        self._deps = parts
        self._placed = HashRing([parts.self_id], vnodes=parts.mesh.vnodes)  # the ring our keys were last placed on
        self._ring_changed = asyncio.Event()
        self._withdrawals_due = asyncio.Event()  # set through on_store_event
        self._withdrawal_noted = False  # a wake-up is on its way to the pump
        self._outbox: dict[tuple[PeerId, bool], list[ChunkKey]] = defaultdict(list)
        self._flush_scheduled = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._deps.store.set_event_listener(partial(self.on_store_event, loop))
        self._tasks = [loop.create_task(self._rebalance_loop()),
                       loop.create_task(self._event_pump())]

    async def stop(self) -> None:
        self._deps.store.set_event_listener(None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- what others call ----------------------------------------------------

    def advertise(self, keys: Sequence[ChunkKey]) -> None:
        self._queue(keys, withdraw=False)

    def withdraw(self, keys: Sequence[ChunkKey]) -> None:
        self._queue(keys, withdraw=True)

    def saved(self, key: ChunkKey) -> None:
        """The engine saved and committed `key`: count it and advertise it."""
        self._deps.stats.chunks_saved += 1
        self.advertise([key])

    def withdraw_gone(self, removed: Sequence[ChunkKey]) -> None:
        """Withdraw those of `removed` (an operator's removal) no tier holds any more."""
        gone = [k for k in removed if self._deps.store.tier_of(k) is None]
        if gone:
            self.withdraw(gone)

    def ring_changed(self) -> None:
        """Membership changed: rebalance soon (changes arriving meanwhile fold in)."""
        self._ring_changed.set()

    def on_store_event(self, loop: asyncio.AbstractEventLoop, kind: str) -> None:
        """The store's event listener (any thread, under the store lock): wake
        the pump for a withdrawal, once until it has run."""
        if kind in (EVICTED, REMOVED) and not self._withdrawal_noted:
            self._withdrawal_noted = True
            try:
                loop.call_soon_threadsafe(self._withdrawals_due.set)
            except RuntimeError:
                pass  # the loop is closed: the peer has stopped

    # ---- the outbox ----------------------------------------------------------

    def _queue(self, keys: Sequence[ChunkKey], withdraw: bool) -> None:
        ring = self._deps.membership.ring
        r = directory_replicas(self._deps.mesh, ring)
        for key in keys:
            for owner in ring.owners(key, r):
                self._queue_to(owner, [key], withdraw)

    def _queue_to(self, owner: PeerId, keys: Sequence[ChunkKey], withdraw: bool) -> None:
        if owner == self._deps.self_id:
            (self._deps.directory.remove if withdraw else self._deps.directory.add)(self._deps.self_id, keys)
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

    async def _send_batch(self, owner: PeerId, withdraw: bool, keys: list[ChunkKey]) -> None:
        kind = f.Withdraw if withdraw else f.Advertise
        try:
            client = await self._deps.pool.get(owner)
            for start in range(0, len(keys), f.MAX_KEYS_PER_REQUEST):
                batch = tuple(keys[start:start + f.MAX_KEYS_PER_REQUEST])
                await client.notify(kind(self._deps.self_id, batch), self._deps.timeout_s)
        except KvmeshError as exc:
            self._deps.stats.note_failure(f"{kind.__name__.lower()} to {owner}: {exc}")

    # ---- the loops -------------------------------------------------------------

    async def _rebalance_loop(self) -> None:
        """Re-advertise held keys to the owners each ring change made new for
        them; once the ring has been quiet for a while, forget the directory
        entries this peer no longer owns.

        Changes that arrive while a pass runs are folded into the next pass,
        which compares against the ring the previous one placed keys on.
        Keys are placed in batches so lookups keep flowing meanwhile.
        """
        quiet_s = PRUNE_AFTER_PROBES * self._deps.mesh.probe_interval_s
        while True:
            await self._ring_changed.wait()
            self._ring_changed.clear()
            old, new = self._placed, self._deps.membership.ring.copy()
            self._placed = new
            r_old, r_new = directory_replicas(self._deps.mesh, old), directory_replicas(self._deps.mesh, new)
            keys = self._deps.store.keys()
            for start in range(0, len(keys), REBALANCE_BATCH_KEYS):
                moved = new_owners(keys[start:start + REBALANCE_BATCH_KEYS], old, new, r_old, r_new)
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
                await self._prune()

    async def _prune(self) -> None:
        """Forget entries for keys this peer does not own on the current ring."""
        keys = self._deps.directory.keys()
        for start in range(0, len(keys), REBALANCE_BATCH_KEYS):
            ring = self._deps.membership.ring
            batch = keys[start:start + REBALANCE_BATCH_KEYS]
            self._deps.directory.forget(unowned(batch, ring, directory_replicas(self._deps.mesh, ring),
                                           self._deps.self_id))
            await asyncio.sleep(0)

    async def _event_pump(self) -> None:
        """Withdraw chunks the store dropped, and re-advertise everything after
        a refuted death. Woken by the store when it drops a chunk (polling every
        50 ms, as it once did, cost an idle engine ~20 wake-ups a second), and
        once a probe period to check the incarnation."""
        loop = asyncio.get_running_loop()
        incarnation = 0
        while True:
            timer = loop.call_later(self._deps.mesh.probe_interval_s, self._withdrawals_due.set)
            try:
                await self._withdrawals_due.wait()
            finally:
                timer.cancel()
            self._withdrawals_due.clear()
            self._withdrawal_noted = False  # before taking: a later drop wakes us again
            gone = [k for ev in self._deps.store.take_events() if ev.kind in (EVICTED, REMOVED)
                    for k in ev.keys]
            if gone:
                self.withdraw(gone)
            if self._deps.membership.incarnation != incarnation:
                # We refuted a suspicion or a death: whoever buried us dropped our
                # entries without our ring changing, so advertise everything again.
                incarnation = self._deps.membership.incarnation
                self.advertise(self._deps.store.keys())
            if gone:
                await asyncio.sleep(EVENT_PUMP_INTERVAL_S)  # let the rest of a burst gather
