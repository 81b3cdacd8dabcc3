"""Real SGLang objects built on CPU, without an engine (needs SGLang installed).

`host_pool(layout)` is SGLang's own `MHATokenToKVPoolHost` over plain CPU
tensors; `fill_pages` / `pages_equal` write and check page contents derived
from a seed alone, so another process can check the bytes it loaded.
`bare_controller` is SGLang's `HiCacheController` with only the fields its
storage methods use, so SGLang's own batching, key hashing and interface
choice drive the backend.
"""

from __future__ import annotations

import queue
import time

import torch
from sglang.srt.managers.cache_controller import (
    HiCacheController,
    PrefetchOperation,
    StorageOperation,
)
from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
from sglang.srt.mem_cache.storage import StorageBackendFactory
from sglang.srt.mem_cache.utils import get_storage_hash_str

# Every host layout an MHA host pool offers on CPU (page_first_kv_split is NPU-only).
LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")
LAYERS, HEADS, HEAD_DIM, PAGE = 2, 2, 8, 4
DEVICE_TOKENS = 1024
EXTRA_CONFIG = {"backend_name": "kvmesh", "module_path": "kvmesh.connectors.sglang",
                "class_name": "KvmeshHiCacheStorage"}


def host_pool(layout: str, dtype: torch.dtype = torch.float32, page: int = PAGE,
              heads: int = HEADS) -> MHATokenToKVPoolHost:
    """A host pool of 2x DEVICE_TOKENS tokens (512 pages), unpinned (no CUDA here)."""
    k = [torch.zeros(DEVICE_TOKENS + page, heads, HEAD_DIM, dtype=dtype) for _ in range(LAYERS)]
    v = [torch.zeros(DEVICE_TOKENS + page, heads, HEAD_DIM, dtype=dtype) for _ in range(LAYERS)]

    def ptrs(ts):
        return torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64)

    info = MHABufferInfo(buffers=KVBuffers(k=tuple(k), v=tuple(v), k_data_ptrs=ptrs(k),
                                           v_data_ptrs=ptrs(v), layout=KVBufferLayout.NHD),
                         page_size=page, head_num=heads, head_dim=HEAD_DIM, v_head_dim=HEAD_DIM,
                         dtype=dtype, device=torch.device("cpu"))
    return MHATokenToKVPoolHost(info, 2.0, 0, page, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=DEVICE_TOKENS, start_layer=0,
                                end_layer=LAYERS - 1)


def storage_config(model: str = "tiny-llama", tp_rank: int = 0, tp_size: int = 1,
                   interface_v1: bool = True, **extra) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=True, is_page_first_layout=False,
        model_name=model,
        extra_config={**EXTRA_CONFIG, "interface_v1": int(interface_v1), **extra})


def create_backend(pool, config: HiCacheStorageConfig):
    """What SGLang's cache controller does on attach: factory, then register the pool."""
    backend = StorageBackendFactory.create_backend("dynamic", config, pool)
    backend.register_mem_pool_host(pool)
    return backend


def prompt(seed: int, pages: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32000, (pages * PAGE,), generator=g).tolist()


def page_keys(tokens: list[int]) -> list[str]:
    """SGLang's own storage keys of the full pages of `tokens`."""
    return get_storage_hash_str(tokens, None, page_size=PAGE)


def _content(pool, seed: int, page_no: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + page_no)
    return torch.randn(shape, generator=g).to(pool.dtype)


def fill_pages(pool, host_indices: torch.Tensor, seed: int) -> None:
    for n in range(len(host_indices) // pool.page_size):
        page = pool.get_data_page(int(host_indices[n * pool.page_size]), flat=False)
        page.copy_(_content(pool, seed, n, page.shape))


def pages_equal(pool, host_indices: torch.Tensor, seed: int, pages: int) -> list[bool]:
    """Whether each of the first `pages` pages holds exactly what fill_pages wrote."""
    out = []
    for n in range(pages):
        page = pool.get_data_page(int(host_indices[n * pool.page_size]), flat=False)
        out.append(torch.equal(page, _content(pool, seed, n, page.shape)))
    return out


def bare_controller(backend, pool, interface_v1: bool) -> HiCacheController:
    ctrl = HiCacheController.__new__(HiCacheController)
    ctrl.storage_backend = backend
    ctrl.mem_pool_host = ctrl.storage_host_pool = pool
    ctrl.page_size = pool.page_size
    ctrl.prefetch_sync_queue = queue.Queue()
    # As attach_storage_backend chooses for "dynamic" with/without interface_v1.
    ctrl.page_get_func = ctrl._page_get_zero_copy if interface_v1 else ctrl._generic_page_get
    ctrl.page_set_func = ctrl._page_set_zero_copy if interface_v1 else ctrl._generic_page_set
    return ctrl


def backup(ctrl, tokens: list[int], seed: int) -> int:
    """Fill host pages for `tokens` and back them up; returns tokens written to storage."""
    indices = ctrl.mem_pool_host.alloc(len(tokens))
    fill_pages(ctrl.mem_pool_host, indices, seed)
    op = StorageOperation(indices, tokens, hash_value=page_keys(tokens))
    ctrl._page_backup(op)
    ctrl.mem_pool_host.free(indices)
    return op.completed_tokens


def query(ctrl, tokens: list[int]) -> int:
    """SGLang's storage hit query: tokens found in storage, from the start."""
    _, hit_tokens = ctrl._storage_hit_query(PrefetchOperation("q", tokens))
    return hit_tokens


def wait_for_hits(ctrl, tokens: list[int], timeout_s: float = 10.0) -> int:
    """Poll the hit query until every page is found (advertising is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        hit = query(ctrl, tokens)
        if hit == len(tokens) or time.monotonic() > deadline:
            return hit
        time.sleep(0.05)


def fetch(ctrl, tokens: list[int], seed: int) -> tuple[int, int, list[bool]]:
    """Hit query, then transfer the hits into fresh host pages.

    Returns (hit tokens, tokens transferred, whether each transferred page is
    bit-exact with what `backup(..., seed)` wrote).
    """
    op = PrefetchOperation("r", tokens)
    hashes, hit_tokens = ctrl._storage_hit_query(op)
    if not hashes:
        return hit_tokens, 0, []
    op.hash_value = hashes
    op.host_indices = ctrl.mem_pool_host.alloc(len(hashes) * ctrl.page_size)
    try:
        pages = ctrl._page_transfer(op)
        return hit_tokens, pages * ctrl.page_size, pages_equal(ctrl.mem_pool_host,
                                                               op.host_indices, seed, pages)
    finally:
        ctrl.mem_pool_host.free(op.host_indices)
