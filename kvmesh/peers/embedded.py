"""Peers embedded in engine processes, and how an engine's other processes find them.

The worker process that owns the KV cache runs the peer. It writes a small
rendezvous file, `<run_dir>/<engine_id>-rank<r>.json`, with its mesh address.
The engine's scheduler (another process in vLLM's multiprocess mode) asks
that peer for prefix lookups over the normal wire protocol (PREFIX frames),
as a client that never joins the mesh. In one process it calls the peer
directly, found in this module's registry of embedded peers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.errors import ConfigError, KvmeshError, TransferError
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.peers.facade import PeerHandle
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.pool_door import private_dir
from kvmesh.transfer.shm import host_id
from kvmesh.transfer.tls import client_context, open_stream
from kvmesh.types import ChunkKey, PeerAddress

log = logging.getLogger(__name__)

# engine_id -> the peer of that engine's TP rank 0 in this process.
_in_process: dict[str, PeerHandle] = {}


def embedded_peer(engine_id: str) -> PeerHandle | None:
    """The peer embedded in this process for `engine_id` (TP rank 0), if any."""
    return _in_process.get(engine_id)


def rendezvous_path(config: KvmeshConfig, engine_id: str, tp_rank: int) -> Path:
    return config.run_dir / f"{engine_id}-rank{tp_rank}.json"


class EmbeddedPeer(PeerHandle):
    """A PeerHandle that advertises itself to the rest of its engine."""

    rendezvous: Path | None = None
    engine_id = ""

    def close(self) -> None:
        _in_process.pop(self.engine_id, None)
        if self.rendezvous is not None:
            self.rendezvous.unlink(missing_ok=True)
        super().close()


def rank_config(config: KvmeshConfig, tp_rank: int) -> KvmeshConfig:
    """The config of TP rank `tp_rank`'s peer: fixed ports move up by the rank.

    Each rank embeds a peer of its own (its KV shard is its own namespace), so
    with a fixed KVMESH_PORT or KVMESH_CONTROL_PORT the ranks of one engine on
    one host would all bind the same port. Port 0 (pick a free one) stays 0.
    """
    if tp_rank == 0:
        return config

    def moved(port: int, name: str) -> int:
        if port and port + tp_rank > 65535:
            raise ConfigError(f"{name}={port} + TP rank {tp_rank} is past 65535")
        return port + tp_rank if port else 0

    return replace(config,
                   mesh=replace(config.mesh, port=moved(config.mesh.port, "KVMESH_PORT")),
                   control=replace(config.control,
                                   port=moved(config.control.port, "KVMESH_CONTROL_PORT")))


def open_peer(config: KvmeshConfig, namespace: KeyNamespace, slot_bytes: int,
              engine_id: str) -> EmbeddedPeer:
    config = rank_config(config, namespace.tp_rank)
    handle = EmbeddedPeer.start(config, ChunkHasher(namespace), slot_bytes)
    handle.engine_id = engine_id
    path = rendezvous_path(config, engine_id, namespace.tp_rank)
    private_dir(path.parent)  # only this user may plant or read rendezvous files
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"peer_id": handle.peer_id, "pid": os.getpid(),
                               "control_url": handle.peer.control_url}))
    tmp.replace(path)  # readers never see a half-written file
    handle.rendezvous = path
    if namespace.tp_rank == 0:
        _in_process[engine_id] = handle
    log.info("kvmesh peer %s up for engine %s rank %d", handle.peer_id, engine_id, namespace.tp_rank)
    return handle


def open_lookup_client(config: KvmeshConfig, engine_id: str, namespace: KeyNamespace):
    local = _in_process.get(engine_id)
    return local if local is not None else RemoteLookupClient(config, engine_id, namespace)


class RemoteLookupClient:
    """Prefix lookups on another process's peer; any failure reads as no hit."""

    def __init__(self, config: KvmeshConfig, engine_id: str, namespace: KeyNamespace) -> None:
        self._config = config
        self._path = rendezvous_path(config, engine_id, 0)
        self._namespace = namespace.with_salt("").digest()
        self._timeout = config.transfer.timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvmesh-lookup",
                                        daemon=True)
        self._thread.start()
        self._client: PeerClient | None = None
        self._retry_at = 0.0

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        if not keys:
            return 0
        fut = asyncio.run_coroutine_threadsafe(self._lookup(tuple(keys)), self._loop)
        try:
            return fut.result(timeout=self._timeout * 2)
        except (KvmeshError, concurrent.futures.TimeoutError) as exc:  # a miss, never an error
            fut.cancel()
            log.info("lookup through the worker's peer failed: %s", exc)
            return 0

    async def _lookup(self, keys: tuple[ChunkKey, ...]) -> int:
        client = await self._connect()
        if client is None:
            return 0
        reply = await client.request(lambda rid: f.Prefix(rid, keys), self._timeout * 1.5)
        return max(0, min(reply.matched, len(keys)))  # the answer is not trusted to fit

    async def _connect(self) -> PeerClient | None:
        if self._client is not None:
            if self._client.fresh():
                return self._client
            self._client.close()  # closed, or idle long enough for the peer to close it
            self._client = None
        if time.monotonic() < self._retry_at or not self._path.exists():
            return None
        self._retry_at = time.monotonic() + 1.0
        try:
            private_dir(self._path.parent)  # never trust a file another user could plant
            address = PeerAddress.parse(json.loads(self._path.read_text())["peer_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TransferError(f"unreadable rendezvous file {self._path}: {exc}") from None
        stream = await open_stream(address.host, address.port, client_context(self._config.tls),
                                   self._timeout)
        # peer_id "" marks a client that must not be taken for a mesh member.
        hello = f.Hello("", f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, self._namespace, "", "",
                        handshake.new_nonce())
        self._client = await PeerClient.open(stream, hello, f.Info(host_id(), 0, 0, b""),
                                             self._namespace, self._config.mesh.secret,
                                             self._timeout, 64)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)
