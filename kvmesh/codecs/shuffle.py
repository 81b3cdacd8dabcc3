"""Byte shuffle: a chunk's elements regrouped into byte planes by significance.

Plane k holds byte k (little-endian) of every element. The top plane of
bf16/fp16/fp32 holds the sign and most of the exponent: a few distinct
values, which a compressor squeezes ~3x; the mantissa planes are nearly
random. Done with integer shifts on whole tensors (torch runs strided byte
transposes ~40x slower than these on CPU).
"""

from __future__ import annotations

import torch

_INT_OF_SIZE = {2: torch.int16, 4: torch.int32}


def shuffle(raw: torch.Tensor, itemsize: int) -> torch.Tensor:
    """[itemsize, n] uint8 planes of the contiguous uint8 `raw` (n = len / itemsize)."""
    ints = raw.view(_INT_OF_SIZE[itemsize])
    planes = torch.empty((itemsize, ints.numel()), dtype=torch.uint8, device=raw.device)
    for k in range(itemsize):
        planes[k].copy_(torch.bitwise_and(ints >> (8 * k), 0xFF))
    return planes


def unshuffle(planes: torch.Tensor, out: torch.Tensor) -> None:
    """Write the elements of `planes` ([itemsize, n] uint8) into `out` (uint8, itemsize * n)."""
    itemsize = planes.shape[0]
    ints = out.view(_INT_OF_SIZE[itemsize])
    ints.copy_(planes[0])
    for k in range(1, itemsize):
        ints.bitwise_or_(planes[k].to(ints.dtype) << (8 * k))
