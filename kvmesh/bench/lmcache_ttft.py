"""LMCache's rows of `kvmesh bench ttft`: the same 8k-token hit through LMCache.

Two vLLM engines with LMCache's multi-process connector (`LMCacheMPConnector`)
on one fresh `lmcache server` (shared-memory pool): A' computes the prompt (a
miss, since the server is empty) and stores its KV; B', another process, then
gets the hit, `--lmcache-hits` times (vLLM's prefix cache is on, as in the
kvmesh engines, and B''s is reset before each hit, so each loads from
LMCache). Same model, prompt, block size and KV cache size as the kvmesh
engines; it runs after they stop, in the same run, and is compared with
their recompute (engine C, no connector) and remote hit.

B' must produce A''s greedy tokens (A' computed the whole prompt): a hit that
changes the output is reported as such and never counted as a speedup.

Needs `.venv-lmcache` (the server; `make lmcache-setup`) and `.lmcache-vllm`
(LMCache for the engines; `make lmcache-vllm-setup`); without either, or when
LMCache fails, the table says the rows were skipped and why.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from kvmesh.bench import lmcache_run
from kvmesh.bench.lmcache_run import LMCACHE_ENV
from kvmesh.bench.lmcache_server import CHUNK_TOKENS, LMCacheServer
from kvmesh.bench.lmcache_vllm import DEFAULT_SITE, connector_setup
from kvmesh.bench.report import Table
from kvmesh.demo.engines import Engine, engine_env, run_dir

CHECK_TOKENS = 8  # greedy tokens compared between the hit and the recompute
WARM_TOKENS = 512  # a first store and hit, so neither engine is measured cold


@dataclass(frozen=True, slots=True)
class LMCacheTTFT:
    miss_s: float            # A': recompute + store
    hit_s: list[float]       # B': each hit
    same_output: bool        # B''s greedy tokens == A''s, on every hit
    stored_chunks: int       # chunks A' left in the server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-lmcache", action="store_true", help="skip the LMCache rows")
    parser.add_argument("--lmcache-python", type=Path, default=lmcache_run.DEFAULT_PYTHON,
                        help="LMCache's venv python, for `lmcache server`")
    parser.add_argument("--lmcache-vllm-site", type=Path, default=Path(DEFAULT_SITE),
                        help="LMCache unpacked for the main venv's vLLM")
    parser.add_argument("--lmcache-hits", type=int, default=3, help="hits measured on B'")


def skip_reason(args) -> str | None:
    """Why the LMCache rows cannot run, or None."""
    if args.no_lmcache:
        return "--no-lmcache"
    if not lmcache_run.available(args.lmcache_python):
        return lmcache_run.missing_note(args.lmcache_python)
    if not (args.lmcache_vllm_site / "lmcache").is_dir():
        return (f"no {args.lmcache_vllm_site}/lmcache (run `make lmcache-vllm-setup`, "
                f"or pass --lmcache-vllm-site)")
    return None


def compare(args, model_dir: str, tokens: list[int], kvmesh_row: list, *,
            kv_cache_bytes: int, block_size: int, vocab: int) -> Table:
    """The LMCache table beside kvmesh's row for the same prompt
    ([length, recompute, local hit, remote hit, kvmesh off, ...]). Blocks for
    about a minute and a half (two engine starts, one 8k prefill)."""
    reason = skip_reason(args)
    got = None
    if reason is None:
        start = time.monotonic()
        try:
            got = measure(args, model_dir, tokens, kv_cache_bytes, block_size, vocab)
        except (RuntimeError, TimeoutError, OSError, EOFError) as exc:
            reason = f"LMCache failed: {exc!r}"
        print(f"  LMCache rows: {time.monotonic() - start:.0f} s")
    if reason is not None:
        print(f"  LMCache rows skipped: {reason}")
    return table(kvmesh_row, got, reason, args.lmcache_hits, block_size)


def measure(args, model_dir: str, tokens: list[int], kv_cache_bytes: int, block_size: int,
            vocab: int) -> LMCacheTTFT:
    log_dir = run_dir()
    with LMCacheServer(args.lmcache_python, log_dir) as server:
        setup = functools.partial(connector_setup, str(args.lmcache_vllm_site.resolve()),
                                  server.rpc_url)
        engines = [Engine(name, model_dir, {**engine_env(3 + i, 0, log_dir, False), **LMCACHE_ENV},
                          False, kv_cache_bytes, block_size, log_dir, connector=setup)
                   for i, name in enumerate(("lmcache-A", "lmcache-B"))]
        try:
            for engine in engines:
                engine.wait_ready()
            a, b = engines
            warm = random.Random(7).choices(range(3, vocab), k=WARM_TOKENS)
            a.call("generate", warm, 1)
            b.call("generate", warm, 1)
            before = server.stored_chunks()
            expected, miss_s = a.call("generate", tokens, CHECK_TOKENS)
            stored = _wait_for_chunks(server, before + len(tokens) // CHUNK_TOKENS) - before
            hits = []
            for _ in range(args.lmcache_hits):
                b.call("reset_prefix_cache")  # the hit must come from LMCache, not vLLM's cache
                hits.append(b.call("generate", tokens, CHECK_TOKENS))
        finally:
            for engine in engines:
                engine.stop()
    return LMCacheTTFT(miss_s=miss_s, hit_s=[s for _, s in hits], stored_chunks=stored,
                       same_output=all(out == expected for out, _ in hits))


def _wait_for_chunks(server: LMCacheServer, wanted: int, timeout_s: float = 60) -> int:
    """Stores may land after the first token; wait for them before measuring hits,
    or a 'hit' would really be a partial recompute. Returns the count reached."""
    deadline = time.monotonic() + timeout_s
    while (held := server.stored_chunks()) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def table(kvmesh_row: list, got: LMCacheTTFT | None, reason: str | None, hits: int,
          block_size: int) -> Table:
    length, kv_miss, _, kv_remote, off = kvmesh_row[:5]
    out = Table("ttft_lmcache", ["path", "TTFT s", "speedup vs recompute",
                                 "vs kvmesh remote hit", "greedy output = recompute"])
    out.add("baseline: recompute, vLLM without a connector (C)", off, 1.0, off / kv_remote, "-")
    out.add("kvmesh: recompute + store (A, miss)", kv_miss, off / kv_miss, kv_miss / kv_remote, "-")
    out.add("kvmesh: remote hit, pulled from A's peer (B)", kv_remote, off / kv_remote, 1.0, "-")
    if got is not None:
        hit = statistics.median(got.hit_s)
        out.add("LMCache: recompute + store (A', miss)", got.miss_s, off / got.miss_s,
                got.miss_s / kv_remote, "reference")
        out.add(f"LMCache: hit in another engine via `lmcache server` (B', median of {hits})", hit,
                off / hit if got.same_output else "- (output differs)", hit / kv_remote,
                "yes" if got.same_output else "NO")
        out.note(f"LMCache hits on B': {', '.join(f'{s:.3g}' for s in got.hit_s)} s; A' stored "
                 f"{got.stored_chunks} chunks of {CHUNK_TOKENS} tokens; greedy output compared "
                 f"over {CHECK_TOKENS} tokens")
    else:
        out.note(f"LMCache rows skipped: {reason}")
    out.note(f"{length}-token prompt, the longest of the ttft table, same model and prompt; "
             f"block size {block_size}, vLLM's prefix cache on (reset on B' before each "
             f"hit); kvmesh rows from that table "
             f"(one request each); "
             f"LMCache's engines ran after the kvmesh engines stopped, in the same run; "
             f"one engine busy at a time")
    return out
