"""A fake peer for control API tests: the verbs the API uses, over a real ChunkStore
(`StorePeer`, which the control API's fuzz benchmark runs on too).

Shared by tests/peers/test_control_api.py and tests/security/test_control_api_*.py.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import aiohttp

from kvmesh.bench.fuzz_api_peer import CHUNK_TOKENS, OTHER, SLOT_BYTES, StorePeer, store_config
from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig
from kvmesh.peers.control_api import start_control_api

SECRET = b"s3cret"
__all__ = ["CHUNK_TOKENS", "OTHER", "SLOT_BYTES", "SECRET", "FakePeer", "make_config", "open_api",
           "running_api", "tokens_for"]


class FakePeer(StorePeer):
    """A `StorePeer` that records what the API asked of the mesh: withdrawals and pushes."""

    def __init__(self, peer_id: str, config: KvmeshConfig, namespace="test",
                 slot_bytes: int = SLOT_BYTES) -> None:
        super().__init__(peer_id, config, namespace, slot_bytes)
        self.withdrawn: list[bytes] = []
        self.pushed: list[tuple[list[bytes], str]] = []
        self.push_result: int | Exception | None = None  # None: deliver all

    def removed(self, keys: list[bytes]) -> list[bytes]:
        self.withdrawn.extend(k for k in keys if self.store.tier_of(k) is None)
        return keys

    async def push(self, keys, target: str) -> int:
        self.pushed.append((list(keys), target))
        if isinstance(self.push_result, Exception):
            raise self.push_result
        return len(keys) if self.push_result is None else self.push_result

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
    return KvmeshConfig(chunk_tokens=CHUNK_TOKENS, store=store_config(tmp_path / "disk" if disk else None),
                        mesh=MeshConfig(secret=secret))


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


@asynccontextmanager
async def running_api(tmp_path, secret: bytes | None = None, chunks: int = 3):
    """A fake peer holding `chunks` chunks behind a running control API; yields its client."""
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path, secret=secret))
    runner, client = await open_api(peer)
    peer.put(peer.hasher.keys(tokens_for(chunks)))
    try:
        yield client
    finally:
        await client.session.close()
        await runner.cleanup()
        peer.store.close()


def tokens_for(chunks: int, extra: int = 0) -> list[int]:
    return list(range(100, 100 + chunks * CHUNK_TOKENS + extra))
