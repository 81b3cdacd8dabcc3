"""The drift benchmark's negative control: a deliberately broken fp8 codec.

`BrokenFp8Codec` is fp8 with one fault planted in what it writes: every V
scale is doubled, so V decodes at twice its value while K stays fp8-exact.
Its envelopes are well formed (they pass every check), so a load takes them
and the engine attends over wrong values: a benchmark that cannot tell this
codec's reuse from exact reuse is not measuring the loaded KV.

It is never in the shipped registry. `install()` registers it in the calling
process only (`register_local_codec`, an id of its own above the shipped
ones), before the engine reads KVMESH_CODEC_CPU=fp8-broken; any other process
sees its envelopes as an unknown codec, a miss.
"""

from __future__ import annotations

import torch

from kvmesh.codecs import CODECS, ChunkGeometry
from kvmesh.codecs.fp8 import Fp8Codec
from kvmesh.codecs.registry import register_local_codec

NAME = "fp8-broken"
V_SCALE_FACTOR = 2.0  # a power of two: the doubled bf16 scale is exact, never clipped


class BrokenFp8Codec(Fp8Codec):
    name = NAME
    codec_id = 200

    def encode_into(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                    payload: torch.Tensor) -> None:
        super().encode_into(raw, geometry, blocks, payload)
        _, (_, v_scales) = self.split(payload, geometry, blocks)
        v_scales.mul_(V_SCALE_FACTOR)


def install() -> None:
    """Register the broken codec in this process (idempotent)."""
    if NAME not in CODECS:
        register_local_codec(BrokenFp8Codec())
