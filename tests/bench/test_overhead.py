"""The no-reuse A/B's bookkeeping, against a scripted engine (no vLLM)."""

from __future__ import annotations

import pytest

from kvmesh.bench import overhead


class ScriptedEngine:
    """Answers generate/status/profile like engine_proc; each request costs fixed CPU
    and hook time, and its saves land `lag` status calls after the reply."""

    def __init__(self, name, ttft=1.0, cpu_ns=2_000_000_000, kvmesh=True, lag=2):
        self.name, self.ttft, self.cpu_per_request, self.kvmesh, self.lag = name, ttft, cpu_ns, kvmesh, lag
        self.cpu = {"process": 0, "main.run": 0, "main.slices": 0}
        self.hooks = {}
        self.saved = self.owed = self.polls = 0

    def call(self, cmd, *args):
        if cmd == "generate":
            tokens, _ = args
            self.cpu["process"] += self.cpu_per_request
            self.cpu["main.run"] += self.cpu_per_request
            self.cpu["main.slices"] += 100
            if self.kvmesh:
                self.cpu["kvmesh-save.run"] = self.cpu.get("kvmesh-save.run", 0) + 1_000_000
                self.cpu["process"] += 1_000_000
                h = self.hooks.setdefault("wait_for_save", {"calls": 0, "ns": 0})
                h["calls"] += 1
                h["ns"] += 200_000
                self.owed += len(tokens) // 256
            return [7], self.ttft
        if cmd == "status":
            self.polls += 1
            if self.owed and self.polls % self.lag == 0:
                self.saved, self.owed = self.saved + self.owed, 0
            return {"chunks_saved": self.saved} if self.kvmesh else {}
        if cmd == "profile":
            return {"threads": dict(self.cpu), "hooks": {k: dict(v) for k, v in self.hooks.items()}}
        raise AssertionError(cmd)


def test_a_burst_waits_for_its_saves_and_takes_differences():
    engine = ScriptedEngine("A", lag=3)
    prompts = [[1] * 512, [2] * 512]
    first = overhead.run_burst(engine, prompts, kvmesh=True, chunk_tokens=256)
    assert first.ttfts == [1.0, 1.0] and first.wall_s > 0
    assert engine.saved == 4 and first.pending == 4 and first.drain_s > 0
    assert first.threads["process"] == 2 * 2_001_000_000
    assert first.threads["kvmesh-save.run"] == 2_000_000 and first.threads["main.slices"] == 200
    assert first.hooks == {"wait_for_save": {"calls": 2, "ns": 400_000}}
    second = overhead.run_burst(engine, prompts, kvmesh=True, chunk_tokens=256)
    assert second.hooks == first.hooks  # per burst, not cumulative


def test_a_burst_without_kvmesh_neither_polls_nor_drains():
    engine = ScriptedEngine("C", kvmesh=False)
    burst = overhead.run_burst(engine, [[1] * 512], kvmesh=False, chunk_tokens=256)
    assert engine.polls == 0 and burst.pending == 0 and burst.drain_s == 0.0
    assert burst.hooks == {}


def test_saves_that_never_land_raise(monkeypatch):
    monkeypatch.setattr(overhead, "DRAIN_TIMEOUT_S", 0.05)
    engine = ScriptedEngine("A", lag=10**9)
    with pytest.raises(TimeoutError):
        overhead.run_burst(engine, [[1] * 512], kvmesh=True, chunk_tokens=256)


def test_prompts_are_unique_across_engines_and_takes():
    p = overhead._Prompts(64, 1024)
    seen = [tuple(x) for engine in ("A", "C", "A", "D") for x in p.take(engine, 3)]
    assert len(set(seen)) == 12 and all(len(x) == 64 for x in seen)


def test_prompts_are_the_same_from_run_to_run():
    assert overhead._Prompts(8, 1024).take("A", 2) == overhead._Prompts(8, 1024).take("A", 2)


class Args:
    no_reuse_rounds, no_reuse_burst, no_reuse_tokens, no_reuse_idle_s = 4, 1, 512, 0.0


def test_a_run_gives_every_engine_one_burst_per_round_in_balanced_order():
    on = [ScriptedEngine("A"), ScriptedEngine("B")]
    off = [ScriptedEngine("C", kvmesh=False), ScriptedEngine("D", kvmesh=False)]
    order = []
    for engine in on + off:
        generate = engine.call

        def call(cmd, *args, engine=engine, generate=generate):
            if cmd == "generate":
                order.append(engine.name)
            return generate(cmd, *args)

        engine.call = call
    summary, hooks = overhead.no_reuse_tables(on, off, Args, vocab=1024, chunk_tokens=256)
    assert order[:4] == ["A", "B", "C", "D"]  # warm-up
    rounds = [order[4 + 4 * r: 8 + 4 * r] for r in range(4)]
    assert rounds == [["A", "B", "D", "C"], ["B", "C", "A", "D"],
                      ["C", "D", "B", "A"], ["D", "A", "C", "B"]]
    assert summary.name == "ttft_no_reuse" and hooks.name == "ttft_no_reuse_hooks"
    assert [r[0] for r in hooks.rows] == ["wait_for_save"]
