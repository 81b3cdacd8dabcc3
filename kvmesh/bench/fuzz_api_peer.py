"""A stand-in peer for the control API in-process: the verbs the API calls, over a
real `ChunkStore`, with no network.

The API's handlers run for real against a real store (pins, tiers, a disk
directory), and a member named OTHER stands in for the rest of the mesh
(pushes "to" it are counted, not sent). `FuzzPeer.restock()` puts every key
back, so a fuzz run that cleared the store keeps reaching the handlers that
need chunks. The control API's tests build their fake on `StorePeer` too.
Loop thread only, like a real peer.
"""

from __future__ import annotations

from pathlib import Path

from kvmesh.config import KvmeshConfig, MeshConfig, StoreConfig
from kvmesh.directory.shard import Directory
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.membership.swim import Swim
from kvmesh.peers.codec_settings import PeerCodecs
from kvmesh.peers.stats import PeerStats
from kvmesh.peers.status import PeerStatus
from kvmesh.store.chunk_store import ChunkStore
from kvmesh.types import ChunkKey, PeerId

SLOT_BYTES = 64
CHUNK_TOKENS = 4
STOCK_CHUNKS = 8
OTHER = "127.0.0.1:7002"  # a member that is not running


class QuietNetwork:
    """Transport and clock of a membership that is read, never started."""

    def send(self, addr: str, data: bytes) -> None:
        pass

    def set_receiver(self, receive) -> None:
        pass

    def time(self) -> float:
        return 0.0

    def call_later(self, delay, callback):
        raise RuntimeError("the stand-in peer's membership runs no timers")


def store_config(disk_dir: Path | None) -> StoreConfig:
    return StoreConfig(cpu_bytes=SLOT_BYTES * 32, disk_dir=disk_dir, disk_bytes=1 << 20)


def quiet_membership(peer_id: str, others: list[str]) -> Swim:
    swim = Swim(peer_id, peer_id, QuietNetwork(), QuietNetwork(), lambda j, l: None, vnodes=16)
    swim.preload((p, p) for p in others)
    return swim


class StorePeer:
    """The peer surface `control_api.build_app` uses; see the module docstring."""

    def __init__(self, peer_id: str, config: KvmeshConfig, namespace: str | KeyNamespace = "fuzz",
                 slot_bytes: int = SLOT_BYTES) -> None:
        self.peer_id = PeerId(peer_id)
        self.config = config
        if isinstance(namespace, str):  # a layout name no codec reads: opaque chunks
            namespace = KeyNamespace("m", "fp16", 1, 1, 8, CHUNK_TOKENS, namespace)
        self.hasher = ChunkHasher(namespace)
        self.codecs = PeerCodecs.build(config.codecs, namespace)
        self.store = ChunkStore(config.store, slot_bytes, shared=False, disk_codec=self.codecs.disk)
        self.stats = PeerStats()
        self.membership = quiet_membership(self.peer_id, [OTHER])
        self.directory = Directory()
        self.known_control_urls: dict[str, str] = {}  # set to fan `scope=mesh` out for real

    # ---- the verbs the control API calls ----------------------------------------------

    async def lookup_prefix(self, keys) -> int:
        self.stats.lookups += 1
        self.stats.lookup_chunks += len(keys)
        matched = self.store.leading_hits(keys)
        self.stats.lookup_hit_chunks += matched
        return matched

    async def find_holders(self, keys) -> list[tuple[str, ...]]:
        return [(self.peer_id,) if self.store.tier_of(k) else () for k in keys]

    def held_prefix(self, keys) -> int:
        return self.store.leading_hits(keys)

    def pin(self, keys) -> list[bool]:
        return [self.store.pin(k) for k in keys]

    def unpin(self, keys) -> list[bool]:
        return [self.store.unpin(k) for k in keys]

    async def move(self, keys, tier) -> list[bool]:
        return [self.store.move(k, tier) for k in keys]

    async def remove(self, keys) -> list[bytes]:
        return self.removed([k for k in keys if self.store.remove(k)])

    async def clear(self, tier=None) -> list[bytes]:
        return self.removed(self.store.clear(tier))

    def removed(self, keys: list[bytes]) -> list[bytes]:
        """Keys the store dropped (a real peer withdraws those gone from every tier)."""
        return keys

    async def push(self, keys, target: str) -> int:
        return len(keys)

    async def compress(self, keys, codec: str) -> list:
        encoder = self.codecs.recoder(codec)
        return [self.store.recode(k, encoder) for k in keys]

    def members(self):
        return self.membership.members

    async def control_urls(self, peers) -> dict[str, str]:
        return {p: self.known_control_urls[p] for p in peers if p in self.known_control_urls}

    def status(self) -> PeerStatus:
        return PeerStatus.of(self.peer_id, self.store.stats(), self.stats, self.membership,
                             {OTHER: "tcp"}, len(self.directory))

    def close(self) -> None:
        self.store.close()


class FuzzPeer(StorePeer):
    """A `StorePeer` with a stock of keys to put back between fuzz inputs."""

    def __init__(self, peer_id: str, disk_dir: Path, secret: bytes | None) -> None:
        super().__init__(peer_id, KvmeshConfig(chunk_tokens=CHUNK_TOKENS, store=store_config(disk_dir),
                                               mesh=MeshConfig(secret=secret)))
        self.keys: list[ChunkKey] = self.hasher.keys(list(range(STOCK_CHUNKS * CHUNK_TOKENS)))
        self.pushed = 0

    def restock(self) -> None:
        """Every stock key back in the CPU tier, none pinned."""
        for key in self.keys:
            while self.store.unpin(key):
                pass
            if self.store.tier_of(key) == "disk":
                self.store.move(key, "cpu")
            if self.store.tier_of(key) is None:
                ticket = self.store.prepare_store(key)
                if ticket is not None:
                    ticket.view[:8] = bytes(range(8))
                    self.store.commit_store(ticket, True, 8)

    async def push(self, keys, target: str) -> int:
        self.pushed += len(keys)
        return len(keys)
