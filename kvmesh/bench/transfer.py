"""`kvmesh bench transfer`: pull throughput between two peer processes.

For each transport and chunk size, one peer stores `--mib` MiB in chunks and
another pulls all of it (`--reps` times). Baselines measured in the same run,
interleaved with the pulls so that load from other processes hits them alike:

- memcpy: np.copyto of the same number of bytes, one call, same process;
- memcpy on COPY_THREADS threads: the same bytes in as many parts, one
  np.copyto per thread (the shared-memory pull copies on that many threads);
- memcpy in chunks: the same, one np.copyto per chunk (glibc streams past
  the cache only in far larger calls; the shared-memory pull copies each
  chunk with streaming stores of its own, `kvmesh.native.copy_stream`);
- verified copy: `kvmesh.native.copy_checksum` over the same bytes in
  chunk-sized pieces, same process -- one pass that copies and computes the
  xxh3_64 every pulled chunk is checked against: the floor of a pull that
  verifies what it lands (the shared-memory path's work, minus the mesh);
- a raw asyncio TCP stream between two processes (for the socket paths).

Beside them, what mutual TLS costs the stream under a TCP pull: the same
frames through TcpStream and TlsStream between two processes, no peer
(tls_stream.py), in interleaved rounds; `--no-tls` skips the two rows.

The time covers lookup, pull, landing in store slots, the check of every
chunk (its checksum over a stream, the holder's pin lease over shared memory)
and its hand-over to the engine thread; bytes are not compared
here (the tests do that). Writes transfer.{json,md} and transfer.png
(GB/s against chunk size).

Beside the kvmesh rows: LMCache moving the same bytes between two processes through its
`lmcache server` and shared memory (lmcache_transfer.py), where
`.venv-lmcache` exists (`make lmcache-setup`); otherwise the row is skipped
with the reason printed and noted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kvmesh import native
from kvmesh.bench import lmcache_transfer, plots, tls_stream
from kvmesh.bench.baselines import raw_socket_gbps
from kvmesh.bench.procs import start_peers
from kvmesh.bench.report import Table
from kvmesh.transfer import ucx
from kvmesh.transfer.shm import COPY_THREADS


class CopyBaselines:
    """memcpy and verified-copy timings over `total` bytes, sampled on demand."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._src = np.random.default_rng(0).integers(0, 256, total, dtype=np.uint8)
        self._dst = np.empty_like(self._src)
        np.copyto(self._dst, self._src)  # fault the pages in
        self.memcpy_s: list[float] = []
        self.threads_s: list[float] = []
        self._threads = ThreadPoolExecutor(COPY_THREADS)
        self.chunked_s: dict[int, list[float]] = {}
        self.verified_s: dict[int, list[float]] = {}

    def sample(self, chunk: int) -> None:
        start = time.perf_counter()
        np.copyto(self._dst, self._src)
        self.memcpy_s.append(time.perf_counter() - start)
        part = -(-self.total // COPY_THREADS)
        start = time.perf_counter()
        list(self._threads.map(lambda off: np.copyto(self._dst[off:off + part],
                                                     self._src[off:off + part]),
                               range(0, self.total, part)))
        self.threads_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for off in range(0, self.total, chunk):
            np.copyto(self._dst[off:off + chunk], self._src[off:off + chunk])
        self.chunked_s.setdefault(chunk, []).append(time.perf_counter() - start)
        start = time.perf_counter()
        for off in range(0, self.total, chunk):
            native.copy_checksum(self._dst[off:off + chunk], self._src[off:off + chunk])
        self.verified_s.setdefault(chunk, []).append(time.perf_counter() - start)

    def memcpy_gbps(self) -> float:
        return self.total / statistics.median(self.memcpy_s) / 1e9

    def threads_gbps(self) -> float:
        return self.total / statistics.median(self.threads_s) / 1e9

    def chunked_gbps(self, chunk: int) -> float:
        return self.total / statistics.median(self.chunked_s[chunk]) / 1e9

    def verified_gbps(self, chunk: int) -> float:
        return self.total / statistics.median(self.verified_s[chunk]) / 1e9


# A holder's pool holds many requests' KV; one pull takes a quarter of it here.
# A pull larger than half the holder's pool goes in rounds: one peer may pin at
# most half of a holder's slots at once (kvmesh.transfer.pin_budget, SECURITY.md).
# `--holder-pool-x 1` measures that case.
HOLDER_POOL_X = 4.0


def measure(transport: str, total: int, chunk: int, reps: int, base: CopyBaselines,
            holder_pool_x: float = HOLDER_POOL_X) -> float:
    """Median GB/s of `reps` pulls; samples the copy baselines between them.
    The holder's CPU pool is `holder_pool_x` times the pull (see HOLDER_POOL_X)."""
    chunks = total // chunk
    env = {"KVMESH_TRANSPORT": transport, "KVMESH_CHUNK_TOKENS": "16",
           "KVMESH_CPU_BYTES": str(total + 4 * chunk), "KVMESH_TIMEOUT_S": "10"}
    holder_pool = {"KVMESH_CPU_BYTES": str(int(holder_pool_x * total) + 4 * chunk)}
    holder, puller = start_peers(2, env, chunk, per_peer_env={0: holder_pool})
    try:
        holder.send("fill", seed=1, chunks=chunks)
        puller.send("load", seed=1, chunks=chunks, verify=False, timeout=120)  # warm
        rates = []
        for _ in range(reps):
            base.sample(chunk)
            puller.send("clear")
            got = puller.send("load", seed=1, chunks=chunks, verify=False, timeout=120)
            if got["ok"] != chunks:
                raise RuntimeError(f"{transport}: only {got['ok']} of {chunks} chunks arrived")
            rates.append(total / got["seconds"] / 1e9)
        base.sample(chunk)
        return statistics.median(rates)
    finally:
        holder.stop()
        puller.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench transfer", description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0],
                        help="chunk sizes for the shared-memory path")
    parser.add_argument("--socket-chunk-mib", type=float, default=2.0,
                        help="chunk size for the tcp/ucx paths")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--holder-pool-x", type=float, default=HOLDER_POOL_X,
                        help="the holder's CPU pool as a multiple of the pull (1: the pull fills "
                             "it, and goes in rounds under the per-peer pin share)")
    parser.add_argument("--transports", default="shm,tcp" + (",ucx" if ucx.available() else ""))
    parser.add_argument("--no-tls", action="store_true",
                        help="skip the TcpStream/TlsStream rows")
    lmcache_transfer.add_args(parser)
    args = parser.parse_args(argv)
    total = args.mib << 20
    base = CopyBaselines(total)
    raw = raw_socket_gbps(total)
    runs: list[tuple[str, int, float]] = []
    for transport in args.transports.split(","):
        sizes = args.chunk_mib if transport == "shm" else [args.socket_chunk_mib]
        for mib in sizes:
            chunk = int(mib * (1 << 20))
            runs.append((transport, chunk, measure(transport, total, chunk, args.reps, base,
                                                       args.holder_pool_x)))
    lmcache, lmcache_note = _lmcache(args, total, base)
    streams, tls_note = _tls_rounds(args, total, base)
    memcpy = base.memcpy_gbps()
    table = Table("transfer", ["path", "chunk MiB", "GB/s", "vs memcpy", "vs memcpy in chunks",
                               "vs verified copy", "vs raw socket"])
    table.add("baseline: memcpy (np.copyto, one call), same process", "-", memcpy, 1.0, "-", "-",
              memcpy / raw)
    threads = base.threads_gbps()
    table.add(f"baseline: memcpy on {COPY_THREADS} threads (np.copyto of a part each), same process",
              "-", threads, threads / memcpy, "-", "-", threads / raw)
    chunks = sorted({c for _, c, _ in runs} | ({lmcache.chunk} if lmcache else set())
                    | ({_socket_chunk(args)} if streams else set()))
    for chunk in chunks:
        m = base.chunked_gbps(chunk)
        table.add("baseline: memcpy in chunk-sized calls, same process", chunk / 2**20, m,
                  m / memcpy, 1.0, "-", m / raw)
    for chunk in chunks:
        v = base.verified_gbps(chunk)
        table.add("baseline: copy + xxh3_64 in one pass (native), same process", chunk / 2**20, v,
                  v / memcpy, v / base.chunked_gbps(chunk), 1.0, v / raw)
    table.add("baseline: raw asyncio TCP stream, two processes", "-", raw, raw / memcpy, "-", "-",
              1.0)
    rows = [(f"kvmesh pull over {t}, two processes", c, r) for t, c, r in runs]
    for kind, name in (("tcp", "TcpStream"), ("tls", "TlsStream (mutual TLS 1.3)")) if streams else ():
        rows.append((f"frames over {name}, two processes, no peer", _socket_chunk(args),
                     statistics.median(r[kind] for r in streams)))
    if lmcache:  # beside kvmesh's shm pull of the same chunk size
        at = next((i + 1 for i, (t, c, _) in enumerate(runs) if (t, c) == ("shm", lmcache.chunk)),
                  len(rows))
        rows.insert(at, (lmcache_transfer.ROW, lmcache.chunk, lmcache.pull_gbps))
    for name, chunk, rate in rows:
        table.add(name, chunk / 2**20, rate, rate / memcpy, rate / base.chunked_gbps(chunk),
                  rate / base.verified_gbps(chunk), rate / raw)
    table.note(lmcache_note)
    table.note(tls_note)
    table.note(f"the holder's CPU pool is {args.holder_pool_x:g}x the pull; a pull over half "
               "of it goes in rounds (the per-peer pin share)")
    table.note(f"{args.mib} MiB per pull, median of {args.reps} pulls; baselines median of "
               f"{len(base.memcpy_s)} samples taken between the pulls; kvmesh.native: {native.ISA}")
    table.note("memcpy in one call of the whole size streams past the cache (glibc switches to "
               "non-temporal stores above a fraction of the L3 size), np.copyto of a chunk does "
               "not; the shared-memory pull copies each chunk with streaming stores of its own, "
               f"on {COPY_THREADS} threads")
    table.emit()
    shm = [(c / 2**20, r) for t, c, r in runs if t == "shm"]
    if len(shm) > 1:
        sizes = [s for s, _ in shm]
        plots.throughput_vs_size("transfer", sizes, {
            "kvmesh pull over shm (2 processes)": [r for _, r in shm],
            "baseline: memcpy (1 call)": [memcpy] * len(sizes),
            "baseline: memcpy in chunk-sized calls": [base.chunked_gbps(int(s * 2**20))
                                                      for s in sizes],
            "baseline: copy + xxh3 (1 pass)": [base.verified_gbps(int(s * 2**20)) for s in sizes],
        }, f"Pulling {args.mib} MiB between two peer processes")
    return 0


