"""The shape of a chunk's KV, which every codec needs to find K and V in its bytes.

A chunk holds `blocks` blocks of every layer, layer-major, each layer's bytes
in the engine's paged layout (see `kvmesh.kernels.layouts`). Its raw length is
always even: K and V are both there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from kvmesh.errors import CodecError
from kvmesh.kernels.layouts import LAYOUTS

# KV dtypes the codecs read; any other (an fp8 KV cache, say) is left as raw bytes.
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_BLOCKS = 256
_LAYOUT_TAG = re.compile(r"(?P<layout>[a-z-]+)/block(?P<block>[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class ChunkGeometry:
    """One engine's chunk shape: layout name, KV dtype and the model's KV dims.

    `max_blocks` is the most blocks one chunk may hold (chunk_tokens //
    block_size; `from_namespace` sets it): a decoder refuses an envelope that
    claims more before it allocates anything.
    """

    layout: str
    dtype: torch.dtype
    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    max_blocks: int = DEFAULT_MAX_BLOCKS

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise CodecError(f"unknown KV layout {self.layout!r}; known: {sorted(LAYOUTS)}")
        if self.dtype not in FLOAT_DTYPES.values():
            raise CodecError(f"codecs read float32, bfloat16 or float16 KV, not {self.dtype}")
        for name in ("num_layers", "block_size", "num_kv_heads", "head_dim", "max_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CodecError(f"{name} must be a positive int, got {value!r}")

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def block_elements(self) -> int:
        """Elements of one block, all layers, K and V."""
        return self.num_layers * 2 * self.block_size * self.num_kv_heads * self.head_dim

    @property
    def block_bytes(self) -> int:
        return self.block_elements * self.itemsize

    def raw_bytes(self, blocks: int) -> int:
        return blocks * self.block_bytes

    def check_blocks(self, blocks: int) -> None:
        """CodecError unless 1 <= blocks <= max_blocks."""
        if not isinstance(blocks, int) or not 1 <= blocks <= self.max_blocks:
            raise CodecError(f"a chunk holds 1..{self.max_blocks} blocks, not {blocks!r}")

    def blocks_of(self, raw_len: int) -> int:
        """The block count of a raw chunk of `raw_len` bytes (CodecError if none fits)."""
        blocks, rest = divmod(raw_len, self.block_bytes)
        if rest:
            raise CodecError(f"{raw_len} bytes is not a whole number of "
                             f"{self.block_bytes}-byte blocks")
        self.check_blocks(blocks)
        return blocks

    @classmethod
    def from_namespace(cls, ns) -> "ChunkGeometry | None":
        """The geometry of a `KeyNamespace`'s chunks, or None when its layout
        ("opaque", SGLang pages) or dtype (fp8 KV) is not one codecs can read."""
        match = _LAYOUT_TAG.fullmatch(ns.kv_layout)
        dtype = FLOAT_DTYPES.get(ns.dtype)
        if match is None or match["layout"] not in LAYOUTS or dtype is None:
            return None
        block_size = int(match["block"])
        if ns.chunk_tokens <= 0 or ns.chunk_tokens % block_size:
            return None
        if min(ns.num_layers, ns.num_kv_heads, ns.head_dim) <= 0:
            return None
        return cls(layout=match["layout"], dtype=dtype, num_layers=ns.num_layers,
                   block_size=block_size, num_kv_heads=ns.num_kv_heads, head_dim=ns.head_dim,
                   max_blocks=ns.chunk_tokens // block_size)
