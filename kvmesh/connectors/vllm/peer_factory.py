"""Where the vLLM connector gets its peer and its lookup client.

The connector never builds mesh objects itself; it calls these two functions,
whose defaults are the embedded peers of `kvmesh.peers.embedded`.

`set_factories` is the one documented hook: tests (and an embedding
application) install their own callables with it, and `set_factories()` with no
arguments restores the defaults. It is the only state in this module.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from kvmesh.config import KvmeshConfig
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.peers.api import PeerApi
from kvmesh.types import ChunkKey


class LookupClient(Protocol):
    """The scheduler half's view of the worker's peer (another process in MP mode)."""

    def lookup_prefix(self, keys: Sequence[ChunkKey]) -> int:
        """How many leading keys are held somewhere; bounded, never raises for a mesh failure."""


OpenPeer = Callable[[KvmeshConfig, KeyNamespace, int, str], PeerApi]
OpenLookupClient = Callable[[KvmeshConfig, str, KeyNamespace], LookupClient]


def _default_open_peer(config: KvmeshConfig, namespace: KeyNamespace, slot_bytes: int,
                       engine_id: str) -> PeerApi:
    from kvmesh.peers.embedded import open_peer as embedded_open_peer  # noqa: PLC0415

    return embedded_open_peer(config, namespace, slot_bytes, engine_id)


def _default_open_lookup_client(config: KvmeshConfig, engine_id: str,
                                namespace: KeyNamespace) -> LookupClient:
    from kvmesh.peers.embedded import open_lookup_client as embedded_client  # noqa: PLC0415

    return embedded_client(config, engine_id, namespace)


_factories: dict[str, Callable] = {
    "open_peer": _default_open_peer,
    "open_lookup_client": _default_open_lookup_client,
}


def open_peer(config: KvmeshConfig, namespace: KeyNamespace, slot_bytes: int,
              engine_id: str) -> PeerApi:
    """Start (or join) the peer embedded in this worker process.

    Called once per worker, from `register_kv_caches`, with the worker's own
    namespace (its TP rank, no cache salt) and the byte size of one chunk. The
    peer must make itself reachable to `open_lookup_client(config, engine_id,
    ...)` in another process of the same engine. If the returned object has a
    `close()` method, the connector calls it on shutdown.
    """
    return _factories["open_peer"](config, namespace, slot_bytes, engine_id)


def open_lookup_client(config: KvmeshConfig, engine_id: str,
                       namespace: KeyNamespace) -> LookupClient:
    """A client for `lookup_prefix` on the peer of engine `engine_id`'s worker (TP rank 0).

    Called once, when the scheduler half is built, which vLLM does after the
    workers have registered their KV caches. May return the peer itself when
    both halves share a process. `close()` is called on shutdown if present.
    """
    return _factories["open_lookup_client"](config, engine_id, namespace)


def set_factories(open_peer: OpenPeer | None = None,
                  open_lookup_client: OpenLookupClient | None = None) -> None:
    """Install replacement factories; an omitted one goes back to the default."""
    _factories["open_peer"] = open_peer or _default_open_peer
    _factories["open_lookup_client"] = open_lookup_client or _default_open_lookup_client
