"""A fake peer for control API tests: the attributes and methods the API uses, over a real ChunkStore.

Shared by tests/peers/test_control_api.py and tests/security/test_control_api_*.py.
"""

from __future__ import annotations

import json

import aiohttp

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.directory.shard import Directory
from kvmesh.membership.swim import Swim
from kvmesh.store.chunk_store import ChunkStore
from kvmesh.peers.control_api import start_control_api
from kvmesh.peers.stats import PeerStats
from kvmesh.peers.status import PeerStatus
from kvmesh.types import PeerId

SLOT_BYTES = 64
CHUNK_TOKENS = 4
SECRET = b"s3cret"
OTHER = "127.0.0.1:7002"  # a member with no control API running


class NoNetwork:
    """A gossip transport and clock for a Swim that is only read, never started."""

    def send(self, addr: str, data: bytes) -> None:
        pass

    def set_receiver(self, receive) -> None:
        pass

    def time(self) -> float:
        return 0.0

    def call_later(self, delay, callback):
        raise AssertionError("the fake peer's membership runs no timers")


def fake_membership(peer_id: str, others: list[str]) -> Swim:
    swim = Swim(peer_id, peer_id, NoNetwork(), NoNetwork(), lambda joined, left: None, vnodes=16)
    swim.preload((p, p) for p in others)
    return swim


class FakePeer:
    """The verbs the control API uses, over a real ChunkStore, and nothing else."""

    def __init__(self, peer_id: str, config: KvmeshConfig) -> None:
        self.peer_id = PeerId(peer_id)
        self.config = config
        self.hasher = ChunkHasher(KeyNamespace("m", "fp16", 1, 1, 8, CHUNK_TOKENS, "test"))
        self.store = ChunkStore(config.store, SLOT_BYTES, shared=False)
        self.stats = PeerStats()
        self.membership = fake_membership(self.peer_id, [OTHER])
        self.directory = Directory()
        self.known_control_urls: dict[str, str] = {}  # the tests set these themselves
        self.withdrawn: list[bytes] = []
        self.pushed: list[tuple[list[bytes], str]] = []
        self.push_result: int | Exception | None = None  # None: deliver all

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
        return self._withdraw_gone([k for k in keys if self.store.remove(k)])

    async def clear(self, tier=None) -> list[bytes]:
        return self._withdraw_gone(self.store.clear(tier))

    def _withdraw_gone(self, removed) -> list[bytes]:
        self.withdrawn.extend(k for k in removed if self.store.tier_of(k) is None)
        return removed

    async def push(self, keys, target: str) -> int:
        self.pushed.append((list(keys), target))
        if isinstance(self.push_result, Exception):
            raise self.push_result
        return len(keys) if self.push_result is None else self.push_result

    def members(self):
        return self.membership.members

    async def control_urls(self, peers) -> dict[str, str]:
        return {p: self.known_control_urls[p] for p in peers if p in self.known_control_urls}

    def status(self) -> PeerStatus:
        return PeerStatus.of(self.peer_id, self.store.stats(), self.stats, self.membership,
                             {OTHER: "tcp"}, len(self.directory))

    def put(self, keys) -> None:
        for key in keys:
            ticket = self.store.prepare_store(key)
            ticket.view[:8] = bytes(range(8))
            assert self.store.commit_store(ticket, True, 8)

    def snapshot(self) -> tuple:
        stats = self.store.stats()
        return (sorted(self.store.keys()), stats.pinned, stats.chunks_cpu, stats.chunks_disk,
                list(self.withdrawn), list(self.pushed), self.stats.lookups, self.stats.lookup_chunks)


def make_config(tmp_path, secret=None, disk=True) -> KvmeshConfig:
    store = StoreConfig(cpu_bytes=SLOT_BYTES * 32, disk_dir=tmp_path / "disk" if disk else None,
                        disk_bytes=1 << 20)
    return KvmeshConfig(chunk_tokens=CHUNK_TOKENS, store=store, mesh=MeshConfig(secret=secret))


class Api:
    def __init__(self, peer: FakePeer, url: str, session: aiohttp.ClientSession) -> None:
        self.peer, self.url, self.session = peer, url, session

    async def call(self, method: str, path: str, body=None, raw: bytes | None = None,
                   headers=None) -> tuple[int, object]:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:  # a JSON body says so, as the API requires
            headers = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.request(method, self.url + path, data=data, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


async def open_api(peer: FakePeer, control: ControlConfig | None = None):
    runner, url = await start_control_api(peer, control or ControlConfig(port=0))
    headers = {"Authorization": "Bearer " + SECRET.decode()} if peer.config.mesh.secret else {}
    return runner, Api(peer, url, aiohttp.ClientSession(headers=headers))


def tokens_for(chunks: int, extra: int = 0) -> list[int]:
    return list(range(100, 100 + chunks * CHUNK_TOKENS + extra))
