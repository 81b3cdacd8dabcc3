"""Moving KV chunks between an engine's paged KV cache and uint8 slabs."""

from kvmesh.kernels.layouts import (
    LAYOUTS, KVLayout, chunk_bytes, detect_layout, get_layout, layer_block_bytes,
)
from kvmesh.kernels.paged import PagedKV, gather_chunk, scatter_chunk

__all__ = ["LAYOUTS", "KVLayout", "PagedKV", "chunk_bytes", "detect_layout", "gather_chunk",
           "get_layout", "layer_block_bytes", "scatter_chunk"]
