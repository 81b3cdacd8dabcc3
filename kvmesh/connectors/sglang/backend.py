"""`KvmeshHiCacheStorage`: SGLang's HiCache L3 storage, backed by the kvmesh mesh.

SGLang builds it as `cls(storage_config, kwargs)` in each scheduler (TP rank)
process, then calls `register_mem_pool_host(pool)` once; the peer starts
there, when the page size in bytes is known. The hooks, as SGLang calls them
from its prefetch and backup threads (several may run at once; batches of at
most 128 pages, keys are SGLang's hex page hashes):

    batch_exists(keys)                  leading pages held anywhere in the mesh
    batch_get_v1(keys, host_indices)    pull pages straight into the host pool
    batch_set_v1(keys, host_indices)    copy pages out of the host pool, commit,
                                        advertise
    batch_get / batch_set / get / set / exists
                                        the legacy interface, flat page tensors
    clear / get_stats / close

Contracts: no hook raises for a mesh failure and none blocks longer than the
configured timeout (`KVMESH_TIMEOUT_S`; a lookup may take twice that). A page
that is missing, whose holder died, that timed out or failed its checksum is
reported as not loaded (False / None), and SGLang recomputes it. With
`KVMESH_ENABLE` unset the backend starts no peer: every page misses and
nothing is stored.

Codecs: SGLang's host pages are kept exact. A lossy KVMESH_CODEC_* setting is
refused when the backend is built: the pages are in SGLang's host layouts,
which the codecs cannot read, so they could be neither encoded nor decoded. A
page that arrives encoded all the same (odd length) is a miss.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

from kvmesh.codecs import is_encoded
from kvmesh.config import CODEC_VARIABLES, CodecConfig, KvmeshConfig
from kvmesh.connectors.sglang.metrics import BackendMetrics
from kvmesh.connectors.sglang.namespace import build_namespace
from kvmesh.connectors.sglang.page_keys import PageKeyMap
from kvmesh.connectors.sglang.pages import HostPages
from kvmesh.connectors.sglang.peer import MeshPeer, OpenPeer, drain, open_mesh_peer
from kvmesh.errors import ConfigError, KvmeshError
from kvmesh.types import ChunkKey

logger = logging.getLogger(__name__)

# Extra-config key: the model identity to key pages on, instead of SGLang's model name.
MODEL_OPTION = "kvmesh_model"


class KvmeshHiCacheStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None, *,
                 config: KvmeshConfig | None = None, open_peer: OpenPeer | None = None) -> None:
        """`config` and `open_peer` are for tests; SGLang passes neither."""
        self.storage_config = storage_config
        self._options = dict(storage_config.extra_config or {})
        self._config = config if config is not None else KvmeshConfig.from_env()
        self._open_peer = open_peer or open_mesh_peer
        self._timeout_s = self._config.transfer.timeout_s
        self.metrics = BackendMetrics(bool(storage_config.enable_storage_metrics))
        self._peer: MeshPeer | None = None
        self._pages: HostPages | None = None
        self._chunk_keys: PageKeyMap | None = None
        if not self._config.enabled:
            logger.info("kvmesh: KVMESH_ENABLE is off; HiCache storage reports misses only")
        else:
            refuse_lossy_codecs(self._config.codecs)

    @property
    def peer(self) -> MeshPeer | None:
        return self._peer

    # -- setup ------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Bind the host pool and start this rank's peer. Called once, before any I/O."""
        super().register_mem_pool_host(mem_pool_host)
        if not self._config.enabled or self._peer is not None:
            return
        pages = HostPages(mem_pool_host)
        namespace = build_namespace(self.storage_config, mem_pool_host, pages.page_bytes,
                                    self._options.get(MODEL_OPTION))
        peer = self._open_peer(self._config, namespace, pages.page_bytes, f"sglang-{os.getpid()}",
                               self.storage_config.tp_rank)
        if peer.slot_bytes < pages.page_bytes:
            peer.close()
            raise ConfigError(f"kvmesh: peer slots of {peer.slot_bytes} bytes cannot hold a "
                              f"{pages.page_bytes}-byte SGLang page")
        self._pages, self._chunk_keys = pages, PageKeyMap(namespace, self._config.mesh.secret)
        self._peer = peer
        logger.info("kvmesh: HiCache storage on peer %s, namespace %s",
                    getattr(peer, "peer_id", "?"), namespace.kv_layout)

    # -- existence ----------------------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """How many of `keys`, from the first, some peer holds."""
        peer = self._peer
        if peer is None or not keys:
            return 0
        try:
            found = min(len(keys), peer.lookup_prefix(self._chunk_keys(keys)))
        except KvmeshError as exc:
            logger.info("kvmesh: lookup failed, reporting a miss: %s", exc)
            found = 0
        self.metrics.note_exists(found)
        return found

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # -- zero-copy interface (interface_v1) -------------------------------------

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info=None) -> List[bool]:
        """Pull pages into the host pool at `host_indices` (page_size per key).

        The k-th flag says whether page k was written; a False page's host
        memory may hold anything.
        """
        return self._load(keys, lambda k, slot: self._pages.load_from(
            self._pages.page_index(host_indices, k), slot))

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info=None) -> List[bool]:
        """Store the host pool's pages at `host_indices`; True where the mesh now has it."""
        return self._save(keys, lambda k, slot: self._pages.save_into(
            self._pages.page_index(host_indices, k), slot))

    # -- legacy interface (flat page tensors) -------------------------------------

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[torch.Tensor | None]:
        """Each page as a flat tensor (written into `target_locations[k]` when
        given, else newly allocated), or None where it could not be loaded."""
        targets = list(target_locations) if target_locations is not None else [None] * len(keys)
        out: list[torch.Tensor | None] = [None] * len(keys)

        def copy_out(k: int, slot: torch.Tensor) -> None:
            out[k] = self._pages.slot_to_flat(slot, targets[k])

        self._load(keys, copy_out)
        return out

    def get(self, key: str, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location])[0]

    def batch_set(self, keys: List[str], values: Optional[Any] = None,
                  target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        """Store flat page tensors; True only if every page is now in the mesh."""
        if values is None or len(values) != len(keys):
            return False
        return all(self._save(keys, lambda k, slot: self._pages.flat_to_slot(values[k], slot)))

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return value is not None and self.batch_set([key], [value])

    # -- management ---------------------------------------------------------------

    def clear(self) -> bool:
        """Drop every page this rank's peer holds (other peers keep theirs)."""
        if self._peer is not None:
            logger.info("kvmesh: cleared %d pages", self._peer.clear())
        return True

    def get_stats(self):
        return self.metrics.take()

    def close(self) -> None:
        """Stop the peer; afterwards every call misses. Idempotent."""
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()

    # -- the two paths ------------------------------------------------------------

    def _load(self, keys: List[str], copy: Callable[[int, torch.Tensor], None]) -> List[bool]:
        loaded = [False] * len(keys)
        peer = self._peer
        if peer is None or not keys:
            return loaded
        start = time.perf_counter()
        for result in drain(peer.start_load(self._chunk_keys(keys)), self._timeout_s):
            if result.data is None:
                continue
            if is_encoded(result.data.numel()):
                logger.warning("kvmesh: page %s arrived encoded (%d bytes); SGLang pages are "
                               "kept raw, so it is a miss", keys[result.index],
                               result.data.numel())
                continue
            try:
                copy(result.index, result.data)
                loaded[result.index] = True
            except ValueError as exc:  # a slot of the wrong size: treat as a miss
                logger.warning("kvmesh: page %s not loaded: %s", keys[result.index], exc)
        n = sum(loaded)
        self.metrics.note_load(n, len(keys) - n, n * self._pages.page_bytes,
                               time.perf_counter() - start)
        return loaded

    def _save(self, keys: List[str], fill: Callable[[int, torch.Tensor], None]) -> List[bool]:
        saved = [False] * len(keys)
        peer = self._peer
        if peer is None or not keys:
            return saved
        start = time.perf_counter()
        for k, key in enumerate(self._chunk_keys(keys)):
            saved[k] = self._save_one(peer, key, functools.partial(fill, k))
        n = sum(saved)
        self.metrics.note_save(n, len(keys) - n, n * self._pages.page_bytes,
                               time.perf_counter() - start)
        return saved

    def _save_one(self, peer: MeshPeer, key: ChunkKey,
                  fill: Callable[[torch.Tensor], None]) -> bool:
        ticket = peer.prepare_save(key)
        if ticket is None:  # already held here, or no free slot: is it in the mesh?
            try:
                return peer.lookup_prefix([key]) == 1
            except KvmeshError:
                return False
        try:
            fill(ticket.data)
        except ValueError as exc:  # a page of the wrong size: not stored
            peer.commit_save(ticket, ok=False)
            logger.warning("kvmesh: page not stored: %s", exc)
            return False
        except BaseException:
            peer.commit_save(ticket, ok=False)
            raise
        peer.commit_save(ticket, ok=True)
        return True


def refuse_lossy_codecs(codecs: CodecConfig) -> None:
    """ConfigError naming every KVMESH_CODEC_* setting that names a lossy codec."""
    if not codecs.lossy:
        return
    named = [f"{var}={getattr(codecs, place)}" for place, var in CODEC_VARIABLES.items()
             if getattr(codecs, place) == codecs.lossy]
    raise ConfigError(f"{', '.join(named)}: kvmesh keeps SGLang pages exact (the codecs cannot "
                      "read SGLang's host page layouts, so lossy pages could not be decoded); "
                      "unset it for SGLang engines")
