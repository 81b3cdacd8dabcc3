"""The demo's checks: outputs against vLLM alone, and a baseline that reused nothing."""

from __future__ import annotations

from kvmesh.demo.report import check, per_request, report
from kvmesh.demo.reuse_rows import KVMESH_PEER, RECOMPUTED, Served

LABELS = ["doc0 q0", "doc0 q1"]
COUNTERS = {"lookup_chunks": 12, "lookup_hit_chunks": 6, "bytes_pulled": 6 << 20,
            "chunks_saved": 6, "load_failures": 0}


def result(output, ttft=1.0, vllm=0, kvmesh=0, remote=0) -> dict:
    return {"output": output, "ttft": ttft, "served": Served(1536, vllm, kvmesh, 0, remote)}


def runs(nothing_reused=0, alone_output=(2,)):
    ours = [result([1], 2.0), result([2], 0.2, kvmesh=1536, remote=6)]
    nothing = [result([1], 2.1), result([2], 2.1, kvmesh=nothing_reused, remote=1)]
    alone = [result([1], 2.0), result(list(alone_output), 2.0)]
    return ours, nothing, alone


def test_a_clean_run_passes_and_shows_every_row_and_total():
    ours, nothing, alone = runs()
    text, ok = report(LABELS, ours, COUNTERS, nothing, alone)
    assert ok
    assert RECOMPUTED in text and KVMESH_PEER in text
    assert "6/12 (50%)" in text and "6.0 MiB" in text
    assert "outputs identical to vLLM alone: 2/2 with kvmesh, 2/2" in text


def test_an_output_that_differs_fails():
    lines, ok = check(LABELS, *runs(alone_output=(3,)))
    assert not ok
    assert "1/2 with kvmesh, 1/2" in lines[0]
    assert lines[0].endswith("MISMATCH (with kvmesh: doc0 q1)")


def test_a_baseline_that_reused_anything_is_no_baseline():
    lines, ok = check(LABELS, *runs(nothing_reused=256))
    assert not ok
    assert "256 with nothing to reuse" in lines[1] and lines[1].endswith("NOT A BASELINE")


def test_without_baselines_only_kvmeshs_run_is_shown():
    ours, _, _ = runs()
    text, ok = report(LABELS, ours, COUNTERS, None, None)
    assert ok and "vLLM alone" not in text and "identical" not in text


def test_per_request_lines_name_the_request_its_row_and_whether_it_matched():
    ours, nothing, alone = runs(alone_output=(3,))
    lines = per_request(LABELS, ours, nothing, alone).splitlines()[2:]
    assert lines[0].split() == ["doc0", "q0", "nothing", "to", "reuse", "0+0/1536", "2,000ms",
                                "2,000ms", "2,100ms", "yes"]
    assert lines[1].startswith("doc0 q1") and "0+1536/1536" in lines[1]
    assert lines[1].endswith("NO")
