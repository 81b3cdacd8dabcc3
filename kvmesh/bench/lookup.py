"""`kvmesh bench lookup`: prefix lookups, held locally and across a mesh.

Local: a 32k-token prompt whose chunks are all in this peer's store; one
lookup = token ids (a Python list, as engines pass them) -> chunk keys ->
matched prefix, through the sync facade. Side by side in the same run:
LMCache's `LMCacheEngine.lookup` of the same ids, stored in its
LocalCPUBackend (own venv; mock GPU connector, so nothing but bookkeeping).

Mesh: eight peer processes on loopback; one stores a 32-chunk prefix, another
(holding none of it) looks it up repeatedly. Twice: as configured by default
(a mesh this small keeps the whole directory on every peer, so the lookup is
answered in the looker's process), and as a DHT with 2 owners per key
(KVMESH_FULL_DIRECTORY_UPTO=0, what larger meshes do): one batched LOOKUP per
directory owner asked, in parallel. Baselines from the same run: one PING
round trip (the floor for any remote question), and PINGs sent in parallel to
exactly the owners the DHT lookup asks (the floor for a lookup that asks them).

Writes lookup.{json,md} and lookup.png (latency percentiles).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from kvmesh.bench import lmcache_run, plots
from kvmesh.bench.procs import start_peers
from kvmesh.bench.report import Table
from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.hashring.ring import HashRing
from kvmesh.directory.lookup_plan import plan_queries
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import prompt_tokens, standalone_hasher

MESH_CHUNK_TOKENS = 16
MESH_SLOT_BYTES = 64 << 10


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def local_lookup_us(tokens: int, chunk_tokens: int, repeat: int) -> list[float]:
    """kvmesh: ids -> keys -> lookup_prefix, all chunks held by this peer."""
    config = KvmeshConfig(chunk_tokens=chunk_tokens, store=StoreConfig(cpu_bytes=64 << 20),
                          control=ControlConfig(enabled=False))
    hasher = ChunkHasher(KeyNamespace("bench", "bf16", 2, 1, 8, chunk_tokens, "opaque"))
    slot = 16 << 10
    handle = PeerHandle.start(config, hasher, slot)
    try:
        ids = np.random.default_rng(0).integers(0, 128_000, tokens, dtype=np.int32).tolist()
        for key in hasher.keys(ids):
            handle.commit_save(handle.prepare_save(key))
        want = tokens // chunk_tokens
        out = []
        for _ in range(repeat + 1):
            start = time.perf_counter()
            matched = handle.lookup_prefix(hasher.keys(ids))
            out.append((time.perf_counter() - start) * 1e6)
            if matched != want:
                raise RuntimeError(f"local lookup matched {matched} of {want} chunks")
        return sorted(out[1:])
    finally:
        handle.close()


def planned_owners(peer_ids: list[str], looker: str, chunks: int) -> list[str]:
    """The remote owners the looker's DHT lookup asks (same ring and plan as the peers)."""
    config = KvmeshConfig(chunk_tokens=MESH_CHUNK_TOKENS)
    keys = standalone_hasher(config, MESH_SLOT_BYTES).keys(
        prompt_tokens(1, chunks, MESH_CHUNK_TOKENS))
    ring, r = HashRing(peer_ids, vnodes=MeshConfig().vnodes), MeshConfig().replication
    plan = plan_queries([ring.owners(k, r) for k in keys], looker)
    return [owner for owner in plan if owner != looker]


