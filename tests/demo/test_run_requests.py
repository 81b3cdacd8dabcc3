"""The demo's runs send the same prompts: chat rounds carry the first run's outputs."""

from __future__ import annotations

from kvmesh.demo.main import run_requests
from kvmesh.demo.progress import Progress
from kvmesh.demo.workload import DemoRequest


class FakeEngine:
    """Answers like engine_proc: the output is a function of the prompt (and of
    the run, through `bias`), so a changed prompt or run shows in it."""

    def __init__(self, name: str, bias: int = 0) -> None:
        self.name, self.bias = name, bias
        self.sent: list[tuple] = []

    def call(self, *cmd):
        self.sent.append(cmd)
        if cmd[0] == "generate":
            return [len(cmd[1]) + self.bias, 7], 0.5
        return {}


def workload() -> list[DemoRequest]:
    r0 = DemoRequest("chat", 0, [1, 2, 3], "chat r0")
    r1 = DemoRequest("chat", 1, [4, 5], "chat r1", extend_from=r0)
    return [r0, DemoRequest("doc-qa", 0, [9] * 4, "doc0 q2", reset_first=True), r1]


def test_chat_rounds_hold_the_first_runs_output_and_baselines_resend_those_prompts():
    requests = workload()
    first = [FakeEngine("e0"), FakeEngine("e1")]
    results = run_requests(first, requests, 8, Progress(10), kvmesh=True)
    assert results[2]["prompt"] == [1, 2, 3] + [3, 7] + [4, 5]
    # A baseline run whose outputs differ must still send the first run's prompts.
    other = [FakeEngine("b0", bias=100), FakeEngine("b1", bias=100)]
    again = run_requests(other, requests, 8, Progress(10), kvmesh=False,
                         prompts=[r["prompt"] for r in results])
    assert [r["prompt"] for r in again] == [r["prompt"] for r in results]
    assert requests[0].output == [3, 7]  # the first run's, not the baseline's
    assert ("reset_prefix_cache",) in other[0].sent


def test_a_salted_run_salts_every_request_apart_and_resets_nothing():
    requests = workload()
    engines = [FakeEngine("e0"), FakeEngine("e1")]
    first = run_requests(engines, requests, 8, Progress(10), kvmesh=True)
    salted = [FakeEngine("e0"), FakeEngine("e1")]
    run_requests(salted, requests, 8, Progress(10), kvmesh=True,
                 prompts=[r["prompt"] for r in first], salt="s")
    sent = [c for e in salted for c in e.sent]
    salts = [c[3] for c in sent if c[0] == "generate"]
    assert sorted(salts) == ["s-0", "s-1", "s-2"]
    assert ("reset_prefix_cache",) not in sent
    assert all(c[3] == "" for e in engines for c in e.sent if c[0] == "generate")
