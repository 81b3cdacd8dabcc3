"""`kvmesh bench store`: the chunk store's own costs, copies excluded.

Bookkeeping: per chunk, prepare_store + commit_store (checksum passed in, as
a pulled chunk commits) and prepare_load + complete_load, on keys made
beforehand; no byte is copied or hashed. Same run, side by side: LMCache's
LocalCPUBackend doing the same steps (allocate + submit_put_task, then
contains + get_blocking, reference counts dropped; its own venv), and a
Python dict set + get per key (the floor of any index kept in Python).

Memory: a fresh process opens a store of `--cap-mib` and stores 10x that
many bytes through it (LRU evicting), writing every slot in full; its RSS
growth over the cap, and the per-chunk metadata (measured with
sys.getsizeof, StoreStats.metadata_bytes_per_chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from kvmesh.bench import lmcache_run
from kvmesh.bench.report import Table
from kvmesh.config import StoreConfig
from kvmesh.store.chunk_store import ChunkStore


def bookkeeping_us(chunks: int, slot_bytes: int, reps: int) -> dict[str, float]:
    store = ChunkStore(StoreConfig(cpu_bytes=chunks * slot_bytes), slot_bytes, shared=True)
    keys = [os.urandom(16) for _ in range(chunks)]
    puts, gets, floor = [], [], []
    try:
        for _ in range(reps):
            start = time.perf_counter()
            for key in keys:
                store.commit_store(store.prepare_store(key), True, slot_bytes, 0x5EED)
            puts.append((time.perf_counter() - start) / chunks)
            start = time.perf_counter()
            for key in keys:
                store.complete_load(store.prepare_load(key))
            gets.append((time.perf_counter() - start) / chunks)
            store.clear()
            index: dict[bytes, int] = {}
            start = time.perf_counter()
            for i, key in enumerate(keys):
                index[key] = i
            for key in keys:
                index.get(key)
            floor.append((time.perf_counter() - start) / chunks)
        stats = store.stats()
    finally:
        store.close()
    return {"put": statistics.median(puts) * 1e6, "get": statistics.median(gets) * 1e6,
            "dict": statistics.median(floor) * 1e6, "meta": stats.metadata_bytes_per_chunk}


def rss_bytes() -> int:
    """Resident set of this process, shared-memory pages it touched included."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_child(cap: int, slot_bytes: int, factor: int) -> dict:
    """Runs in a fresh process: RSS growth while storing factor x cap bytes."""
    store = ChunkStore(StoreConfig(cpu_bytes=cap), slot_bytes, shared=True)
    pattern = np.random.default_rng(0).integers(0, 256, slot_bytes, dtype=np.uint8)
    before = rss_bytes()
    chunks = factor * cap // slot_bytes
    for i in range(chunks):
        ticket = store.prepare_store(i.to_bytes(16, "little"))
        np.copyto(np.frombuffer(ticket.view, dtype=np.uint8), pattern)
        store.commit_store(ticket, True, slot_bytes, 1)
        if i % 64 == 0:
            store.take_events()  # as a peer's event pump drains them
    stats = store.stats()
    grown = rss_bytes() - before
    store.close()
    return {"grown": grown, "cap": stats.cpu_bytes_cap, "held": stats.chunks_cpu,
            "per_chunk": (grown - stats.cpu_bytes_cap) / max(1, stats.chunks_cpu),
            "stored": chunks, "evictions": stats.evictions, "meta": stats.metadata_bytes_per_chunk}


def measure_rss(cap: int, slot_bytes: int, factor: int) -> dict:
    code = ("import json,sys; from kvmesh.bench.store import rss_child; "
            f"print(json.dumps(rss_child({cap}, {slot_bytes}, {factor})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench store", description=__doc__)
    parser.add_argument("--chunks", type=int, default=4096)
    parser.add_argument("--chunk-tokens", type=int, default=256, help="LMCache's chunk size")
    parser.add_argument("--slot-kib", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cap-mib", type=int, default=256)
    parser.add_argument("--rss-slot-kib", type=int, nargs="+", default=[2048, 64])
    parser.add_argument("--lmcache-python", type=Path, default=lmcache_run.DEFAULT_PYTHON)
    args = parser.parse_args(argv)

    ours = bookkeeping_us(args.chunks, args.slot_kib << 10, args.reps)
    lmc = lmcache_run.run("store", args.lmcache_python, chunks=args.chunks,
                          chunk_tokens=args.chunk_tokens, reps=args.reps)
    table = Table("store", ["what", "us per chunk", "vs LMCache", "vs dict floor"])
    total = ours["put"] + ours["get"]
    lmc_total = lmc["put_us"] + lmc["get_us"] if lmc else None
    for what, us, theirs in (("put (prepare_store + commit_store)", ours["put"], lmc and lmc["put_us"]),
                             ("get (prepare_load + complete_load)", ours["get"], lmc and lmc["get_us"]),
                             ("put + get", total, lmc_total)):
        table.add(f"kvmesh {what}", us, us / theirs if theirs else "-", us / ours["dict"])
    if lmc:
        table.add("baseline: LMCache LocalCPUBackend put", lmc["put_us"], 1.0, lmc["put_us"] / ours["dict"])
        table.add("baseline: LMCache LocalCPUBackend get", lmc["get_us"], 1.0, lmc["get_us"] / ours["dict"])
    else:
        table.note(lmcache_run.skipped_note(args.lmcache_python))
    table.add("baseline: Python dict set + get per key", ours["dict"], "-", 1.0)
    table.note(f"{args.chunks} chunks of {args.slot_kib} KiB, no bytes copied or hashed; "
               f"median of {args.reps}")
    table.emit()

    memory = Table("store_memory", ["slot KiB", "cap MiB", "stored MiB", "RSS growth MiB",
                                    "growth / cap", "RSS over cap per chunk held",
                                    "metadata bytes per chunk (getsizeof)"])
    cap = args.cap_mib << 20
    for kib in args.rss_slot_kib:
        r = measure_rss(cap, kib << 10, 10)
        memory.add(kib, r["cap"] / 2**20, r["stored"] * (kib << 10) / 2**20, r["grown"] / 2**20,
                   r["grown"] / r["cap"], r["per_chunk"], r["meta"])
    memory.note("a fresh process stores 10x its CPU cap through the store (LRU eviction), "
                "writing every slot; RSS (VmRSS, shared pool pages included) after minus before")
    memory.emit()
    return 0
