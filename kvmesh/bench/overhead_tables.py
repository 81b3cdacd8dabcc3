"""The tables of the no-reuse run (see `overhead`): figures beside their baselines.

`ttft_no_reuse` puts the paired A/B (kvmesh off as the baseline) first, with
the same pairing between two processes of one configuration (A/B and C/D) as
the floor below which the A/B cannot see; then what kvmesh itself did on the
kvmesh engines, measured in place:
- hooks: wall time inside the connector's hooks, which the step waits for;
- kvmesh threads on a CPU: on 2 cores, CPU the forward pass did not get
  (counted in full, though some of it falls between requests);
- kvmesh threads queued (runnable without a CPU): mostly time they waited
  behind the engine's threads, but a thread queued while holding the GIL
  stalls the engine's Python, and schedstat cannot tell the two apart; so
  this only widens the estimate into a loose bound.
Hooks plus thread CPU is the estimate of kvmesh's cost. Neither covers the
few calls vLLM itself makes around any connector (binding its metadata each
step), which only the A/B sees.
`ttft_no_reuse_hooks` breaks the hook time down per hook.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from kvmesh.bench import abstats
from kvmesh.bench.report import Table
from kvmesh.connectors.vllm.hook_times import SCHEDULER_HOOKS, merge
from kvmesh.demo.engine_profile import KVMESH_ROLES

if TYPE_CHECKING:
    from kvmesh.bench.overhead import Arm, Burst, Run

TARGET = 0.02  # the project's goal: within 2% of kvmesh off


def summary_table(run: "Run", idle: dict, args) -> Table:
    on = run.arm(run.on)
    table = Table("ttft_no_reuse", ["measure", "kvmesh off (baseline)", "kvmesh on", "on / off",
                                    "spread over rounds"])
    ttft = _ab_rows(table, run, args.no_reuse_tokens)
    floors = _floor_rows(table, run)
    estimate, bound = _kvmesh_rows(table, on)
    _idle_row(table, idle, run)
    table.note(f"{args.no_reuse_rounds} rounds; in each, every engine ({', '.join(run.on)}: "
               f"kvmesh on; {', '.join(run.off)}: off) runs {args.no_reuse_burst} back-to-back "
               f"unique {args.no_reuse_tokens}-token prompts, 1 output token, in a balanced "
               f"order; {on.requests} requests per arm. 'on / off' is the median of per-round "
               f"ratios; the spread is their interquartile range and a bootstrap 95% interval "
               f"of that median.")
    table.note(_verdict(ttft, floors, estimate, bound))
    return table


def hooks_table(on: "Arm") -> Table:
    ttft_ns = sum(on.ttfts) * 1e9
    hooks = merge(*(b.hooks for b in on.bursts))
    table = Table("ttft_no_reuse_hooks", ["hook", "side", "calls per request", "us per call",
                                          "us per request", "share of TTFT"])
    for hook, h in sorted(hooks.items(), key=lambda kv: -kv[1]["ns"]):
        side = "scheduler" if hook in SCHEDULER_HOOKS else "worker"
        table.add(hook, side, h["calls"] / on.requests, h["ns"] / 1e3 / h["calls"],
                  h["ns"] / 1e3 / on.requests, f"{h['ns'] / ttft_ns:.4%}")
    table.note(f"kvmesh connector hooks on the kvmesh engines' step path over {on.requests} "
               f"no-reuse requests: wall time inside each hook, the timer's own ~0.5 us per "
               f"call included")
    return table


def round_ratios(run: "Run", top: list[str], bottom: list[str], metric) -> abstats.RatioSummary:
    """Per round, `metric` over the bursts of engines `top` / over those of `bottom`."""
    def value(bursts: dict, names: list[str]) -> float:
        return metric([bursts[n] for n in names])

    return abstats.summarize(abstats.pair_ratios([value(r, top) for r in run.rounds],
                                                 [value(r, bottom) for r in run.rounds]))


def mean_ttft(bursts: list["Burst"]) -> float:
    return statistics.mean(t for b in bursts for t in b.ttfts)


def _rate(bursts: list["Burst"]) -> float:
    return sum(len(b.ttfts) for b in bursts) / sum(b.wall_s for b in bursts)


def _cpu(bursts: list["Burst"]) -> float:
    return sum(b.threads["process"] for b in bursts) / sum(len(b.ttfts) for b in bursts)


def _ab_rows(table: Table, run: "Run", tokens: int) -> abstats.RatioSummary:
    """TTFT, throughput, CPU and contention rows; returns the TTFT ratio summary."""
    on, off = run.arm(run.on), run.arm(run.off)
    ttft = round_ratios(run, run.on, run.off, mean_ttft)
    table.add("mean TTFT s", statistics.mean(off.ttfts), statistics.mean(on.ttfts), ttft.median,
              ttft.spread())
    table.add("median TTFT s", statistics.median(off.ttfts), statistics.median(on.ttfts),
              statistics.median(on.ttfts) / statistics.median(off.ttfts), "(whole run)")
    rate = round_ratios(run, run.on, run.off, _rate)
    table.add("prefill tokens/s (whole run)", tokens * _rate(off.bursts),
              tokens * _rate(on.bursts), rate.median, rate.spread())
    cpu = round_ratios(run, run.on, run.off, _cpu)
    table.add("engine process CPU s per request", _cpu(off.bursts) / 1e9, _cpu(on.bursts) / 1e9,
              cpu.median, cpu.spread())
    table.add("engine main thread: times put on a CPU per request",
              off.per_request("main.slices"), on.per_request("main.slices"),
              on.per_request("main.slices") / off.per_request("main.slices"), "(whole run)")
    table.add("other load: engine threads runnable without a CPU, s per request",
              off.waiting() / 1e9 / off.requests, on.waiting() / 1e9 / on.requests, "-",
              "time other jobs held the cores")
    return ttft


def _floor_rows(table: Table, run: "Run") -> list[abstats.RatioSummary]:
    """Mean TTFT ratios between two processes of one arm: what the A/B cannot see below."""
    floors = []
    for label, names in (("kvmesh off", run.off), ("kvmesh on", run.on)):
        if len(names) < 2:
            continue
        floor = round_ratios(run, names[:1], names[1:2], mean_ttft)
        floors.append(floor)
        table.add(f"floor, {label}: {names[0]} / {names[1]} mean TTFT (same config)", "-", "-",
                  floor.median, floor.spread())
    return floors


def _kvmesh_rows(table: Table, on: "Arm") -> tuple[float, float]:
    """What kvmesh did on engine A; returns (estimate, loose bound) as shares of TTFT."""
    per_request_ms = 1e6 * on.requests
    ttft_ns = sum(on.ttfts) * 1e9
    hook_ns = sum(h["ns"] for b in on.bursts for h in b.hooks.values())
    table.add("kvmesh hooks on the step path, ms per request", "-", hook_ns / per_request_ms,
              f"{hook_ns / ttft_ns:.3%} of TTFT", "per hook: ttft_no_reuse_hooks")
    run, wait = on.kvmesh("run"), on.kvmesh("wait")
    table.add("kvmesh threads on a CPU, ms per request", "-", run / per_request_ms,
              f"{run / on.total('process'):.3%} of process CPU", _by_role(on, "run", per_request_ms))
    estimate = (hook_ns + run) / ttft_ns
    table.add("kvmesh's cost: hooks + kvmesh threads on a CPU, ms per request", "-",
              (hook_ns + run) / per_request_ms, f"{estimate:.2%} of TTFT",
              "all thread CPU counted as if taken from the forward pass")
    bound = (hook_ns + run + wait) / ttft_ns
    table.add("kvmesh threads queued for a CPU, ms per request", "-", wait / per_request_ms,
              f"{on.kvmesh('slices') / on.requests:.0f} wake-ups per request",
              f"{_by_role(on, 'wait', per_request_ms)}; with it, a loose bound: {bound:.2%} of TTFT")
    drains = [b.drain_s for b in on.bursts if b.pending]
    table.add("saves uncommitted at the burst's last reply", "-",
              f"{sum(b.pending for b in on.bursts)} chunks in {len(drains)}/{len(on.bursts)} bursts",
              f"drain {statistics.mean(drains) * 1e3:.1f} ms" if drains else "no drain",
              "the drain is outside wall time, inside CPU time")
    return estimate, bound


def _by_role(on: "Arm", counter: str, per_request_ms: float) -> str:
    parts = [(r.removeprefix("kvmesh-"), on.total(f"{r}.{counter}")) for r in KVMESH_ROLES]
    return ", ".join(f"{name} {ns / per_request_ms:.2f}" for name, ns in parts if ns)


def _idle_row(table: Table, idle: dict, run: "Run") -> None:
    def share(name: str) -> str:
        rates = idle[name]
        run_ns = sum(rates.get(f"{r}.run", 0.0) for r in KVMESH_ROLES)
        wakeups = sum(rates.get(f"{r}.slices", 0.0) for r in KVMESH_ROLES)
        mesh = f" (kvmesh threads {run_ns / 1e9:.2%}, {wakeups:.0f} wake-ups/s)" if run_ns else ""
        return f"{name} {rates['process'] / 1e9:.2%}{mesh}"

    table.add("idle CPU, share of one core", "; ".join(share(n) for n in run.off),
              "; ".join(share(n) for n in run.on), "-", "all engines idle at once")


def _verdict(ttft: abstats.RatioSummary, floors: list[abstats.RatioSummary],
             estimate: float, bound: float) -> str:
    width = (ttft.ci_hi - ttft.ci_lo) / 2
    if 1 - TARGET <= ttft.ci_lo and ttft.ci_hi <= 1 + TARGET:
        ab = f"The A/B's 95% interval lies inside 1 +/- {TARGET:.0%} (half-width {width:.1%})."
    else:
        ab = (f"The A/B's 95% interval (half-width {width:.1%}) is not inside 1 +/- {TARGET:.0%}: "
              f"on this machine, at this load, wall-clock rounds cannot confirm the target.")
    if floors:
        worst = max(abs(f.median - 1) for f in floors)
        ab += (f" Two processes of one configuration differed by up to {worst:.1%} "
               f"(the floor rows).")
    direct = (f"Measured in place, kvmesh's hooks and threads cost {estimate:.2%} of TTFT "
              f"({'within' if estimate <= TARGET else 'over'} the {TARGET:.0%} target); "
              f"{bound:.2%} if all the time its threads sat queued for a CPU (mostly behind the "
              f"engine's own threads) were time they held the GIL.")
    return f"{ab} {direct}"
