"""The paged-KV layouts kvmesh can move, and the byte size of a chunk in each.

A layout says how one layer's KV cache tensor is shaped and which of its dims
indexes blocks. A chunk's bytes for one layer are that tensor with only the
chunk's blocks kept along the block dim, in the tensor's own dim order
(dims before the block dim stay outside: for "flash" that is K's blocks, then
V's blocks). Bytes inside a block are never reinterpreted.

The layout name goes into the key namespace (`KeyNamespace.kv_layout`): two
engines share chunks only if their layouts have the same name.

Supported (B = blocks, N = block_size tokens, H = kv heads, D = head size):

- "vllm-cpu":   [B, H, N, 2*D], block dim 0. vLLM's CPU backend; K is stored
  transposed inside each (block, head), so blocks move whole.
- "flash":      [2, B, N, H, D], block dim 1. FlashAttention token-major.
- "flashinfer": [B, 2, N, H, D], block dim 0. FlashInfer NHD.
- "vllm-hnd" / "vllm-nhd": [B, H, N, 2*D] logical views on a GPU, as vLLM
  >= 0.32 passes them, with head-major (LBHNC) or token-major (LBNHC)
  strides. Their chunk bytes follow the physical order ([B, H, N, 2D] and
  [B, N, H, 2D] respectively).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from kvmesh.errors import KernelError


@dataclass(frozen=True, slots=True)
class KVLayout:
    """How one layer's paged KV tensor is laid out.

    `physical_order` permutes the registered per-layer tensor into the dim
    order in which chunk bytes are written (identity for contiguous layouts);
    `block_dim` indexes blocks in the permuted tensor.
    """

    name: str
    block_dim: int
    physical_order: tuple[int, ...]

    def layer_shape(self, num_blocks: int, block_size: int, num_kv_heads: int,
                    head_size: int) -> tuple[int, ...]:
        """The shape of one layer's tensor as the engine registers it."""
        return _SHAPES[self.name](num_blocks, block_size, num_kv_heads, head_size)


_SHAPES = {
    "vllm-cpu": lambda b, n, h, d: (b, h, n, 2 * d),
    "flash": lambda b, n, h, d: (2, b, n, h, d),
    "flashinfer": lambda b, n, h, d: (b, 2, n, h, d),
    "vllm-hnd": lambda b, n, h, d: (b, h, n, 2 * d),
    "vllm-nhd": lambda b, n, h, d: (b, h, n, 2 * d),
}

VLLM_CPU = KVLayout("vllm-cpu", 0, (0, 1, 2, 3))
FLASH = KVLayout("flash", 1, (0, 1, 2, 3, 4))
FLASHINFER = KVLayout("flashinfer", 0, (0, 1, 2, 3, 4))
VLLM_HND = KVLayout("vllm-hnd", 0, (0, 1, 2, 3))
VLLM_NHD = KVLayout("vllm-nhd", 0, (0, 2, 1, 3))

LAYOUTS: dict[str, KVLayout] = {
    layout.name: layout for layout in (VLLM_CPU, FLASH, FLASHINFER, VLLM_HND, VLLM_NHD)
}


def get_layout(layout: KVLayout | str) -> KVLayout:
    """The layout named `layout` (a `KVLayout` is returned as is)."""
    if isinstance(layout, KVLayout):
        return layout
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise KernelError(f"unknown KV layout {layout!r}; known: {sorted(LAYOUTS)}") from None


def layer_block_bytes(block_size: int, num_kv_heads: int, head_size: int,
                      dtype: torch.dtype) -> int:
    """Bytes of K and V of one block in one layer (the same in every layout)."""
    return 2 * block_size * num_kv_heads * head_size * dtype.itemsize


def chunk_bytes(layout: KVLayout | str, num_layers: int, blocks_per_chunk: int, *,
                block_size: int, num_kv_heads: int, head_size: int,
                dtype: torch.dtype) -> int:
    """Bytes of one chunk: `blocks_per_chunk` blocks of every layer.

    Raises ValueError for an unknown layout or a non-positive count.
    """
    get_layout(layout)
    counts = dict(num_layers=num_layers, blocks_per_chunk=blocks_per_chunk,
                  block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_size)
    for name, value in counts.items():
        if value <= 0:
            raise KernelError(f"{name} must be positive, got {value}")
    per_block = layer_block_bytes(block_size, num_kv_heads, head_size, dtype)
    return num_layers * blocks_per_chunk * per_block


def detect_layout(layers: Sequence[torch.Tensor], *, block_size: int, num_kv_heads: int,
                  head_size: int) -> KVLayout:
    """Which layout the engine's registered per-layer KV tensors use.

    All layers must share shape, dtype and device. Decided from the shape
    (and, for the 4-D GPU views, the strides) given the model's known
    `block_size`, `num_kv_heads` and `head_size`. Raises ValueError when the
    tensors match no supported layout, or more than one.
    """
    if not layers:
        raise KernelError("no KV cache tensors to detect a layout from")
    first = layers[0]
    for t in layers[1:]:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise KernelError("KV cache tensors differ in shape, dtype or device across layers")
    n, h, d = block_size, num_kv_heads, head_size
    shape = tuple(first.shape)
    if len(shape) == 4 and shape[1:] == (h, n, 2 * d):
        if first.device.type == "cpu":
            return VLLM_CPU
        return _gpu_4d_layout(first)
    matches = []
    if len(shape) == 5 and shape[0] == 2 and shape[2:] == (n, h, d):
        matches.append(FLASH)
    if len(shape) == 5 and shape[1] == 2 and shape[2:] == (n, h, d):
        matches.append(FLASHINFER)
    if len(matches) == 1:
        return matches[0]
    why = "ambiguous" if matches else "unsupported"
    raise KernelError(f"{why} KV cache shape {shape} for block_size={n}, "
                     f"num_kv_heads={h}, head_size={d}")


def _gpu_4d_layout(t: torch.Tensor) -> KVLayout:
    """Head-major or token-major, read from the strides of a [B, H, N, 2D] view."""
    _, h, n, _ = t.shape
    s_h, s_n, s_c = t.stride(1), t.stride(2), t.stride(3)
    if s_c == 1 and (h == 1 or s_h == n * s_n) and s_n == t.shape[3]:
        return VLLM_HND
    if s_c == 1 and (n == 1 or s_n == h * s_h) and s_h == t.shape[3]:
        return VLLM_NHD
    raise KernelError(f"unsupported strides {t.stride()} for a KV view of shape {tuple(t.shape)}")
