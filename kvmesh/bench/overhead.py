"""The no-reuse part of `kvmesh bench ttft`: what kvmesh costs vLLM when it cannot help.

Engines with kvmesh on (A, B: one mesh) and off (C, D) get unique prompts, so
kvmesh can only cost. Two engine processes per arm, because on these machines
two processes of one configuration can differ by 10-15% in speed for their
whole lifetime (cause not found; no transparent huge pages are in use): with
one process per arm, that difference is the result. Three measurements, from
most to least exposed to noise:

1. A paired A/B in rounds: each round every engine runs a burst of
   `--no-reuse-burst` requests, in a balanced order (ABBA generalized, see
   `abstats`). Within an on-engine's burst each request's saves run while the
   next request computes, as they would under load; after the burst the
   bench waits for its saves to land (outside the timed wall time, inside
   the CPU time) so none of its work spills into the next engine's burst. Per
   round: on/off ratios of mean TTFT, throughput and CPU per request, and the
   same-arm ratios A/B and C/D, which measure the process-to-process floor.
2. What kvmesh does on the step path: the connector's hook times
   (`connectors.vllm.hook_times`) per request and as a share of TTFT. These
   are kvmesh's own calls timed in place: load from other jobs stretches
   them and the TTFT alike, so their share holds where the A/B cannot.
3. What kvmesh's own threads (gathering chunks into slabs, commit, advertise,
   gossip) cost: their time on a CPU, which on 2 cores the forward pass does
   not get, and their time queued for one (see `overhead_tables`). Also each
   engine's CPU while idle, since every engine stays alive throughout.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field

from kvmesh.bench import abstats
from kvmesh.bench.overhead_tables import hooks_table, summary_table
from kvmesh.bench.report import Table
from kvmesh.connectors.vllm.hook_times import diff
from kvmesh.demo.engine_profile import KVMESH_ROLES
from kvmesh.demo.engines import Engine

DRAIN_POLL_S = 0.005
DRAIN_TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("no reuse (kvmesh on vs off)")
    group.add_argument("--no-reuse-rounds", type=int, default=16,
                       help="rounds; in each, every engine runs one burst (balanced order)")
    group.add_argument("--no-reuse-burst", type=int, default=2,
                       help="back-to-back requests per engine per round")
    group.add_argument("--no-reuse-tokens", type=int, default=512, help="prompt length")
    group.add_argument("--no-reuse-idle-s", type=float, default=5.0,
                       help="how long to watch the engines' CPU while all are idle")


@dataclass
class Burst:
    """One engine's share of one round."""

    ttfts: list[float]
    wall_s: float  # request round trips, summed (the drain is not in it)
    threads: dict[str, int]  # `engine_profile.thread_times` over the burst and its drain
    hooks: dict[str, dict[str, int]]
    pending: int = 0  # chunks not yet committed when the last reply came back
    drain_s: float = 0.0


@dataclass
class Arm:
    """Bursts of one or more engines of the same configuration, pooled."""

    bursts: list[Burst] = field(default_factory=list)

    @property
    def ttfts(self) -> list[float]:
        return [t for b in self.bursts for t in b.ttfts]

    @property
    def requests(self) -> int:
        return sum(len(b.ttfts) for b in self.bursts)

    def total(self, key: str) -> int:
        """A `thread_times` counter summed over the bursts, e.g. "main.slices"."""
        return sum(b.threads.get(key, 0) for b in self.bursts)

    def per_request(self, key: str) -> float:
        return self.total(key) / self.requests

    def kvmesh(self, counter: str) -> int:
        """`counter` ("run", "wait" or "slices") summed over kvmesh's thread roles."""
        return sum(self.total(f"{role}.{counter}") for role in KVMESH_ROLES)

    def waiting(self) -> int:
        """Runnable-without-a-CPU ns of every thread of the engine."""
        keys = {k for b in self.bursts for k in b.threads if k.endswith(".wait")}
        return sum(self.total(k) for k in keys)


