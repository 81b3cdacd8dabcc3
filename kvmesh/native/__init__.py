"""Hot loops in C, each with a pure-Python twin that gives the same result.

The C extension (`_speedups.c`, built at install; optional) exists because
the per-item cost of a Python loop dominates each of them:

- `chain_keys`: chained xxh3-128 chunk keys over an int32 token buffer.
  Python pays ~1 us per chunk in slicing, concatenation and calls; raw xxh3
  over a 256-token chunk takes ~0.1 us.
- `copy_checksum`: copy a chunk and compute its xxh3_64 in one pass (each
  block hashed while still in cache), with the GIL released. Copying and then
  hashing the 2 MiB destination reads it twice from memory.
- `copy_stream`: a plain chunk copy with streaming stores (glibc's memcpy
  streams only copies far bigger than a chunk), GIL released.
- `pack_int32`: a list of token ids as int32 bytes; numpy and array.array
  spend 25-40 ns per Python int, the C loop a few.
- `gather_blocks` / `scatter_blocks`: a chunk's block-rows between paged KV
  buffers and a slab (layout in `kvmesh.native.blocks`), all memcpys in one
  call with the GIL released. Python pays 1-5 us per strided copy, and a
  chunk of scattered block ids is dozens of them.

`NATIVE` says which implementation is in use (`ISA`: the instruction set
the C kernels were picked for: avx512, avx2, default; "python" without C); the `py_*` twins are always
importable so tests can check that both agree. Nothing here reads config or
the environment.
"""

from __future__ import annotations

import array

import numpy as np
import xxhash

from kvmesh.native.blocks import py_gather_blocks, py_scatter_blocks

KEY_BYTES = 16


def py_chain_keys(root: bytes, tokens, chunk_bytes: int, n: int) -> list[bytes]:
    """k_i = xxh3_128(k_{i-1} || tokens[i*chunk_bytes:(i+1)*chunk_bytes]); k_0 = root."""
    view = memoryview(tokens).cast("B")
    if len(root) != KEY_BYTES or chunk_bytes <= 0 or n < 0 or n * chunk_bytes > len(view):
        raise ValueError("chain_keys: bad root, chunk size or count")
    digest = xxhash.xxh3_128_digest
    prev, out = root, []
    for i in range(n):
        prev = digest(prev + view[i * chunk_bytes:(i + 1) * chunk_bytes])
        out.append(prev)
    return out


def py_copy_checksum(dst, src) -> int:
    """dst[:len(src)] = src; returns xxh3_64 of the copied bytes."""
    return xxhash.xxh3_64_intdigest(_copy(dst, src, "copy_checksum"))


def py_copy_stream(dst, src) -> None:
    """dst[:len(src)] = src (the C version bypasses the cache; same bytes)."""
    _copy(dst, src, "copy_stream")


def _copy(dst, src, name: str) -> memoryview:
    """dst[:len(src)] = src, checked as the C copies check it; returns that part of dst."""
    src = memoryview(src).cast("B")
    dst = memoryview(dst).cast("B")
    if len(src) > len(dst):
        raise ValueError(f"{name}: destination is smaller than the source")
    dst[:len(src)] = src
    return dst[:len(src)]


def py_pack_int32(seq) -> bytes:
    """A list or tuple of ints as int32 little-endian bytes.

    TypeError for a non-integer item, OverflowError for a value outside int32.
    """
    wide = np.frombuffer(array.array("q", seq), dtype=np.int64)
    if wide.size and (wide.min() < -(1 << 31) or wide.max() >= (1 << 31)):
        raise OverflowError("token ids must fit in int32")
    return wide.astype("<i4").tobytes()


try:
    from kvmesh.native._speedups import (
        ISA, chain_keys, copy_checksum, copy_stream, gather_blocks, pack_int32, scatter_blocks,
    )

    NATIVE = True
except ImportError:  # not built (no compiler at install): same results, slower
    chain_keys, copy_checksum, pack_int32 = py_chain_keys, py_copy_checksum, py_pack_int32
    copy_stream = py_copy_stream
    gather_blocks, scatter_blocks = py_gather_blocks, py_scatter_blocks
    NATIVE, ISA = False, "python"

__all__ = ["ISA", "NATIVE", "chain_keys", "copy_checksum", "copy_stream", "gather_blocks",
           "pack_int32", "py_chain_keys", "py_copy_checksum", "py_copy_stream",
           "py_gather_blocks", "py_pack_int32",
           "py_scatter_blocks", "scatter_blocks"]
