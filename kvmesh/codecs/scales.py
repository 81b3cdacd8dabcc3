"""Per-group scales of the quantizing codecs, stored as bfloat16.

bfloat16 keeps fp32's exponent range in 2 bytes, so scales never overflow or
flush to zero where fp32 would not, and they cost half of fp32's: with
head_dim 64, fp8 of bf16 KV is 2 / (1 + 2/64) = 1.94x smaller (fp32 scales:
1.88x). A scale is amax / qmax rounded to bfloat16 (nearest even); values
are divided by the rounded scale and clamped to +-qmax, so rounding the scale
down costs at most a 2^-8 relative clip of the largest value.
"""

from __future__ import annotations

import torch

from kvmesh.errors import CodecError

SCALE_DTYPE = torch.bfloat16


def scale_from_amax(amax: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored bf16 scale, fp32 divisor): the divisor is the stored scale, or 1
    where the scale is 0 (an all-zero group, whose codes are then all 0)."""
    stored = (amax.float() / qmax).to(SCALE_DTYPE)
    as_float = stored.float()
    return stored, torch.where(as_float > 0, as_float, torch.ones_like(as_float))


MAX_SCALE = 2.0 ** 120  # above any amax / qmax (FLT_MAX / 448 < 2^119.2)


def check_scales(scales: torch.Tensor) -> None:
    """CodecError unless every stored scale is in [0, 2^120): no encoder writes
    another (a corrupt payload must not turn into inf/nan KV; the C decoder
    relies on the bound, see kvmesh/native/quant.c)."""
    ok = (scales >= 0) & (scales < MAX_SCALE)  # NaN fails both
    if not bool(ok.all()):
        raise CodecError("payload holds a negative or non-finite scale")
