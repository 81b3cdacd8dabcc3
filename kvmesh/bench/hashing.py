"""`kvmesh bench hash`: chunk-key hashing speed next to raw xxh3 over the same bytes."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import xxhash

from kvmesh.bench.report import Table
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace


def _median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench hash", description=__doc__)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args(argv)
    tokens = np.random.default_rng(0).integers(0, 128_000, args.tokens, dtype=np.int32)
    as_list = tokens.tolist()
    hasher = ChunkHasher(KeyNamespace("bench", "bf16", 32, 8, 128, args.chunk_tokens, "flash"))
    raw = _median_seconds(lambda: xxhash.xxh3_128_digest(tokens.tobytes()), args.reps)
    ours_np = _median_seconds(lambda: hasher.keys(tokens), args.reps)
    ours_list = _median_seconds(lambda: hasher.keys(as_list), args.reps)
    table = Table("hash", ["what", "Mtokens/s", "vs raw xxh3"])
    table.add("raw xxh3-128 over the int32 buffer (one call)", args.tokens / raw / 1e6, 1.0)
    table.add("kvmesh chunk keys from an int32 array", args.tokens / ours_np / 1e6, raw / ours_np)
    table.add("kvmesh chunk keys from a Python list", args.tokens / ours_list / 1e6, raw / ours_list)
    table.note(f"{args.tokens} tokens, chunks of {args.chunk_tokens}, median of {args.reps}")
    table.emit()
    return 0
