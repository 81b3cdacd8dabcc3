"""The peer an SGLang scheduler rank embeds, and how it is opened.

SGLang runs one scheduler process per TP rank, and the HiCache storage
backend lives in it, so each rank embeds its own peer (its namespace carries
the rank). `kvmesh.peers.embedded.open_peer` gives rank r its ports and seeds
(`kvmesh.peers.rank_config`): it listens on `KVMESH_PORT + r` when a port is
set and joins the seeds at their port + r, so rank r of every engine forms
its own mesh. MLA KV, the same on every rank, is keyed as rank 0: every rank
still takes its own port, and all join the seeds' rank-0 mesh.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.peers.api import ChunkResult, LoadJob, SaveTicket
from kvmesh.types import ChunkKey


class MeshPeer(Protocol):
    """`kvmesh.peers.api.PeerApi`, plus what a HiCache backend also needs."""

    slot_bytes: int

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int: ...

    def start_load(self, keys: Sequence[ChunkKey]) -> LoadJob: ...

    def prepare_save(self, key: ChunkKey) -> SaveTicket | None: ...

    def commit_save(self, ticket: SaveTicket, ok: bool = True) -> None: ...

    def clear(self) -> int:
        """Drop every unpinned chunk this peer holds; returns how many."""

    def close(self) -> None: ...


# (engine's config, namespace, page bytes, engine id, this scheduler's TP rank)
OpenPeer = Callable[[KvmeshConfig, KeyNamespace, int, str, int], MeshPeer]


def open_mesh_peer(config: KvmeshConfig, namespace: KeyNamespace, slot_bytes: int,
                   engine_id: str, tp_rank: int) -> MeshPeer:
    """Start this rank's embedded peer (blocks until it has joined its seeds).

    `tp_rank` is the scheduler's own rank, which MLA namespaces (rank 0 on
    every rank) do not carry: its ports move by it all the same.
    """
    from kvmesh.peers.embedded import open_peer  # noqa: PLC0415 - starts threads only when used

    # The engine's config as it is: open_peer gives the rank its ports and seeds.
    return EmbeddedMeshPeer(open_peer(config, namespace, slot_bytes, engine_id, tp_rank))


class EmbeddedMeshPeer:
    """A `MeshPeer` over an embedded `PeerHandle`; every call is delegated."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.slot_bytes = handle.slot_bytes

    @property
    def peer_id(self) -> str:
        return self.handle.peer_id

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        return self.handle.lookup_prefix(keys)

    def start_load(self, keys: Sequence[ChunkKey]) -> LoadJob:
        return self.handle.start_load(keys)

    def prepare_save(self, key: ChunkKey) -> SaveTicket | None:
        return self.handle.prepare_save(key)

    def commit_save(self, ticket: SaveTicket, ok: bool = True) -> None:
        self.handle.commit_save(ticket, ok)

    def clear(self) -> int:
        return self.handle.clear()

    def close(self) -> None:
        self.handle.close()


def drain(job: LoadJob, timeout_s: float) -> Iterator[ChunkResult]:
    """Every result of `job` within `timeout_s`, each released after the caller's use.

    The caller copies `result.data` out before asking for the next result. If
    the caller stops early (or raises), the job is cancelled and every result
    still to come is released, so no slot stays pinned.
    """
    finished = False
    try:
        for result in job.results(timeout_s):
            try:
                yield result
            finally:
                result.release()
        finished = True
    finally:
        if not finished:
            job.cancel()
            for result in job.results(0.0):
                result.release()
