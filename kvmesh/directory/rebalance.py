"""Which directory entries move when the ring changes. Pure: rings in, owners out.

A holder keeps its keys advertised to their `r` ring owners. After a ring
change it tells only the owners that are new for a key; owners that stayed
already have the entry, and an owner that is gone takes its shard with it
(the surviving replicas still answer). One peer joining or leaving a ring of
N therefore moves about 1/N of a holder's entries, not all of them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from kvmesh.hashring.ring import HashRing
from kvmesh.types import ChunkKey, PeerId


def new_owners(keys: Iterable[ChunkKey], old: HashRing, new: HashRing, r: int,
               new_r: int | None = None) -> dict[PeerId, list[bytes]]:
    """{owner: keys} for every (key, owner) pair under `new` (with `new_r`
    owners per key, default `r`) that `old` (with `r`) did not have."""
    out: dict[PeerId, list[bytes]] = defaultdict(list)
    for key in keys:
        before = old.owners(key, r)
        for owner in new.owners(key, r if new_r is None else new_r):
            if owner not in before:
                out[owner].append(key)
    return dict(out)


def unowned(keys: Iterable[ChunkKey], ring: HashRing, r: int, me: PeerId) -> list[ChunkKey]:
    """The directory entries `me` keeps for keys it is not among the `r` owners
    of on `ring`: left over from an earlier ring. No lookup asks `me` about
    them and no withdraw reaches it any more, so they can only go stale."""
    return [key for key in keys if me not in ring.owners(key, r)]


def moved_fraction(keys: list[ChunkKey], old: HashRing, new: HashRing, r: int) -> float:
    """Share of (key, owner) entries under `new` that are new: what a change costs."""
    moved = sum(len(v) for v in new_owners(keys, old, new, r).values())
    total = sum(len(new.owners(k, r)) for k in keys)
    return moved / total if total else 0.0
