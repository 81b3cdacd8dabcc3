"""The shared shape of the quantizing codecs (fp8, int8): codes and bf16 scales.

Payload: one code byte per KV element, in the raw chunk's own element order
(so decoding writes its output in order), then K's scales, then V's, each a
contiguous bfloat16 array. A scale covers the values along one axis of the
logical [L, B, H, N, D] view: axis -1 (a token's head: [L, B, H, N] scales)
or axis -2 (a channel over a block's tokens: [L, B, H, D] scales). A value x
in a group whose largest magnitude is amax is stored as code(x / s),
s = bf16(amax / qmax), and decodes to dtype(code * s), rounded once.

Two implementations give the same bytes: C loops for CPU tensors
(`kvmesh.codecs.native_loops`) and torch (CUDA, or no C extension).
KV holding inf or NaN cannot be scaled: encoding raises CodecError.
"""

from __future__ import annotations

import torch

from kvmesh.codecs import native_loops
from kvmesh.codecs.base import FixedRatioCodec
from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.native_loops import scale_count, scale_shape
from kvmesh.codecs.scales import SCALE_DTYPE, check_scales, scale_from_amax
from kvmesh.codecs.views import element_views, kv_views
from kvmesh.errors import CodecError


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
        k, v = (scale_count(geometry, blocks, a) for a in (self.k_axis, self.v_axis))
        return blocks * geometry.block_elements + (k + v) * SCALE_DTYPE.itemsize

    def encode_into(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                    payload: torch.Tensor) -> None:
        if native_loops.usable(raw, payload):
            native_loops.encode(raw, payload, geometry, blocks, self.code_dtype, self._axes,
                                self.qmax)
        else:
            self.encode_torch(raw, geometry, blocks, payload)

    def decode(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
               out: torch.Tensor) -> None:
        if payload.numel() != self.payload_bytes(geometry, blocks):
            raise CodecError(f"{self.name} payload of {payload.numel()} bytes for {blocks} "
                             f"blocks, expected {self.payload_bytes(geometry, blocks)}")
        if native_loops.usable(payload, out):
            native_loops.decode(payload, out, geometry, blocks, self.code_dtype, self._axes)
        else:
            self.decode_torch(payload, geometry, blocks, out)

    def encode_torch(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                     payload: torch.Tensor) -> None:
        codes, scales = self.split(payload, geometry, blocks)
        for x, q, s, axis in zip(kv_views(raw, geometry, blocks), codes, scales, self._axes):
            amax = x.abs().amax(axis)
            if not bool(torch.isfinite(amax).all()):
                raise CodecError("KV holds inf or NaN: no scale fits it")
            stored, divisor = scale_from_amax(amax, self.qmax)
            s.copy_(stored)
            q.copy_(self.quantize(x.float() / divisor.unsqueeze(axis)))

    def decode_torch(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                     out: torch.Tensor) -> None:
        codes, scales = self.split(payload, geometry, blocks)
        for s in scales:
            check_scales(s)
        self.check_codes(payload[:blocks * geometry.block_elements])
        for y, q, s, axis in zip(kv_views(out, geometry, blocks), codes, scales, self._axes):
            y.copy_(q)  # exact: every code is a bf16, fp16 and fp32 value
            y.mul_(s.unsqueeze(axis))  # one rounding, to y's dtype

    def check_codes(self, codes: torch.Tensor) -> None:
        """CodecError for code bytes no encoder writes (the C loops count them too)."""

    def split(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int):
        """((K codes, V codes) [L, B, H, N, D] views, (K scales, V scales) views)."""
        n = blocks * geometry.block_elements
        codes = element_views(payload[:n].view(self.code_dtype), geometry, blocks)
        scales = payload[n:].view(SCALE_DTYPE)
        k_count = scale_count(geometry, blocks, self.k_axis)
        k = scales[:k_count].view(scale_shape(geometry, blocks, self.k_axis))
        v = scales[k_count:].view(scale_shape(geometry, blocks, self.v_axis))
        return codes, (k, v)

    @property
    def _axes(self) -> tuple[int, int]:
        return self.k_axis, self.v_axis
