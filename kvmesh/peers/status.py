"""A snapshot of one peer, taken on its loop, for /status, /metrics and inspect.

`Peer.status()` builds it from the peer's parts; `kvmesh.peers.metrics` turns
it into JSON and Prometheus families. Plain values only, so it may be read
on any thread once taken.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kvmesh.membership.members import MemberView
from kvmesh.membership.swim import Swim
from kvmesh.peers.stats import PeerStats
from kvmesh.store.records import StoreStats
from kvmesh.types import PeerId


@dataclass(frozen=True, slots=True)
class PeerStatus:
    peer_id: PeerId
    store: StoreStats
    counters: dict[str, Any]  # PeerStats.as_dict()
    members: tuple[PeerId, ...]  # alive and suspect, this peer included, sorted
    member_rows: tuple[MemberView, ...]  # every member SWIM holds, dead and left included
    gossip: dict[str, int]  # SwimStats
    ring_shares: dict[PeerId, float]
    transports: dict[PeerId, str]  # connected peers -> "shm", "tcp" or "ucx"
    directory_keys: int

    @classmethod
    def of(cls, peer_id: PeerId, store: StoreStats, stats: PeerStats, membership: Swim | None,
           transports: dict[PeerId, str], directory_keys: int) -> "PeerStatus":
        if membership is None:  # not started
            return cls(peer_id, store, stats.as_dict(), (peer_id,), (), {}, {}, {}, directory_keys)
        return cls(peer_id, store, stats.as_dict(), tuple(sorted(membership.members)),
                   tuple(membership.snapshot()), dataclasses.asdict(membership.stats),
                   dict(sorted(membership.ring.shares().items())),
                   dict(sorted(transports.items())), directory_keys)