@dataclass
class Run:
    """Every burst of the no-reuse run: rounds[r][engine name]."""

    on: list[str]
    off: list[str]
    rounds: list[dict[str, Burst]] = field(default_factory=list)

    def arm(self, names: list[str]) -> Arm:
        return Arm([r[n] for r in self.rounds for n in names])


def no_reuse_tables(on: list[Engine], off: list[Engine], args, vocab: int,
                    chunk_tokens: int) -> list[Table]:
    """Run the whole no-reuse part; the summary table and the per-hook table."""
    engines = [*on, *off]
    run = Run([e.name for e in on], [e.name for e in off])
    prompts = _Prompts(args.no_reuse_tokens, vocab)
    burst = args.no_reuse_burst
    for engine in engines:  # warm-up, not counted
        run_burst(engine, prompts.take(engine.name, burst), engine in on, chunk_tokens)
    idle = measure_idle(engines, args.no_reuse_idle_s)
    for order in abstats.balanced_orders(len(engines), args.no_reuse_rounds):
        bursts = {}
        for engine in (engines[i] for i in order):
            bursts[engine.name] = run_burst(engine, prompts.take(engine.name, burst),
                                            engine in on, chunk_tokens)
        run.rounds.append(bursts)
    return [summary_table(run, idle, args), hooks_table(run.arm(run.on))]


def run_burst(engine: Engine, prompts: list[list[int]], kvmesh: bool, chunk_tokens: int) -> Burst:
    before = engine.call("profile")
    saved = engine.call("status").get("chunks_saved", 0) if kvmesh else 0
    ttfts, wall = [], 0.0
    for tokens in prompts:
        start = time.perf_counter()
        ttfts.append(engine.call("generate", tokens, 1)[1])
        wall += time.perf_counter() - start
    burst = Burst(ttfts, wall, {}, {})
    if kvmesh:
        expected = saved + sum(len(t) // chunk_tokens for t in prompts)
        burst.pending, burst.drain_s = drain_saves(engine, expected)
    after = engine.call("profile")
    burst.threads = {k: v - before["threads"].get(k, 0) for k, v in after["threads"].items()}
    burst.hooks = diff(after["hooks"], before["hooks"])
    return burst


def drain_saves(engine: Engine, expected: int) -> tuple[int, float]:
    """(chunks still uncommitted at the first look, seconds until all were committed)."""
    start = time.perf_counter()
    pending = expected - engine.call("status").get("chunks_saved", 0)
    left = pending
    while left > 0 and time.perf_counter() - start < DRAIN_TIMEOUT_S:
        time.sleep(DRAIN_POLL_S)
        left = expected - engine.call("status").get("chunks_saved", 0)
    if left > 0:
        raise TimeoutError(f"{engine.name}: {left} saves did not land in {DRAIN_TIMEOUT_S}s")
    return max(pending, 0), (time.perf_counter() - start if pending > 0 else 0.0)


def measure_idle(engines: list[Engine], seconds: float) -> dict[str, dict[str, float]]:
    """{engine: {counter: rate per second}} while every engine sits idle for `seconds`;
    a ns counter's rate / 1e9 is its share of one core."""
    before = {e.name: e.call("profile")["threads"] for e in engines}
    start = time.perf_counter()
    time.sleep(seconds)
    after = {e.name: e.call("profile")["threads"] for e in engines}
    span_s = time.perf_counter() - start
    return {name: {k: (v - before[name].get(k, 0)) / span_s for k, v in counters.items()}
            for name, counters in after.items()}


class _Prompts:
    """Unique random prompts, a separate stream per engine, so nothing can ever hit."""

    def __init__(self, length: int, vocab: int) -> None:
        self._length, self._vocab = length, vocab
        self._rng: dict[str, random.Random] = {}

    def take(self, engine: str, n: int) -> list[list[int]]:
        rng = self._rng.setdefault(engine, random.Random(f"no-reuse-{engine}"))
        return [[rng.randrange(3, self._vocab) for _ in range(self._length)] for _ in range(n)]
