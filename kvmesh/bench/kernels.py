"""`kvmesh bench kernels`: chunk gather/scatter throughput next to memcpy.

For each chunk size, times (median of `--reps` rounds after a warm-up; each
round runs every case once, in a random order) a gather and a scatter of one
chunk of the chosen model shape's paged KV with each CPU copy kernel
(`--kernels`: the C one, "native", and the numpy fallback), and in the same
run a plain memcpy of the same number of bytes, with torch `copy_` (OpenMP
threads) and with numpy `copyto` (the calling thread, as the CPU kernels
copy). Rows cover the one-view fast path (all layers in one buffer, as vLLM
allocates them) with consecutive and with scattered block ids, and the
per-layer fallback (layers in separate buffers) with scattered ids.

The baselines copy between buffers of the sizes the kernels use: a
chunk-sized region in the middle of a buffer as large as the KV, and the
slab. Gathers are compared with the copy into the slab, scatters with the
copy out of it: `vs memcpy` against the faster of torch's and numpy's (how
close the kernels come to the memory system), `vs 1-thread` against numpy's
alone, on the one core the kernels use (torch's copy uses every core when
none is busy and stalls when one is, so which one is faster flips between
runs). Every case has its own bytes besides the slab: each gather its own
KV, read and never written; each scatter its own KV, written and never read;
each baseline direction its own buffer, used the same way. So every case
starts from the same cache state: nothing is flushed between runs, and the
rest of a round (many chunks' worth of reads and writes) has pushed a case's
bytes out of the core's L2. (Sharing one KV between a gather and a scatter,
as this benchmark once did, made the gather read lines the scatter's
streaming stores had just sent to DRAM, while the memcpy it was compared
with read lines still in cache: 0.68 against 0.88 with its own KV, at
1.5 MiB.) The kernel timings include the Python-side checks of each call,
which cost more than in a warm loop because each copy has just flushed the
core's caches.

On a machine whose cores are busy, torch's threaded `copy_` stalls for
milliseconds at its OpenMP barrier (`--threads 1` avoids it); the numpy row
does not.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import numpy as np
import torch

from kvmesh import native
from kvmesh.bench.report import Table
from kvmesh.bench.rounds import interleaved_medians
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
                            chunk_tokens // args.block_size, args.reps, args.kernels)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _table(rows, args, spec, dtype).emit()
    return 0


def bench_chunk(spec, dtype: torch.dtype, layout: str, block_size: int,
                blocks_per_chunk: int, reps: int, kernels: list[str]) -> list[dict]:
    """Rows of timings for one chunk size: the memcpy baselines, then each
    kernel's gathers and scatters (see `_add_ratios` for what they are compared with)."""
    num_blocks = max(64, 8 * blocks_per_chunk)
    shape = get_layout(layout).layer_shape(num_blocks, block_size, spec.num_kv_heads,
                                           spec.head_dim)
    buffer = torch.randn((spec.num_layers, *shape)).to(dtype)
    consecutive = list(range(blocks_per_chunk, 2 * blocks_per_chunk))
    gen = torch.Generator().manual_seed(0)
    scattered = [b for b in torch.randperm(num_blocks, generator=gen).tolist()
                 if b not in consecutive][:blocks_per_chunk]  # disjoint: each read once a round
    nbytes = PagedKV(list(buffer.unbind(0)), layout).chunk_bytes(blocks_per_chunk)
    slab = torch.empty(nbytes, dtype=torch.uint8)
    cases = _memcpy_cases(slab, buffer.numel() * buffer.element_size())
    for kernel in kernels:
        cases += _kernel_cases(kernel, buffer, layout, slab, consecutive, scattered)
    medians = interleaved_medians([fn for *_, fn in cases], reps)
    rows = [dict(op=op, ids=ids_name, path=path, kernel=kernel, chunk_mib=nbytes / 2**20,
                 median_us=seconds * 1e6, gb_s=nbytes / seconds / 1e9)
            for (op, ids_name, path, kernel, _), seconds in zip(cases, medians)]
    _add_ratios(rows)
    return rows


