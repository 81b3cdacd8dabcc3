"""int8: symmetric 8-bit codes; K scaled per channel, V per token.

K's outliers sit in a few channels across all tokens, so one K scale covers a
channel over a block's tokens (per layer, block, head, channel); V has no such
channels and gets one scale per token (per layer, block, head, token), as in
KIVI (Liu et al., 2024). Codes are round(x / s) (half to even), clamped to
+-127; a value's error is at most half a step, amax / 254 of its group.
With block 32 and head_dim 64, 1.91x smaller than bf16 KV, 3.83x than fp32.
"""

from __future__ import annotations

import torch

from kvmesh.codecs.quantized import QuantizingCodec

INT8_MAX = 127.0


class Int8Codec(QuantizingCodec):
    name = "int8"
    codec_id = 2
    code_dtype = torch.int8
    qmax = INT8_MAX
    k_axis = -2
    v_axis = -1

    def quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.round_().clamp_(-INT8_MAX, INT8_MAX)
