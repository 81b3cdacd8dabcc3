"""`kvmesh bench kernels`: chunk gather/scatter throughput next to memcpy.

For each chunk size, times (median of `--reps` runs, after warm-up, the cases
interleaved round-robin) a gather
and a scatter of one chunk of the chosen model shape's paged KV, and in the
same run a plain memcpy of the same number of bytes between two contiguous
uint8 tensors, twice: torch `copy_` (OpenMP threads) and numpy `copyto` (the
calling thread, as the CPU kernels copy). `vs memcpy` is relative to the
faster of the two: how close the kernels come to the memory system. Rows cover the one-view fast path (all layers in one buffer,
as vLLM allocates them) with consecutive and with scattered block ids, and
the per-layer fallback (layers in separate buffers) with scattered ids.

Caveats: everything is hot in cache after the first run. On a machine whose
cores are busy, torch's threaded `copy_` stalls for milliseconds at its
OpenMP barrier (`--threads 1` avoids it); the numpy row does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch

from kvmesh.bench.report import Table
from kvmesh.kernels.layouts import get_layout
from kvmesh.kernels.paged import PagedKV
from kvmesh.models.shapes import SHAPES, get_shape


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_shape(args.shape)
    dtype = getattr(torch, args.dtype or spec.dtype)
    rows = []
    for chunk_tokens in args.chunk_tokens:
        if chunk_tokens % args.block_size:
            raise SystemExit(f"--chunk-tokens {chunk_tokens} is not a multiple of "
                             f"--block-size {args.block_size}")
        rows += bench_chunk(spec, dtype, args.layout, args.block_size,
                            chunk_tokens // args.block_size, args.reps)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _table(rows, args, spec, dtype).emit()
    return 0


def bench_chunk(spec, dtype: torch.dtype, layout: str, block_size: int,
                blocks_per_chunk: int, reps: int) -> list[dict]:
    """Rows of timings for one chunk size; the two memcpy baselines come first
    and `vs_memcpy` is relative to the faster of them."""
    num_blocks = max(64, 8 * blocks_per_chunk)
    shape = get_layout(layout).layer_shape(num_blocks, block_size, spec.num_kv_heads,
                                           spec.head_dim)
    buffer = torch.randn((spec.num_layers, *shape)).to(dtype)
    fast = PagedKV(list(buffer.unbind(0)), layout)
    loop = PagedKV([t.clone() for t in buffer.unbind(0)], layout)
    gen = torch.Generator().manual_seed(0)
    scattered = torch.randperm(num_blocks, generator=gen)[:blocks_per_chunk].tolist()
    consecutive = list(range(blocks_per_chunk, 2 * blocks_per_chunk))
    nbytes = fast.chunk_bytes(blocks_per_chunk)
    slab, src = torch.empty(nbytes, dtype=torch.uint8), torch.randint(
        0, 255, (nbytes,), dtype=torch.uint8)

    slab_np, src_np = slab.numpy(), src.numpy()
    cases: list[tuple[str, str, str, Callable[[], None]]] = [
        ("memcpy", "-", "torch copy_", lambda: slab.copy_(src)),
        ("memcpy", "-", "numpy", lambda: np.copyto(slab_np, src_np))]
    for path, kv, ids_name, ids in [("one view", fast, "consecutive", consecutive),
                                    ("one view", fast, "scattered", scattered),
                                    ("per layer", loop, "scattered", scattered)]:
        cases.append(("gather", ids_name, path, lambda kv=kv, ids=ids: kv.gather(ids, slab)))
        cases.append(("scatter", ids_name, path, lambda kv=kv, ids=ids: kv.scatter(slab, ids)))
    medians = _interleaved_medians([fn for *_, fn in cases], reps)
    rows = []
    for (op, ids_name, path, _), seconds in zip(cases, medians):
        rows.append(dict(op=op, ids=ids_name, path=path, chunk_mib=nbytes / 2**20,
                         median_us=seconds * 1e6, gb_s=nbytes / seconds / 1e9))
    base = max(rows[0]["gb_s"], rows[1]["gb_s"])
    for row in rows:
        row["vs_memcpy"] = row["gb_s"] / base
    return rows


def _interleaved_medians(fns: list[Callable[[], None]], reps: int) -> list[float]:
    """Median seconds of each fn; reps run round-robin so that load from other
    processes hits every case alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def _table(rows: list[dict], args, spec, dtype: torch.dtype) -> Table:
    """The rows as a saved table; `vs memcpy` is against the faster memcpy of the same bytes."""
    table = Table("kernels", ["op", "ids", "path", "chunk MiB", "median us", "GB/s", "vs memcpy"])
    for r in rows:
        op = f"baseline: {r['op']}" if r["op"] == "memcpy" else r["op"]
        table.add(op, r["ids"], r["path"], r["chunk_mib"], r["median_us"], r["gb_s"], r["vs_memcpy"])
    table.note(f"shape={spec.name} layers={spec.num_layers} kv_heads={spec.num_kv_heads} "
               f"head_dim={spec.head_dim} dtype={str(dtype).removeprefix('torch.')} "
               f"layout={args.layout} block={args.block_size} threads={torch.get_num_threads()}; "
               f"median of {args.reps}, cases interleaved")
    return table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="demo", choices=sorted(SHAPES))
    p.add_argument("--layout", default="vllm-cpu", choices=["vllm-cpu", "flash", "flashinfer"])
    p.add_argument("--dtype", default=None, help="KV dtype (default: the shape's)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--chunk-tokens", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: keep)")
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
