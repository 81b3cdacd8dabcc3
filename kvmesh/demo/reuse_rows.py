"""The demo's table: whose reuse served each request, and its TTFT beside two baselines.

vLLM's prefix cache is on in the demo, as users run it, so a prompt's cached
tokens can be vLLM's own (the engine computed that prefix itself and still
holds its blocks) or kvmesh's (loaded from this engine's kvmesh store, or
pulled from another engine's). vLLM itself says which tokens were which
(see `engine_cache`); kvmesh's chunk counters say whether its chunks came
from this engine's store or a peer's. Each request gets one row:

- nothing was reused: the recomputed row;
- only vLLM's own cache supplied tokens: the vLLM row;
- only kvmesh supplied tokens, all from this engine's store: the local-store
  row (only after vLLM's own cache lost the prefix: the demo resets it);
- only kvmesh supplied tokens, at least one chunk from a peer: the peer row;
- both did (vLLM's cache held the start of the prompt, as in a chat whose
  first round this engine computed, and kvmesh the rest): the mixed row.

Each row's TTFT stands beside the same requests on two baselines: vLLM alone
(the same engines, routing and resets, no connector) and kvmesh on with
nothing to reuse (the same engines as kvmesh's own figures, each request
under a cache salt of its own, which keys vLLM's cache and kvmesh's alike).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

RECOMPUTED = "recomputed: nothing to reuse"
VLLM_OWN = "same engine again: vLLM's own prefix cache"
KVMESH_LOCAL = "same engine, vLLM's cache reset: kvmesh's local store"
KVMESH_PEER = "another engine: pulled from a peer through kvmesh"
MIXED = "vLLM's own cache, then kvmesh for the rest"
ROWS = (RECOMPUTED, VLLM_OWN, KVMESH_LOCAL, KVMESH_PEER, MIXED)


@dataclass(frozen=True, slots=True)
class Served:
    """Where one request's prompt KV came from, on the kvmesh engines."""

    prompt_tokens: int
    vllm_tokens: int    # from vLLM's own prefix cache
    kvmesh_tokens: int  # supplied by the kvmesh connector
    local_chunks: int   # kvmesh chunks loaded from this engine's own store
    remote_chunks: int  # kvmesh chunks pulled from another engine

    @classmethod
    def of(cls, reuse: dict, before: dict, after: dict) -> "Served":
        """From the engine's "reuse" answer and its peer's counters around the request."""
        return cls(prompt_tokens=reuse.get("prompt_tokens", 0),
                   vllm_tokens=reuse.get("vllm_cached_tokens", 0),
                   kvmesh_tokens=reuse.get("connector_tokens", 0),
                   local_chunks=after.get("local_hits", 0) - before.get("local_hits", 0),
                   remote_chunks=after.get("remote_hits", 0) - before.get("remote_hits", 0))


def row_of(served: Served) -> str:
    if served.kvmesh_tokens <= 0:
        return VLLM_OWN if served.vllm_tokens > 0 else RECOMPUTED
    if served.vllm_tokens > 0:
        return MIXED
    return KVMESH_PEER if served.remote_chunks > 0 else KVMESH_LOCAL


@dataclass(frozen=True, slots=True)
class Measured:
    """One request: where its KV came from and its TTFT in each run (seconds)."""

    served: Served
    kvmesh_s: float
    alone_s: float | None = None    # vLLM alone, no connector
    nothing_s: float | None = None  # kvmesh on, nothing to reuse


# Header cells (three lines each) and widths of the table's columns.
_LEFT = (("", "", "whose reuse"), 54), (("", "", "reqs"), 5)
_TOKENS = (("tokens", "prompt", ""), 8), (("", "reused by", "vLLM"), 10), (("", "", "kvmesh"), 8)
_TTFT = (("TTFT", "kvmesh", "on"), 10),
_BASELINES = (("", "vLLM alone", "(no connector)"), 17), (("", "kvmesh on,", "nothing reused"), 17)


def table(measured: list[Measured]) -> list[str]:
    """The rows present, in ROWS order, as text lines: means per request."""
    baselines = all(m.alone_s is not None and m.nothing_s is not None for m in measured)
    columns = _LEFT + _TOKENS + _TTFT + (_BASELINES if baselines else ())
    lines = ["".join(f"{cell[line]:<{w}}" if i == 0 else f"{cell[line]:>{w}}"
                     for i, (cell, w) in enumerate(columns)).rstrip() for line in range(3)]
    for row in ROWS:
        group = [m for m in measured if row_of(m.served) == row]
        if not group:
            continue
        mean = lambda f: statistics.mean(f(m) for m in group)  # noqa: E731
        on = mean(lambda m: m.kvmesh_s)
        line = (f"{row:<54}{len(group):>5}{mean(lambda m: m.served.prompt_tokens):>8,.0f}"
                f"{mean(lambda m: m.served.vllm_tokens):>10,.0f}"
                f"{mean(lambda m: m.served.kvmesh_tokens):>8,.0f}{on * 1000:>8,.0f}ms")
        if baselines:
            alone, nothing = mean(lambda m: m.alone_s), mean(lambda m: m.nothing_s)
            line += (f"{alone * 1000:>9,.0f}ms{alone / on:>6.2f}x"
                     f"{nothing * 1000:>9,.0f}ms{nothing / on:>6.2f}x")
        lines.append(line)
    return lines
