"""Peers embedded in engine processes, and how an engine's other processes find them.

The worker process that owns the KV cache runs the peer; with tensor
parallelism each rank's worker runs one, on its rank's ports and in its
rank's mesh (`kvmesh.peers.rank_config`). It writes a small rendezvous file,
`<run_dir>/<engine_id>-rank<r>.json`, with its mesh address.
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
from pathlib import Path
from typing import Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.errors import KvmeshError, TransferError
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.rank_config import rank_config
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


def open_peer(config: KvmeshConfig, namespace: KeyNamespace, slot_bytes: int,
              engine_id: str, tp_rank: int | None = None) -> EmbeddedPeer:
    """Start the peer of TP rank `tp_rank` and write its rendezvous file.

    `config` is the engine's, as read from the environment: this applies the
    rank's ports and seeds (`rank_config`), so callers must not. `tp_rank` is
    the process's rank, `namespace.tp_rank` unless the KV is the same on
    every rank (then the namespace says rank 0, and all ranks share its mesh).
    """
    tp_rank = namespace.tp_rank if tp_rank is None else tp_rank
    config = rank_config(config, tp_rank, namespace.tp_rank)
    handle = EmbeddedPeer.start(config, ChunkHasher(namespace), slot_bytes)
    handle.engine_id = engine_id
    path = rendezvous_path(config, engine_id, tp_rank)
    private_dir(path.parent)  # only this user may plant or read rendezvous files
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"peer_id": handle.peer_id, "pid": os.getpid(),
                               "control_url": handle.peer.control_url}))
    tmp.replace(path)  # readers never see a half-written file
    handle.rendezvous = path
    if tp_rank == 0:
        _in_process[engine_id] = handle
    log.info("kvmesh peer %s up for engine %s rank %d", handle.peer_id, engine_id, tp_rank)
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
