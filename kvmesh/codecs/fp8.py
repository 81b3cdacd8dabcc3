"""fp8: each K and V value as float8 e4m3, one bf16 scale per (layer, block, head, token).

Payload: the codes (one byte per KV element, in the raw chunk's own element
order, so decoding writes the output in order), then the K scales and the V
scales, each [L, B, H, N] bfloat16. A value x of a (token, head) row whose
largest magnitude is amax is stored as e4m3(x / s), s = bf16(amax / 448), and
decodes to dtype(e4m3 * s): its error is at most ~1/16 of amax.
"""

from __future__ import annotations

import torch

from kvmesh.codecs.base import FixedRatioCodec
from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.scales import SCALE_DTYPE, check_scales, scale_from_amax
from kvmesh.codecs.views import element_views, kv_views

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


class Fp8Codec(FixedRatioCodec):
    name = "fp8"
    codec_id = 1
    lossless = False

    def payload_bytes(self, geometry: ChunkGeometry, blocks: int) -> int:
        return _codes(geometry, blocks) + 2 * _rows(geometry, blocks) * SCALE_DTYPE.itemsize

    def encode_into(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                    payload: torch.Tensor) -> None:
        codes, scales = _split(payload, geometry, blocks)
        for x, q, s in zip(kv_views(raw, geometry, blocks), codes, scales):
            stored, divisor = scale_from_amax(x.abs().amax(-1), FP8_MAX)
            s.copy_(stored)
            q.copy_((x.float() / divisor.unsqueeze(-1)).clamp_(-FP8_MAX, FP8_MAX))

    def decode(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
               out: torch.Tensor) -> None:
        codes, scales = _split(payload, geometry, blocks)
        for s in scales:
            check_scales(s)
        for y, q, s in zip(kv_views(out, geometry, blocks), codes, scales):
            y.copy_(q)  # exact: every e4m3 value is a bf16, fp16 and fp32 value
            y.mul_(s.unsqueeze(-1))  # rounded once, to y's dtype


def _codes(geometry: ChunkGeometry, blocks: int) -> int:
    return blocks * geometry.block_elements


def _rows(geometry: ChunkGeometry, blocks: int) -> int:
    g = geometry
    return g.num_layers * blocks * g.num_kv_heads * g.block_size


def _split(payload: torch.Tensor, geometry: ChunkGeometry, blocks: int):
    """((K codes, V codes) as e4m3 [L,B,H,N,D] views, (K scales, V scales) [L,B,H,N])."""
    g, n = geometry, _codes(geometry, blocks)
    codes = element_views(payload[:n].view(FP8), g, blocks)
    scales = payload[n:].view(SCALE_DTYPE).view(2, g.num_layers, blocks, g.num_kv_heads,
                                                g.block_size)
    return codes, (scales[0], scales[1])
