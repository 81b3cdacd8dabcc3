"""What `kvmesh demo` prints: the table of rows (see `reuse_rows`), totals and checks.

Each run's results are lists of {"output", "ttft", "served"}, one per request
in the workload's order: kvmesh's run, and the two baselines (kvmesh on with
nothing to reuse; vLLM alone), None when skipped. The demo fails (returns
False) when any output differs from vLLM alone's, or when the
nothing-to-reuse run reused anything: then it was no baseline.
"""

from __future__ import annotations

from kvmesh.demo import reuse_rows

LEGEND = [
    "(vLLM's prefix cache is on everywhere. vLLM alone: as many engines, no connector,",
    " the same routing and prefix-cache resets, so it reuses what vLLM's own cache",
    " holds and recomputes the rest. kvmesh on, nothing reused: the same kvmesh",
    " engines, each request under a cache salt of its own. The x columns are that",
    " baseline's TTFT over kvmesh's; on the vLLM row the reuse is vLLM's own, not",
    " kvmesh's. Every engine served a throwaway prompt first, so no row carries warm-up.)"]


def report(labels: list[str], results: list[dict], counters: dict[str, int],
           nothing: list[dict] | None, alone: list[dict] | None) -> tuple[str, bool]:
    """(the text, whether every check passed). `labels` name the requests;
    `counters`: the kvmesh peers' counters summed over the engines, over
    kvmesh's run only."""
    baselines = nothing is not None and alone is not None
    measured = [reuse_rows.Measured(r["served"], r["ttft"],
                                    alone[i]["ttft"] if baselines else None,
                                    nothing[i]["ttft"] if baselines else None)
                for i, r in enumerate(results)]
    lines = ["", "kvmesh demo: time to first token, by whose reuse served the prompt", ""]
    lines += reuse_rows.table(measured) + [""] + totals(counters)
    if not baselines:
        return "\n".join(lines), True
    checks, ok = check(labels, results, nothing, alone)
    return "\n".join(lines + checks + LEGEND), ok


def totals(counters: dict[str, int]) -> list[str]:
    lookups, hits = counters["lookup_chunks"], counters["lookup_hit_chunks"]
    return [f"kvmesh chunk hit rate at lookup: {hits}/{lookups} "
            f"({100 * hits / max(1, lookups):.0f}%); kvmesh is asked only for what vLLM's "
            f"own cache lacks",
            f"bytes pulled between engines: {counters['bytes_pulled'] / 2**20:.1f} MiB; "
            f"chunks saved: {counters['chunks_saved']}; "
            f"failed loads (recomputed): {counters['load_failures']}"]


def check(labels: list[str], results: list[dict], nothing: list[dict],
          alone: list[dict]) -> tuple[list[str], bool]:
    """Outputs against vLLM alone's, and what each baseline reused."""
    n = len(results)
    differ = [label for label, r, a in zip(labels, results, alone) if r["output"] != a["output"]]
    salted = sum(r["output"] == a["output"] for r, a in zip(nothing, alone))
    reused = sum(r["served"].vllm_tokens + r["served"].kvmesh_tokens for r in nothing)
    same = not differ and salted == n
    return [
        f"outputs identical to vLLM alone: {n - len(differ)}/{n} with kvmesh, {salted}/{n} "
        f"with kvmesh and nothing to reuse"
        + ("" if same else f"  <-- MISMATCH (with kvmesh: {', '.join(differ) or 'none'})"),
        f"tokens reused: {sum(r['served'].vllm_tokens for r in results)} from vLLM's own cache "
        f"with kvmesh, {sum(r['served'].vllm_tokens for r in alone)} by vLLM alone; "
        f"{reused} with nothing to reuse" + ("  <-- NOT A BASELINE" if reused else ""),
    ], same and not reused


def per_request(labels: list[str], results: list[dict], nothing: list[dict] | None,
                alone: list[dict] | None) -> str:
    """One line per request: its row, cached tokens (vLLM's + kvmesh's of the
    prompt's), TTFT in each run, and whether its output matched vLLM alone's."""
    lines = ["", f"{'request':<10}{'whose reuse':<44}{'vLLM+kvmesh/prompt':>20}{'kvmesh on':>11}"
             + (f"{'alone':>9}{'nothing':>9}  same" if alone and nothing else "")]
    for i, (label, r) in enumerate(zip(labels, results)):
        s = r["served"]
        line = (f"{label:<10}{reuse_rows.row_of(s).split(': ')[-1]:<44}"
                f"{f'{s.vllm_tokens}+{s.kvmesh_tokens}/{s.prompt_tokens}':>20}"
                f"{r['ttft'] * 1000:>9,.0f}ms")
        if alone and nothing:
            line += (f"{alone[i]['ttft'] * 1000:>7,.0f}ms{nothing[i]['ttft'] * 1000:>7,.0f}ms  "
                     + ("yes" if r["output"] == alone[i]["output"] else "NO"))
        lines.append(line)
    return "\n".join(lines)
