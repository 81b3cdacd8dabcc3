"""Test KV: paged layer tensors of every layout built from known logical K and V,
and chunks gathered from them by the kernels (so views are checked against the
bytes the engine connectors really store)."""

from __future__ import annotations

import torch

from kvmesh.codecs import ChunkGeometry
from kvmesh.kernels.paged import PagedKV

LAYOUT_NAMES = ["vllm-cpu", "flash", "flashinfer", "vllm-hnd", "vllm-nhd"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def geometry(layout="vllm-cpu", dtype=torch.float32, *, layers=2, block_size=4, heads=2,
             head_dim=8, max_blocks=8) -> ChunkGeometry:
    return ChunkGeometry(layout=layout, dtype=dtype, num_layers=layers, block_size=block_size,
                         num_kv_heads=heads, head_dim=head_dim, max_blocks=max_blocks)


def layer_tensor(layout: str, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One layer's paged tensor as the engine registers it, from K and V [B, H, N, D]."""
    b, h, n, d = k.shape
    if layout == "vllm-cpu":  # per (block, head): K^T [D, N], then V [N, D]
        kt = k.transpose(-1, -2).reshape(b, h, n * d)
        return torch.cat([kt, v.reshape(b, h, n * d)], dim=-1).view(b, h, n, 2 * d)
    if layout == "flash":
        return torch.stack([k.transpose(1, 2), v.transpose(1, 2)]).contiguous()
    if layout == "flashinfer":
        return torch.stack([k.transpose(1, 2), v.transpose(1, 2)], dim=1).contiguous()
    if layout == "vllm-hnd":
        return torch.cat([k, v], dim=-1).contiguous()
    if layout == "vllm-nhd":  # token-major storage seen through a [B, H, N, 2D] view
        return torch.cat([k, v], dim=-1).transpose(1, 2).contiguous().transpose(1, 2)
    raise ValueError(layout)


def paged_chunk(g: ChunkGeometry, block_ids: list[int], num_blocks: int = 6, seed: int = 0,
                scale: float = 1.0):
    """(raw chunk of `block_ids`, K, V [L, len(ids), H, N, D] it must hold)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (g.num_layers, num_blocks, g.num_kv_heads, g.block_size, g.head_dim)
    k = (torch.randn(shape, generator=gen) * scale).to(g.dtype)
    v = (torch.randn(shape, generator=gen) * scale).to(g.dtype)
    layers = [layer_tensor(g.layout, k[i], v[i]) for i in range(g.num_layers)]
    paged = PagedKV(layers, g.layout)
    raw = torch.empty(paged.chunk_bytes(len(block_ids)), dtype=torch.uint8)
    paged.gather(block_ids, raw)
    return raw, k[:, block_ids], v[:, block_ids]


def random_chunk(g: ChunkGeometry, blocks: int, seed: int = 0, scale: float = 1.0):
    """A raw chunk of normal values, and its logical (K, V)."""
    raw, k, v = paged_chunk(g, list(range(blocks)), num_blocks=blocks, seed=seed, scale=scale)
    return raw, k, v
