"""K and V of a chunk as logical [L, B, H, N, D] views over its bytes (no copy).

L layers, B blocks, H kv heads, N tokens per block, D head dim. The views
follow each layout's byte order (see `kvmesh.kernels.layouts`); for
"vllm-cpu", K inside a (block, head) is stored transposed ([D, N]), so its
view's token dim is the one with unit stride.
"""

from __future__ import annotations

import torch

from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.errors import CodecError


def kv_views(raw: torch.Tensor, geometry: ChunkGeometry,
             blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V), each [L, B, H, N, D] of `geometry.dtype`, viewing the uint8 `raw`
    (1-D, contiguous, `geometry.raw_bytes(blocks)` long). Writes through the
    views change `raw`."""
    return element_views(as_elements(raw, geometry.dtype, geometry.raw_bytes(blocks)),
                         geometry, blocks)


def as_elements(raw: torch.Tensor, dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    """`raw` (1-D contiguous uint8 of `nbytes`) viewed as `dtype` elements."""
    if raw.dtype != torch.uint8 or raw.dim() != 1 or not raw.is_contiguous():
        raise CodecError(f"expected a contiguous 1-D uint8 tensor, got {raw.dtype} "
                         f"{tuple(raw.shape)}")
    if raw.numel() != nbytes:
        raise CodecError(f"expected {nbytes} bytes, got {raw.numel()}")
    if raw.storage_offset() % dtype.itemsize:
        raise CodecError(f"bytes at storage offset {raw.storage_offset()} cannot be "
                         f"viewed as {dtype}")
    return raw.view(dtype)


def element_views(elems: torch.Tensor, geometry: ChunkGeometry,
                  blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V) [L, B, H, N, D] views of a chunk's elements laid out as `geometry.layout`,
    whatever their dtype (a codec views its fp8 or int8 codes the same way)."""
    g = geometry
    L, B, H, N, D = g.num_layers, blocks, g.num_kv_heads, g.block_size, g.head_dim
    if elems.numel() != L * B * H * N * 2 * D:
        raise CodecError(f"{elems.numel()} elements do not hold {blocks} blocks")
    if g.layout == "vllm-cpu":  # per (block, head): K^T [D, N] then V [N, D]
        x = elems.view(L, B, H, 2, N * D)
        return x[:, :, :, 0].unflatten(-1, (D, N)).transpose(-1, -2), \
            x[:, :, :, 1].unflatten(-1, (N, D))
    if g.layout == "flash":  # [2, B, N, H, D]
        x = elems.view(L, 2, B, N, H, D)
        return x[:, 0].transpose(2, 3), x[:, 1].transpose(2, 3)
    if g.layout == "flashinfer":  # [B, 2, N, H, D]
        x = elems.view(L, B, 2, N, H, D)
        return x[:, :, 0].transpose(2, 3), x[:, :, 1].transpose(2, 3)
    if g.layout == "vllm-hnd":  # [B, H, N, 2D], K = first D
        x = elems.view(L, B, H, N, 2, D)
        return x[..., 0, :], x[..., 1, :]
    if g.layout == "vllm-nhd":  # [B, N, H, 2D], K = first D
        x = elems.view(L, B, N, H, 2, D)
        return x[..., 0, :].transpose(2, 3), x[..., 1, :].transpose(2, 3)
    raise CodecError(f"no K/V views for layout {g.layout!r}")
