"""`kvmesh bench hash`: chunk-key hashing speed next to raw xxh3 over the same bytes.

Baselines from the same run: one xxh3-128 call over the whole int32 buffer
(`tokens.tobytes()` then hash, as the figure was first defined, and over the
buffer in place), numpy's list -> int32 conversion (what a list input costs
before any hashing), and LMCache's ChunkedTokenDatabase over the same token
ids (its own venv; builtin hash, PYTHONHASHSEED=0), from a list and a tensor.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xxhash

from kvmesh import native
from kvmesh.bench import lmcache_run
from kvmesh.bench.report import Table
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace


def _median_seconds(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """The median time of each fn, all measured in turns, so that load from other
    processes on a shared machine falls on every row alike instead of on
    whichever row it coincides with. Each timed call follows an untimed one,
    so every row is timed with its own data in cache, as in a loop of it alone."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench hash", description=__doc__)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--lmcache-python", type=Path, default=lmcache_run.DEFAULT_PYTHON)
    args = parser.parse_args(argv)
    # The same ids lmcache_side hashes.
    tokens = np.random.default_rng(0).integers(0, 128_000, args.tokens, dtype=np.int32)
    as_list, as_tensor = tokens.tolist(), torch.from_numpy(tokens.astype(np.int64))
    hasher = ChunkHasher(KeyNamespace("bench", "bf16", 32, 8, 128, args.chunk_tokens, "flash"))
    t = _median_seconds({
        "raw": lambda: xxhash.xxh3_128_digest(tokens.tobytes()),
        "raw in place": lambda: xxhash.xxh3_128_digest(tokens),
        "np list": lambda: np.asarray(as_list, dtype=np.int32),
        "array": lambda: hasher.keys(tokens),
        "list": lambda: hasher.keys(as_list),
        "tensor": lambda: hasher.keys(as_tensor),
    }, args.reps)
    lmc = lmcache_run.run("hash", args.lmcache_python, tokens=args.tokens,
                          chunk_tokens=args.chunk_tokens, reps=args.reps)
    table = Table("hash", ["what", "Mtokens/s", "vs raw xxh3", "vs LMCache (same input)"])

    def row(what: str, seconds: float, lmcache_s: float | None = None) -> None:
        table.add(what, args.tokens / seconds / 1e6, t["raw"] / seconds,
                  lmcache_s / seconds if lmcache_s else "-")

    row("raw xxh3-128 over the int32 buffer (tobytes + one call)", t["raw"])
    row("raw xxh3-128 over the int32 buffer in place (one call)", t["raw in place"])
    row("numpy list -> int32 conversion alone", t["np list"])
    row("kvmesh chunk keys from an int32 array", t["array"])
    row("kvmesh chunk keys from a Python list", t["list"], lmc and lmc["list_s"])
    row("kvmesh chunk keys from a torch tensor", t["tensor"], lmc and lmc["tensor_s"])
    if lmc:
        row("LMCache ChunkedTokenDatabase from a Python list", lmc["list_s"], lmc["list_s"])
        row("LMCache ChunkedTokenDatabase from a torch tensor", lmc["tensor_s"], lmc["tensor_s"])
    else:
        table.note(lmcache_run.skipped_note(args.lmcache_python))
    table.note(f"{args.tokens} tokens, chunks of {args.chunk_tokens}, median of {args.reps} "
               f"(this process's rows timed in turns); "
               f"kvmesh.native: {'C (' + native.ISA + ')' if native.NATIVE else 'pure Python'}")
    table.note("'vs raw xxh3' divides by the tobytes row, whose copy of the buffer is about half "
               "its time; the in-place row is the bare hash. The kvmesh rows read the buffer in "
               "place but run one chained xxh3-128 per chunk (16 more bytes and a finalization "
               "each, one after another) and return a list of one bytes object per chunk.")
    table.emit()
    return 0