def mesh_lookup_us(peers_n: int, chunks: int, repeat: int,
                   whole_directory: bool) -> dict[str, list[float] | int]:
    """Lookup latencies from the last peer; with the DHT, the PING baselines too."""
    env = {"KVMESH_CHUNK_TOKENS": str(MESH_CHUNK_TOKENS), "KVMESH_CPU_BYTES": "16MiB",
           "KVMESH_FULL_DIRECTORY_UPTO": str(peers_n if whole_directory else 0)}
    peers = start_peers(peers_n, env, MESH_SLOT_BYTES)
    try:
        looker = peers[-1]
        peers[0].send("fill", seed=1, chunks=chunks)
        time.sleep(0.3)  # advertisements reach the owners
        looker.send("lookup", seed=1, chunks=chunks)  # warm connections
        out = {"lookup": looker.send("lookup_latency", seed=1, chunks=chunks, repeat=repeat)["us"]}
        if not whole_directory:
            owners = planned_owners([p.peer_id for p in peers], looker.peer_id, chunks)
            looker.send("ping_latency", peers=owners, repeat=20)  # warm those connections too
            out.update(ping=looker.send("ping_latency", peer=peers[0].peer_id, repeat=repeat)["us"],
                       fanout=looker.send("ping_latency", peers=owners, repeat=repeat)["us"],
                       owners=len(owners))
        return out
    finally:
        for peer in peers:
            peer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench lookup", description=__doc__)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=500)
    parser.add_argument("--local-tokens", type=int, default=32768)
    parser.add_argument("--chunk-tokens", type=int, default=256, help="for the local lookup")
    parser.add_argument("--lmcache-python", type=Path, default=lmcache_run.DEFAULT_PYTHON)
    args = parser.parse_args(argv)

    local = local_lookup_us(args.local_tokens, args.chunk_tokens, args.repeat)
    lmc = lmcache_run.run("lookup", args.lmcache_python, tokens=args.local_tokens,
                          chunk_tokens=args.chunk_tokens, reps=min(args.repeat, 200))
    whole = mesh_lookup_us(args.peers, args.chunks, args.repeat, whole_directory=True)
    mesh = mesh_lookup_us(args.peers, args.chunks, args.repeat, whole_directory=False)

    table = Table("lookup", ["what", "p50 us", "p99 us", "p50 vs baseline"])
    lmc_p50 = percentile(lmc["us"], 0.5) if lmc else None
    table.add(f"kvmesh local lookup, {args.local_tokens}-token prompt (ids -> keys -> prefix)",
              percentile(local, 0.5), percentile(local, 0.99),
              f"{percentile(local, 0.5) / lmc_p50:.3g} x LMCache" if lmc else "-")
    if lmc:
        table.add("baseline: LMCache LMCacheEngine.lookup, same ids (LocalCPUBackend)",
                  lmc_p50, percentile(lmc["us"], 0.99), 1.0)
    else:
        table.note(lmcache_run.skipped_note(args.lmcache_python))
    ping50, fan50 = percentile(mesh["ping"], 0.5), percentile(mesh["fanout"], 0.5)
    table.add(f"kvmesh lookup of a {args.chunks}-chunk prefix, {args.peers}-peer mesh "
              "(default: whole directory on every peer)",
              percentile(whole["lookup"], 0.5), percentile(whole["lookup"], 0.99),
              f"{percentile(whole['lookup'], 0.5) / ping50:.3g} x PING")
    table.add(f"kvmesh lookup of a {args.chunks}-chunk prefix, {args.peers}-peer mesh "
              "as a DHT (2 owners per key)",
              percentile(mesh["lookup"], 0.5), percentile(mesh["lookup"], 0.99),
              f"{percentile(mesh['lookup'], 0.5) / fan50:.3g} x fan-out PING")
    table.add("baseline: one PING round trip", ping50, percentile(mesh["ping"], 0.99), 1.0)
    table.add(f"baseline: PING to the {mesh['owners']} owners the lookup asks, in parallel",
              fan50, percentile(mesh["fanout"], 0.99), f"{fan50 / ping50:.3g} x PING")
    table.note(f"{args.repeat} lookups from an engine thread through the sync facade; "
               "the DHT lookup asks as few directory owners as possible (lookup_plan); "
               "meshes of up to KVMESH_FULL_DIRECTORY_UPTO (16) peers keep the whole directory")
    table.emit()
    series = {"kvmesh local lookup": local, "kvmesh mesh lookup": whole["lookup"],
              "kvmesh mesh lookup, DHT": mesh["lookup"],
              "baseline: PING": mesh["ping"], f"baseline: PING x{mesh['owners']} in parallel":
              mesh["fanout"]}
    if lmc:
        series["baseline: LMCache local lookup"] = lmc["us"]
    plots.latency_percentiles("lookup", series, "Prefix lookup latency")
    return 0
