"""LMCache's row of `kvmesh bench transfer`: the same bytes through `lmcache server`.

Two processes, both in LMCache's venv: its cache server (shared-memory pool)
and a client driving LMCache's own multi-process client API
(lmcache_side.py `transfer`): the client stores the KV once, then pulls it
back `reps` times (lookup + retrieve into other blocks of its paged KV). The
figure is the pull: bytes / (lookup + retrieve), as kvmesh's pull time covers
its lookup. Every retrieve is checked byte for byte; a pull that lands wrong
bytes or misses chunks does not count. The memcpy and verified-copy
baselines are sampled just before and just after, as for the kvmesh rows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmesh.bench import lmcache_run
from kvmesh.bench.lmcache_server import LMCacheServer, l1_gb_for


ROW = "LMCache 0.5.6 lookup + retrieve from `lmcache server` (shm), two processes"


class LMCacheSkipped(Exception):
    """The LMCache row cannot be measured; str(exc) says why."""


@dataclass(frozen=True, slots=True)
class LMCacheTransfer:
    chunk: int
    pull_gbps: float       # lookup + retrieve, median
    retrieve_gbps: float   # retrieve alone, median
    store_gbps: float      # the one store
    pulls: int
    memcpy_around: tuple[float, ...] = ()  # the memcpy baseline just before and after, GB/s

    def note(self) -> str:
        return (f"LMCache: median of {self.pulls} pulls, each a lookup + retrieve into zeroed "
                f"blocks of its client's paged KV, bytes checked after each; retrieve alone "
                f"{self.retrieve_gbps:.3g} GB/s, the one store {self.store_gbps:.3g} GB/s (its CPU "
                f"path: store gathers blocks into the server's shm pool, retrieve scatters them "
                f"back; no checksum); memcpy sampled just before and after it: "
                f"{', '.join(f'{g:.3g}' for g in self.memcpy_around)} GB/s")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-lmcache", action="store_true", help="skip the LMCache row")
    parser.add_argument("--lmcache-python", type=Path, default=lmcache_run.DEFAULT_PYTHON)
    parser.add_argument("--lmcache-chunk-mib", type=float, default=2.0,
                        help="bytes per LMCache chunk (256 tokens of KV)")


def measure(python: Path, total: int, chunk: int, reps: int, base) -> LMCacheTransfer:
    """Pull `total` bytes in `chunk`-byte chunks through a fresh `lmcache server`.

    Blocks for the whole run (~30 s for 256 MiB, mostly LMCache's imports);
    raises LMCacheSkipped when LMCache is missing or fails. `base` is the
    transfer bench's CopyBaselines.
    """
    if not lmcache_run.available(python):
        raise LMCacheSkipped(lmcache_run.missing_note(python))
    log_dir = tempfile.mkdtemp(prefix="kvmesh-bench-lmcache-")
    try:
        with LMCacheServer(python, log_dir, l1_gb=l1_gb_for(total)) as server:
            first = len(base.memcpy_s)
            base.sample(chunk)
            got = lmcache_run.run("transfer", python, rpc_url=server.rpc_url, total_bytes=total,
                                  chunk_bytes=chunk, reps=reps)
            base.sample(chunk)
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise LMCacheSkipped(f"lmcache server failed: {exc}") from None
    if got is None:
        raise LMCacheSkipped(f"LMCache's transfer client failed (server log: {log_dir})")
    around = tuple(total / s / 1e9 for s in base.memcpy_s[first:])
    return _checked(got, total, chunk, around)


def _checked(got: dict, total: int, chunk: int, memcpy_around: tuple = ()) -> LMCacheTransfer:
    if not got["stored"] or not got["intact"] or any(h != got["chunks"] for h in got["hit_chunks"]):
        raise LMCacheSkipped(f"LMCache returned wrong or partial KV (stored {got['stored']}, "
                             f"hits {got['hit_chunks']} of {got['chunks']}, "
                             f"intact {got['intact']})")
    if got["bytes"] != total:
        raise LMCacheSkipped(f"LMCache moved {got['bytes']} bytes, not {total}")
    return LMCacheTransfer(chunk=chunk, pull_gbps=total / statistics.median(got["pull_s"]) / 1e9,
                           retrieve_gbps=total / statistics.median(got["retrieve_s"]) / 1e9,
                           store_gbps=total / got["store_s"] / 1e9, pulls=len(got["pull_s"]),
                           memcpy_around=memcpy_around)
