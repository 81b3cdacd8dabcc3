"""`kvmesh bench lookup`: latency of a mesh-wide prefix lookup.

Eight peer processes on loopback; one stores a 32-chunk prefix, another
(holding none of it) looks it up repeatedly: each lookup is one batched
LOOKUP per ring owner, in parallel. Baseline from the same run: a PING round
trip on one kvmesh connection (the floor for any remote question).
"""

from __future__ import annotations

import argparse

from kvmesh.bench.procs import start_peers
from kvmesh.bench.report import Table


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench lookup", description=__doc__)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args(argv)
    peers = start_peers(args.peers, {"KVMESH_CHUNK_TOKENS": "16", "KVMESH_CPU_BYTES": "16MiB"},
                        64 << 10)
    try:
        peers[0].send("fill", seed=1, chunks=args.chunks)
        peers[-1].send("lookup", seed=1, chunks=args.chunks)  # warm connections
        lat = peers[-1].send("lookup_latency", seed=1, chunks=args.chunks, repeat=args.repeat)["us"]
        ping = peers[-1].send("ping_latency", peer=peers[0].peer_id, repeat=args.repeat)["us"]
    finally:
        for peer in peers:
            peer.stop()
    table = Table("lookup", ["what", "p50 us", "p99 us"])
    table.add(f"lookup {args.chunks}-chunk prefix, {args.peers}-peer mesh",
              percentile(lat, 0.5), percentile(lat, 0.99))
    table.add("baseline: one PING round trip", percentile(ping, 0.5), percentile(ping, 0.99))
    table.note(f"{args.repeat} lookups from an engine thread through the sync facade")
    table.emit()
    return 0
