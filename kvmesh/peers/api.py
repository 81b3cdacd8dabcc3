"""What an engine connector may call on its embedded peer.

All methods are synchronous, thread-safe and bounded: none waits on the
network longer than the configured timeout, and none raises for a mesh
failure. A failure shows up as a shorter prefix, a `None` ticket or a failed
chunk result, which the connector turns into recomputation.

Buffers: a `SaveTicket.data` or `ChunkResult.data` tensor is a view of a store
slot. It is valid until `commit_save` / `ChunkResult.release` is called; after
that the slot may be reused and the view must not be touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch

from kvmesh.transfer.reader import ChunkReader  # the contract is stated there
from kvmesh.types import ChunkKey

__all__ = ["ChunkReader", "ChunkResult", "LoadJob", "PeerApi", "SaveTicket"]


@dataclass(slots=True)
class SaveTicket:
    """A reserved, pinned store slot that the caller fills with one chunk."""

    key: ChunkKey
    data: torch.Tensor  # uint8, slot_bytes long; write the chunk's bytes here
    token: object  # the store's own handle; opaque to callers


@dataclass(slots=True)
class ChunkResult:
    """One chunk of a load job: landed (data set), consumed by the job's
    reader (`consumed`, data None) or failed (neither)."""

    index: int  # position in the key list given to start_load
    key: ChunkKey
    data: torch.Tensor | None
    source: str  # "local", "disk", a peer id, or "" when it failed
    _release: object = None
    consumed: bool = False

    def release(self) -> None:
        """Unpin the slot. Call once, after the data has been copied out."""
        release, self._release = self._release, None
        if callable(release):
            release()


class LoadJob(Protocol):
    """Chunks being brought into local slots; they land in any order."""

    def results(self, timeout_s: float) -> Iterator[ChunkResult]:
        """Yield every chunk's result as it completes.

        Chunks still outstanding at the deadline are yielded as failures, so
        the iterator always yields exactly one result per key and then stops.
        """

    def ready(self) -> list[ChunkResult]:
        """Results completed since the last call; never blocks."""

    @property
    def done(self) -> bool:
        """True once every key has a result (landed or failed)."""

    def cancel(self) -> None:
        """Stop outstanding pulls; their results become failures."""


class PeerApi(Protocol):
    slot_bytes: int

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        """How many leading keys are held somewhere (this store or the mesh)."""

    def start_load(self, keys: Sequence[ChunkKey], reader: ChunkReader | None = None) -> LoadJob:
        """Begin bringing these chunks into local slots; returns at once.

        With `reader`, chunks held by a peer on this host are not copied into
        a local slot: their bytes go to `reader` in place, one copy in all, and
        their results come back `consumed`. Other chunks land as usual.
        """

    def prepare_save(self, key: ChunkKey) -> SaveTicket | None:
        """Reserve a slot for a new chunk; None if it is already stored or no slot is free."""

    def commit_save(self, ticket: SaveTicket, ok: bool = True, length: int | None = None) -> None:
        """Publish (ok) the first `length` bytes of the slot (all of it by
        default) as the chunk, or drop it; it is advertised only after this."""
