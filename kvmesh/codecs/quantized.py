"""The shared shape of the quantizing codecs (fp8, int8): codes and bf16 scales.

Payload: one code byte per KV element, in the raw chunk's own element order
(so decoding writes its output in order), then K's scales, then V's, each a
contiguous bfloat16 array. A scale covers the values along one axis of the
logical [L, B, H, N, D] view: axis -1 (a token's head: [L, B, H, N] scales)
or axis -2 (a channel over a block's tokens: [L, B, H, D] scales). A value x
in a group whose largest magnitude is amax is stored as code(x / s),
s = bf16(amax / qmax), and decodes to dtype(code * s), rounded once.
"""

from __future__ import annotations

import torch

from kvmesh.codecs.base import FixedRatioCodec
from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.scales import SCALE_DTYPE, check_scales, scale_from_amax
from kvmesh.codecs.views import element_views, kv_views


class QuantizingCodec(FixedRatioCodec):
    lossless = False
    code_dtype: torch.dtype  # one byte
    qmax: float
    k_axis: int  # -1 or -2: the logical axis one K scale covers
    v_axis: int

    def quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        """Values already divided by their scale -> codes (any float dtype;
        the caller copies them into the code view)."""
        raise NotImplementedError

    def payload_bytes(self, geometry: ChunkGeometry, blocks: int) -> int:
        k, v = (_scale_count(geometry, blocks, a) for a in (self.k_axis, self.v_axis))
        return blocks * geometry.block_elements + (k + v) * SCALE_DTYPE.itemsize

    def encode_into(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                    payload: torch.Tensor) -> None:
        codes, scales = self.split(payload, geometry, blocks)
        for x, q, s, axis in zip(kv_views(raw, geometry, blocks), codes, scales,
                                 (self.k_axis, self.v_axis)):
            stored, divisor = scale_from_amax(x.abs().amax(axis), self.qmax)
            s.copy_(stored)
            q.copy_(self.quantize(x.float() / divisor.unsqueeze(axis)))

    def decode(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
               out: torch.Tensor) -> None:
        codes, scales = self.split(payload, geometry, blocks)
        for s in scales:
            check_scales(s)
        for y, q, s, axis in zip(kv_views(out, geometry, blocks), codes, scales,
                                 (self.k_axis, self.v_axis)):
            y.copy_(q)  # exact: every code is a bf16, fp16 and fp32 value
            y.mul_(s.unsqueeze(axis))  # one rounding, to y's dtype

    def split(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int):
        """((K codes, V codes) [L, B, H, N, D] views, (K scales, V scales) views)."""
        g, n = geometry, blocks * geometry.block_elements
        codes = element_views(payload[:n].view(self.code_dtype), g, blocks)
        flat = payload[n:].view(SCALE_DTYPE)
        k_count = _scale_count(g, blocks, self.k_axis)
        k = flat[:k_count].view(_scale_shape(g, blocks, self.k_axis))
        v = flat[k_count:].view(_scale_shape(g, blocks, self.v_axis))
        return codes, (k, v)


def _scale_shape(g: ChunkGeometry, blocks: int, axis: int) -> tuple[int, ...]:
    last = g.block_size if axis == -1 else g.head_dim
    return (g.num_layers, blocks, g.num_kv_heads, last)


def _scale_count(g: ChunkGeometry, blocks: int, axis: int) -> int:
    return g.num_layers * blocks * g.num_kv_heads * (g.block_size if axis == -1 else g.head_dim)
