"""The no-reuse tables: round ratios, the same-config floor, kvmesh's measured shares."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvmesh.bench import overhead_tables
from kvmesh.bench.overhead import Arm, Burst, Run

ARGS = SimpleNamespace(no_reuse_rounds=3, no_reuse_burst=2, no_reuse_tokens=512)


def burst(ttfts, cpu_s=2.0, wall=None, hook_ns=0, save_ns=0):
    """A burst; each request costs `cpu_s` of CPU, queues 0.1 s and is put on a CPU 100 times."""
    n = len(ttfts)
    threads = {"process": int(cpu_s * 1e9) * n + save_ns, "main.run": int(cpu_s * 1e9) * n,
               "main.wait": 10**8 * n, "main.slices": 100 * n}
    if save_ns:
        threads.update({"kvmesh-save.run": save_ns, "kvmesh-save.wait": save_ns // 2,
                        "kvmesh-save.slices": 3 * n})
    hooks = {"get_num_new_matched_tokens": {"calls": n, "ns": hook_ns}} if hook_ns else {}
    return Burst(list(ttfts), sum(ttfts) if wall is None else wall, threads, hooks,
                 pending=1, drain_s=0.01)


def run_of(rounds, on=("A", "B"), off=("C", "D")):
    return Run(list(on), list(off), [dict(r) for r in rounds])


def test_arm_sums_counters_per_request_and_over_kvmesh_roles():
    arm = Arm([burst((1.0, 1.0), save_ns=4_000_000), burst((1.0, 1.0), save_ns=4_000_000)])
    assert arm.requests == 4 and arm.per_request("main.slices") == 100
    assert arm.kvmesh("run") == 8_000_000 and arm.kvmesh("wait") == 4_000_000
    assert arm.waiting() == 4 * 10**8 + 4_000_000


def test_round_ratios_pool_the_engines_of_each_side_per_round():
    run = run_of([{"A": burst((1.0,)), "B": burst((3.0,)), "C": burst((1.0,)), "D": burst((1.0,))},
                  {"A": burst((2.0,)), "B": burst((2.0,)), "C": burst((2.0,)), "D": burst((2.0,))}])
    pooled = overhead_tables.round_ratios(run, run.on, run.off, overhead_tables.mean_ttft)
    assert (pooled.n, pooled.median) == (2, 1.5)  # rounds: (1 + 3) / 2 / 1 and 1
    floor = overhead_tables.round_ratios(run, ["A"], ["B"], overhead_tables.mean_ttft)
    assert floor.median == pytest.approx((1 / 3 + 1.0) / 2)


def kvmesh_run(factor=1.01):
    """Three rounds; kvmesh-on engines slower by `factor`, C and D alike."""
    rounds = []
    for base in (1.0, 2.0, 1.0):
        on = dict(cpu_s=2.0 * factor, hook_ns=2_000_000, save_ns=4_000_000)
        rounds.append({"A": burst((base * factor,) * 2, **on), "B": burst((base * factor,) * 2, **on),
                       "C": burst((base,) * 2), "D": burst((base,) * 2)})
    return run_of(rounds)


IDLE = {"A": {"process": 2e7, "kvmesh-peer.run": 6e6, "kvmesh-peer.slices": 25},
        "B": {"process": 2e7, "kvmesh-peer.run": 6e6, "kvmesh-peer.slices": 25},
        "C": {"process": 1e7}, "D": {"process": 1e7}}


def test_summary_rows_hold_round_ratios_floors_and_kvmesh_shares():
    run = kvmesh_run()
    table = overhead_tables.summary_table(run, IDLE, ARGS)
    rows = {row[0]: row for row in table.rows}
    assert rows["mean TTFT s"][3] == pytest.approx(1.01)
    assert rows["mean TTFT s"][4] == "IQR 1.010-1.010; 95% CI 1.010-1.010"
    assert rows["prefill tokens/s (whole run)"][3] == pytest.approx(1 / 1.01)
    assert rows["engine process CPU s per request"][3] == pytest.approx((4.04 + 0.004) / 4.0)
    assert rows["floor, kvmesh off: C / D mean TTFT (same config)"][3] == pytest.approx(1.0)
    assert rows["floor, kvmesh on: A / B mean TTFT (same config)"][3] == pytest.approx(1.0)
    on = run.arm(run.on)
    ttft_ns = sum(on.ttfts) * 1e9
    hooks = rows["kvmesh hooks on the step path, ms per request"]
    assert hooks[2] == pytest.approx(1.0)  # 2 ms per burst of 2
    assert hooks[3] == f"{12e6 / ttft_ns:.3%} of TTFT"
    assert rows["kvmesh threads on a CPU, ms per request"][2] == pytest.approx(2.0)
    cost = rows["kvmesh's cost: hooks + kvmesh threads on a CPU, ms per request"]
    assert cost[2] == pytest.approx(3.0) and cost[3] == f"{(12e6 + 24e6) / ttft_ns:.2%} of TTFT"
    queued = rows["kvmesh threads queued for a CPU, ms per request"]
    assert queued[2] == pytest.approx(1.0) and queued[3] == "3 wake-ups per request"
    assert queued[4].endswith(f"a loose bound: {(12e6 + 24e6 + 12e6) / ttft_ns:.2%} of TTFT")
    assert rows["idle CPU, share of one core"][1:3] == [
        "C 1.00%; D 1.00%",
        "A 2.00% (kvmesh threads 0.60%, 25 wake-ups/s); B 2.00% (kvmesh threads 0.60%, 25 wake-ups/s)"]
    assert "lies inside" in table.notes[-1] and "within the 2% target" in table.notes[-1]


def test_the_verdict_says_when_the_ab_cannot_resolve_the_target():
    rounds = [{"A": burst((t,)), "B": burst((t,)), "C": burst((1.0,)), "D": burst((1.1,))}
              for t in (0.8, 1.3, 0.9, 1.2)]
    table = overhead_tables.summary_table(run_of(rounds), IDLE, ARGS)
    assert "cannot confirm" in table.notes[-1]
    assert "differed by up to 9.1%" in table.notes[-1]  # C / D = 1 / 1.1


def test_hooks_table_orders_hooks_by_time():
    on = Arm([burst((1.0, 1.0), hook_ns=3_000_000)])
    on.bursts[0].hooks["wait_for_save"] = {"calls": 4, "ns": 8_000_000}
    table = overhead_tables.hooks_table(on)
    assert [r[0] for r in table.rows] == ["wait_for_save", "get_num_new_matched_tokens"]
    assert table.rows[0][1:5] == ["worker", 2.0, 2000.0, 4000.0]
    assert table.rows[1][1] == "scheduler"
