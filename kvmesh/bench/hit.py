"""`kvmesh bench hit`: the time kvmesh adds on a remote hit.

Two peer processes; one holds a prompt's KV (`--chunks` chunks of the model
shape's size), the other serves an "engine" that hashes the prompt, looks it
up, pulls every chunk and scatters each into its paged KV cache as it lands
(`kvmesh peer` op "hit"). That whole time is set against what moving the
bytes must cost on the same transport, measured in the same run: bytes /
memcpy bandwidth for the shared-memory path (np.copyto, one call), bytes /
raw TCP stream bandwidth for the socket paths. Budget per the target:
1.3 x that + 2 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kvmesh.bench.baselines import raw_socket_gbps
from kvmesh.bench.procs import start_peers
from kvmesh.bench.report import Table
from kvmesh.peers.standalone import paged_kv


def memcpy_seconds(nbytes: int, reps: int = 5) -> float:
    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(transport: str, args, slot_bytes: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds per hit, per lookup inside it, and memcpy seconds sampled between hits."""
    env = {"KVMESH_TRANSPORT": transport, "KVMESH_CHUNK_TOKENS": str(args.chunk_tokens),
           "KVMESH_CPU_BYTES": str((args.chunks + 4) * slot_bytes), "KVMESH_TIMEOUT_S": "10"}
    holder, engine = start_peers(2, env, slot_bytes)
    op = dict(shape=args.shape, block=args.block, seed=7, chunks=args.chunks)
    hits, lookups, copies = [], [], []
    try:
        holder.send("fill", seed=7, chunks=args.chunks)
        time.sleep(0.3)  # advertisements reach the owners
        engine.send("hit", **op)  # warm: connections, the KV cache's pages
        for _ in range(args.reps):
            engine.send("clear")
            copies.append(memcpy_seconds(args.chunks * slot_bytes, reps=1))
            got = engine.send("hit", timeout=120, **op)
            if got["ok"] != args.chunks:
                raise RuntimeError(f"{transport}: {got['ok']} of {args.chunks} chunks landed")
            hits.append(got["seconds"])
            lookups.append(got["lookup_seconds"])
    finally:
        holder.stop()
        engine.stop()
    return hits, lookups, copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench hit", description=__doc__)
    parser.add_argument("--shape", default="demo")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--transports", default="shm,tcp")
    args = parser.parse_args(argv)
    per_chunk = args.chunk_tokens // args.block
    slot_bytes = paged_kv(args.shape, args.block, per_chunk).chunk_bytes(per_chunk)
    nbytes = args.chunks * slot_bytes
    table = Table("hit", ["transport", "MiB", "hit ms (p50)", "lookup ms", "raw transfer ms",
                          "budget ms (1.3 x raw + 2)", "hit / budget", "hit / raw"])
    raw_tcp = None
    for transport in args.transports.split(","):
        hits, lookups, copies = measure(transport, args, slot_bytes)
        if transport == "shm":
            raw_s = statistics.median(copies)
        else:
            raw_tcp = raw_tcp or raw_socket_gbps(nbytes)
            raw_s = nbytes / (raw_tcp * 1e9)
        hit_s, budget = statistics.median(hits), 1.3 * raw_s + 0.002
        table.add(transport, nbytes / 2**20, hit_s * 1e3, statistics.median(lookups) * 1e3,
                  raw_s * 1e3, budget * 1e3, hit_s / budget, hit_s / raw_s)
    table.note(f"model '{args.shape}', {args.chunks} chunks of {args.chunk_tokens} tokens "
               f"({slot_bytes / 2**20:.2f} MiB each), block {args.block}; median of {args.reps}; "
               "raw transfer = bytes / memcpy (shm) or raw TCP stream (tcp) GB/s, same run; "
               "hit = hash + lookup + pull + scatter into paged KV")
    table.emit()
    return 0
