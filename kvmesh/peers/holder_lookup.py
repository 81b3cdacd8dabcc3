"""Who holds a chunk: this peer's store, its directory shard, or the ring owners.

`HolderLookup` answers the two questions of the lookup path:

- `matched(keys)`: how many leading keys are held here or anywhere in the
  mesh (the scheduler's prefix lookup);
- `find_holders(keys)`: which peers hold each key (a load's pull plan).

Keys the directory places on this peer are answered from its own shard;
the rest take one LOOKUP per owner, as few owners as cover them
(`directory.lookup_plan`), all in parallel. An owner that cannot be asked is
struck off and its keys are planned again over their other owners. Answers
are cached for HOLDER_CACHE_TTL_S, so a load right after its lookup does not
ask again. While the mesh is small enough that this peer owns every entry
(`owns_whole_directory`), an engine thread answers a lookup itself with
`matched_locally`, without the loop.

Loop thread, except `matched_locally` and `owns_whole_directory` (any thread;
see there).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Iterable, Sequence

from kvmesh.directory.lookup_plan import plan_queries
from kvmesh.errors import KvmeshError
from kvmesh.peers.directory_parts import DirectoryParts
from kvmesh.peers.directory_sync import directory_replicas
from kvmesh.transfer import frames as f
from kvmesh.types import ChunkKey, PeerId

HOLDER_CACHE_KEYS = 1 << 16
HOLDER_CACHE_TTL_S = 5.0

Holders = tuple[PeerId, ...]


class HolderLookup:
    def __init__(self, parts: DirectoryParts) -> None:
        self._deps = parts
        self._cache: OrderedDict[ChunkKey, tuple[Holders, float]] = OrderedDict()
        # Set on the loop thread at each ring change, read by engine threads.
        self.owns_whole_directory = parts.mesh.full_directory_upto >= 1

    def ring_changed(self) -> None:
        """Membership changed: cached answers may name the gone; ownership may differ."""
        self._cache.clear()
        ring = self._deps.membership.ring
        self.owns_whole_directory = directory_replicas(self._deps.mesh, ring) >= len(ring)

    # ---- prefix lookups -----------------------------------------------------

    async def matched(self, keys: Sequence[ChunkKey]) -> int:
        """Leading keys held here or anywhere in the mesh (asks the owners afresh)."""
        self._deps.stats.lookups += 1
        self._deps.stats.lookup_chunks += len(keys)
        local = self._deps.store.leading_hits(keys)
        matched = local
        if local < len(keys):
            matched += self._held_elsewhere(await self.find_holders(keys[local:], fresh=True))
        self._deps.stats.lookup_hit_chunks += matched
        return matched

    def matched_locally(self, keys: Sequence[ChunkKey]) -> int | None:
        """`matched(keys)` answered on the calling thread, or None when that
        needs the owners. Any thread: the store is thread-safe, and a shard
        read is one dict lookup and one tuple per key, each atomic under the GIL."""
        local = self._deps.store.leading_hits(keys)
        if local < len(keys) and not self.owns_whole_directory:
            return None
        return local + self._held_elsewhere(self._deps.directory.holders(k) for k in keys[local:])

    def _held_elsewhere(self, holder_lists: Iterable[Sequence[PeerId]]) -> int:
        """How many leading entries name a holder other than this peer; stops
        at the first that does not (the iterable may be lazy)."""
        matched = 0
        for holders in holder_lists:
            if not any(h != self._deps.self_id for h in holders):
                break
            matched += 1
        return matched

    # ---- holders ------------------------------------------------------------

    async def find_holders(self, keys: Sequence[ChunkKey], fresh: bool = False) -> list[Holders]:
        """Holders of each key per the directory owners; () where unknown.

        Answers younger than HOLDER_CACHE_TTL_S are reused unless `fresh`.
        """
        now = time.monotonic()
        out: list[Holders | None] = [None] * len(keys)
        if not fresh:
            for i, key in enumerate(keys):
                cached = self._cache.get(key)
                if cached is not None and now - cached[1] < HOLDER_CACHE_TTL_S:
                    out[i] = cached[0]
        missing = [i for i, h in enumerate(out) if h is None]
        if missing:
            answers = await self._ask_owners([keys[i] for i in missing])
            for i, holders in zip(missing, answers):
                out[i] = holders
                self._remember(keys[i], holders)
        return [h or () for h in out]

    async def _ask_owners(self, keys: list[ChunkKey]) -> list[Holders]:
        """Holders per key, asking as few owners as possible (see lookup_plan)."""
        ring = self._deps.membership.ring
        r = directory_replicas(self._deps.mesh, ring)
        answers: list[Holders] = [()] * len(keys)
        candidates = [ring.owners(k, r) for k in keys]
        todo = list(range(len(keys)))
        while todo:
            plan = plan_queries([candidates[i] for i in todo], self._deps.self_id)
            for j in plan.pop(self._deps.self_id, ()):
                answers[todo[j]] = self._deps.directory.holders(keys[todo[j]])
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

    async def _ask_owner(self, owner: PeerId, keys: list[ChunkKey]) -> list[Holders] | None:
        """The owner's answer, or None if it could not be asked (try the next owner)."""
        try:
            client = await self._deps.pool.get(owner)
            out: list[Holders] = []
            for start in range(0, len(keys), f.MAX_KEYS_PER_REQUEST):
                batch = tuple(keys[start:start + f.MAX_KEYS_PER_REQUEST])
                reply = await client.request(lambda rid: f.Lookup(rid, batch), self._deps.timeout_s)
                if len(reply.holders) != len(batch):
                    raise KvmeshError(f"{owner} answered {len(reply.holders)} of {len(batch)} keys")
                out.extend(reply.holders)
            return out
        except KvmeshError as exc:
            self._deps.stats.note_failure(f"lookup at {owner}: {exc}")
            return None

    def _remember(self, key: ChunkKey, holders: Holders) -> None:
        self._cache[key] = (holders, time.monotonic())
        self._cache.move_to_end(key)
        if len(self._cache) > HOLDER_CACHE_KEYS:
            self._cache.popitem(last=False)