def _memcpy_cases(slab: torch.Tensor, kv_bytes: int) -> list[tuple]:
    """memcpy of the slab's bytes into it and out of it, from and to a chunk
    in the middle of a buffer as large as the KV: with torch (every core) and
    numpy (the calling thread), each direction on its own buffer, so that its
    bytes are only read (into the slab) or only written (out of it) once a
    round, as a gather's and a scatter's KV blocks are."""
    def region() -> torch.Tensor:  # a chunk in the middle of its own KV-sized buffer
        return torch.randint(0, 255, (kv_bytes,), dtype=torch.uint8)[kv_bytes // 2:][:slab.numel()]

    cases = []
    for name in ("torch copy_", "numpy"):
        source, dest = region(), region()  # read only; written only
        if name == "numpy":
            to_slab = partial(np.copyto, slab.numpy(), source.numpy())
            from_slab = partial(np.copyto, dest.numpy(), slab.numpy())
        else:
            to_slab, from_slab = partial(slab.copy_, source), partial(dest.copy_, slab)
        cases += [("memcpy", "-", "to slab", name, to_slab),
                  ("memcpy", "-", "from slab", name, from_slab)]
    return cases


def _kernel_cases(kernel: str, buffer: torch.Tensor, layout: str, slab: torch.Tensor,
                  consecutive: list[int], scattered: list[int]) -> list[tuple]:
    """Gather and scatter with `kernel`, each on its own copy of the KV `buffer`
    (all layers in one view, and separate layers: the per-layer path)."""
    def one_view() -> PagedKV:
        return PagedKV(list(buffer.clone().unbind(0)), layout, kernel=kernel)

    def per_layer() -> PagedKV:
        return PagedKV([t.clone() for t in buffer.unbind(0)], layout, kernel=kernel)

    gather_fast, scatter_fast = one_view(), one_view()  # the id sets are disjoint
    cases = []
    for path, gather_kv, scatter_kv, ids_name, ids in [
            ("one view", gather_fast, scatter_fast, "consecutive", consecutive),
            ("one view", gather_fast, scatter_fast, "scattered", scattered),
            ("per layer", per_layer(), per_layer(), "scattered", scattered)]:
        cases += [("gather", ids_name, path, kernel, partial(gather_kv.gather, ids, slab)),
                  ("scatter", ids_name, path, kernel, partial(scatter_kv.scatter, slab, ids))]
    return cases


def _add_ratios(rows: list[dict]) -> None:
    """`vs_memcpy`: against the faster memcpy of the same direction (gathers
    against those into the slab, scatters against those out of it);
    `vs_one_thread`: against numpy's memcpy of that direction."""
    best: dict[str, float] = {}
    one_thread: dict[str, float] = {}
    for r in rows:
        if r["op"] == "memcpy":
            best[r["path"]] = max(best.get(r["path"], 0.0), r["gb_s"])
            if r["kernel"] == "numpy":
                one_thread[r["path"]] = r["gb_s"]
    for r in rows:
        direction = r["path"] if r["op"] == "memcpy" else (
            "to slab" if r["op"] == "gather" else "from slab")
        r["vs_memcpy"] = r["gb_s"] / best[direction]
        r["vs_one_thread"] = r["gb_s"] / one_thread[direction]


def _table(rows: list[dict], args, spec, dtype: torch.dtype) -> Table:
    """The rows as a saved table (ratios as in `_add_ratios`)."""
    table = Table("kernels", ["op", "ids", "path", "kernel", "chunk MiB", "median us", "GB/s",
                              "vs memcpy", "vs 1-thread"])
    for r in rows:
        op = f"baseline: {r['op']}" if r["op"] == "memcpy" else r["op"]
        table.add(op, r["ids"], r["path"], r["kernel"], r["chunk_mib"], r["median_us"],
                  r["gb_s"], r["vs_memcpy"], r["vs_one_thread"])
    table.note(f"shape={spec.name} layers={spec.num_layers} kv_heads={spec.num_kv_heads} "
               f"head_dim={spec.head_dim} dtype={str(dtype).removeprefix('torch.')} "
               f"layout={args.layout} block={args.block_size} threads={torch.get_num_threads()}; "
               f"median of {args.reps}, cases interleaved in random order")
    return table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="demo", choices=sorted(SHAPES))
    p.add_argument("--layout", default="vllm-cpu", choices=["vllm-cpu", "flash", "flashinfer"])
    p.add_argument("--dtype", default=None, help="KV dtype (default: the shape's)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--chunk-tokens", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--kernels", nargs="+", choices=["native", "numpy"],
                   default=["native", "numpy"] if native.NATIVE else ["numpy"],
                   help="CPU copy kernels to time (default: the C one, if built, and numpy)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: keep)")
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