def _lmcache(args, total: int,
             base: CopyBaselines) -> tuple[lmcache_transfer.LMCacheTransfer | None, str]:
    """LMCache's pull of the same bytes, or None; and the note that says which."""
    if args.no_lmcache:
        return None, "LMCache row skipped: --no-lmcache"
    try:
        got = lmcache_transfer.measure(args.lmcache_python, total,
                                       int(args.lmcache_chunk_mib * 2**20), args.reps, base)
    except lmcache_transfer.LMCacheSkipped as exc:
        print(f"  LMCache row skipped: {exc}")
        return None, f"LMCache row skipped: {exc}"
    return got, got.note()


def _socket_chunk(args) -> int:
    return int(args.socket_chunk_mib * (1 << 20))


def _tls_rounds(args, total: int, base: CopyBaselines) -> tuple[list[dict[str, float]], str]:
    """TcpStream and TlsStream rounds ([] when skipped), and the note that says
    what TLS cost: the median of each round's own TLS/TCP ratio."""
    why = "--no-tls" if args.no_tls else tls_stream.unavailable()
    if why:
        print(f"  TLS rows skipped: {why}")
        return [], f"TLS rows skipped: {why}"
    chunk = _socket_chunk(args)
    streams, suite = [], ""
    for _ in range(args.reps):
        got, suite = tls_stream.rounds(total, chunk, 1)
        streams += got
        base.sample(chunk)
    ratio = statistics.median(r["tls"] / r["tcp"] for r in streams)
    return streams, (f"TlsStream / TcpStream: {ratio:.2f} (median of {len(streams)} interleaved "
                     "rounds' own ratios; frames as a TCP pull sends them, each payload hashed "
                     f"as it lands; TLS 1.3, {suite}, certificates from a throwaway CA)")
