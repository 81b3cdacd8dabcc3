"""What directory sync and holder lookup both work over.

`DirectorySync` keeps the directory's entries for our chunks where the ring
places them; `HolderLookup` asks the directory where chunks are. Both need
the same parts of the peer, passed in one bundle so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmesh.config import MeshConfig
from kvmesh.directory.shard import Directory
from kvmesh.membership.swim import Swim
from kvmesh.peers.connections import ConnectionPool
from kvmesh.peers.stats import PeerStats
from kvmesh.store import ChunkStore
from kvmesh.types import PeerId


@dataclass(frozen=True)
class DirectoryParts:
    self_id: PeerId
    mesh: MeshConfig
    timeout_s: float  # every request to a directory owner
    store: ChunkStore
    directory: Directory  # our shard: the entries the ring places on us
    membership: Swim
    pool: ConnectionPool
    stats: PeerStats
