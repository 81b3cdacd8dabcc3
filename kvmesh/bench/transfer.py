"""`kvmesh bench transfer`: pull throughput between two peer processes.

For each transport, one peer stores `--mib` MiB in chunks of `--chunk-mib`
and another pulls all of it; printed beside memcpy of the same bytes and a
raw asyncio socket stream between two processes, both measured in this run.
Bytes are not verified here (the tests do that); the time covers lookup,
pull, landing in store slots and the checksum check of every chunk.
"""

from __future__ import annotations

import argparse
import statistics

from kvmesh.bench.baselines import memcpy_gbps, raw_socket_gbps
from kvmesh.bench.procs import start_peers
from kvmesh.bench.report import Table
from kvmesh.transfer import ucx


def measure(transport: str, total: int, chunk: int, reps: int) -> float:
    chunks = total // chunk
    env = {"KVMESH_TRANSPORT": transport, "KVMESH_CHUNK_TOKENS": "16",
           "KVMESH_CPU_BYTES": str(total + 4 * chunk), "KVMESH_TIMEOUT_S": "10"}
    holder, puller = start_peers(2, env, chunk)
    try:
        holder.send("fill", seed=1, chunks=chunks)
        rates = []
        for _ in range(reps):
            puller.send("clear")
            got = puller.send("load", seed=1, chunks=chunks, verify=False, timeout=120)
            if got["ok"] != chunks:
                raise RuntimeError(f"{transport}: only {got['ok']} of {chunks} chunks arrived")
            rates.append(total / got["seconds"] / 1e9)
        return statistics.median(rates)
    finally:
        holder.stop()
        puller.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench transfer", description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--transports", default="shm,tcp" + (",ucx" if ucx.available() else ""))
    args = parser.parse_args(argv)
    total, chunk = args.mib << 20, int(args.chunk_mib * (1 << 20))
    table = Table("transfer", ["path", "GB/s", "vs memcpy", "vs raw socket"])
    memcpy = memcpy_gbps(total)
    raw = raw_socket_gbps(total)
    table.add("memcpy (np.copyto), same process", memcpy, 1.0, memcpy / raw)
    table.add("raw asyncio TCP stream, two processes", raw, raw / memcpy, 1.0)
    for transport in args.transports.split(","):
        rate = measure(transport, total, chunk, args.reps)
        table.add(f"kvmesh pull over {transport}, two processes", rate, rate / memcpy, rate / raw)
    table.note(f"{args.mib} MiB in {chunk >> 10} KiB chunks, median of {args.reps} pulls")
    table.emit()
    return 0
