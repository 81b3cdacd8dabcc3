"""What `kvmesh bench codecs` measures for one codec on a set of chunks.

Pure measurement, no printing: ratio, speeds beside a same-run memcpy of the
same bytes, pool capacity and decode error. Timings: each case walks every
chunk once (so chunks leave the caches as they would in a pool); cases are
interleaved in a fresh random order each round and the median round counts
(see `kvmesh.bench.kernels` for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kvmesh.bench.rounds import interleaved_medians
from kvmesh.codecs import ChunkGeometry, decode_chunk, encode_chunk, encoded_bound, get_codec

GIB = 1 << 30


@dataclass
class CodecResult:
    codec: str
    raw_bytes: int  # all chunks, raw
    stored_bytes: int  # all chunks as stored: envelopes, or raw where declined
    encoded: int  # chunks that became envelopes
    encode_s: float  # median seconds to encode every chunk
    decode_s: float  # median seconds to decode every envelope (0 when none)
    decoded_bytes: int  # raw bytes of the chunks that were envelopes
    max_abs_err: float
    mean_abs_err: float
    max_abs_value: float

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes


def chunk_arrays(chunks: list[torch.Tensor], geometry: ChunkGeometry) -> torch.Tensor:
    """Every chunk's values, as one float64 vector (for error figures)."""
    return torch.cat([c.view(geometry.dtype).double() for c in chunks])


def measure_codec(name: str, geometry: ChunkGeometry, blocks: int, chunks: list[torch.Tensor],
                  reps: int, memcpy: Callable[[], None], errors: bool = True
                  ) -> tuple[CodecResult, float]:
    """(result, memcpy seconds) for codec `name`, timed interleaved with `memcpy`
    (a copy of every chunk's bytes), each a median of `reps` rounds. Without
    `errors`, the error figures are left at 0 (they cost a float64 pass)."""
    lossy = "" if get_codec(name).lossless else name
    envelopes = [encode_chunk(c, name, geometry, blocks) for c in chunks]
    kept = [(c, e) for c, e in zip(chunks, envelopes) if e is not None]
    outs = [torch.empty_like(c) for c, _ in kept]

    def encode_all() -> None:
        for c in chunks:
            encode_chunk(c, name, geometry, blocks)

    def decode_all() -> None:
        for (_, e), out in zip(kept, outs):
            decode_chunk(e, geometry, lossy, out=out)

    encode_s, decode_s, memcpy_s = interleaved_medians([encode_all, decode_all, memcpy], reps)
    stored = sum(e.numel() if e is not None else c.numel() for c, e in zip(chunks, envelopes))
    result = CodecResult(
        codec=name, raw_bytes=sum(c.numel() for c in chunks), stored_bytes=stored,
        encoded=len(kept), encode_s=encode_s, decode_s=decode_s if kept else 0.0,
        decoded_bytes=sum(c.numel() for c, _ in kept), max_abs_err=0.0, mean_abs_err=0.0,
        max_abs_value=0.0)
    if errors:
        decode_all()
        raw = chunk_arrays(chunks, geometry)
        err = (chunk_arrays(outs, geometry) - chunk_arrays([c for c, _ in kept], geometry)).abs() \
            if kept else torch.zeros(1, dtype=torch.float64)
        result.max_abs_err, result.mean_abs_err = float(err.max()), float(err.mean())
        result.max_abs_value = float(raw.abs().max())
    return result, memcpy_s


def working_set(chunks: list[torch.Tensor], min_bytes: int) -> list[torch.Tensor]:
    """`chunks`, then copies of them, until they hold at least `min_bytes`: a
    case that walks them all then reads from memory, not from a cache, as a
    decode out of a large CPU pool does (and so does its memcpy baseline)."""
    out = list(chunks)
    while sum(c.numel() for c in out) < min_bytes:
        out.append(chunks[len(out) % len(chunks)].clone())
    return out


def memcpy_all(chunks: list[torch.Tensor]) -> Callable[[], None]:
    """A copy of every chunk's bytes into a buffer of its own (torch copy_,
    at the current thread setting)."""
    outs = [torch.empty_like(c) for c in chunks]

    def run() -> None:
        for c, out in zip(chunks, outs):
            out.copy_(c)

    return run


def chunks_per_gib(name: str, geometry: ChunkGeometry, blocks: int) -> int | None:
    """Full chunks a 1 GiB CPU pool holds with this codec's slots ("none": raw
    slots); None for a lossless codec (refused on CPU: fixed slots gain
    nothing from variable sizes)."""
    if name == "none":
        return GIB // geometry.raw_bytes(blocks)
    codec = get_codec(name)
    if codec.lossless:
        return None
    slot = max(encoded_bound(codec, geometry, blocks), 0)
    return GIB // min(slot, geometry.raw_bytes(blocks))


