"""Numpy twins of the lossy codecs' math, for tests only.

Each takes logical K or V values ([L, B, H, N, D] float32 numpy) and returns
what the codec's round trip must give, computed independently of torch:
bf16 and e4m3 rounding are done here with integer and frexp arithmetic.
"""

from __future__ import annotations

import numpy as np

FP8_MAX = 448.0
INT8_MAX = 127.0


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest-even bfloat16, returned as float32 (finite inputs)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def round_e4m3(v: np.ndarray) -> np.ndarray:
    """float32 in [-448, 448] -> nearest-even float8 e4m3fn value (as float32)."""
    mag = np.abs(v).astype(np.float64)
    _, exp = np.frexp(mag)  # mag = m * 2**exp, m in [0.5, 1)
    step = np.exp2(np.maximum(exp - 1, -6) - 3)  # 3 mantissa bits; subnormals below 2**-6
    return (np.sign(v) * np.round(mag / step) * step).astype(np.float32)


def round_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to the KV dtype ("float32", "bfloat16", "float16")."""
    if dtype == "bfloat16":
        return round_bf16(x)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    return x.astype(np.float32)


def _scale(amax: np.ndarray, qmax: float) -> tuple[np.ndarray, np.ndarray]:
    stored = round_bf16(amax.astype(np.float32) / np.float32(qmax))
    return stored, np.where(stored > 0, stored, np.float32(1)).astype(np.float32)


def fp8_roundtrip(x: np.ndarray, dtype: str) -> np.ndarray:
    """fp8: e4m3 codes, one scale per row of the last dim (a token's head)."""
    stored, divisor = _scale(np.abs(x).max(axis=-1, keepdims=True), FP8_MAX)
    codes = round_e4m3(np.clip(x / divisor, -FP8_MAX, FP8_MAX))
    return round_dtype(codes * stored, dtype)


def int8_roundtrip(x: np.ndarray, dtype: str, axis: int) -> np.ndarray:
    """int8: symmetric codes, one scale per slice along `axis` (-2: per channel
    over a block's tokens, for K; -1: per token, for V)."""
    stored, divisor = _scale(np.abs(x).max(axis=axis, keepdims=True), INT8_MAX)
    codes = np.clip(np.round(x / divisor), -INT8_MAX, INT8_MAX)
    return round_dtype(codes * stored, dtype)
