"""The demo's rows: whose reuse served a request, and the table of means."""

from __future__ import annotations

import pytest

from kvmesh.demo.reuse_rows import (KVMESH_LOCAL, KVMESH_PEER, MIXED, RECOMPUTED, ROWS,
                                    VLLM_OWN, Measured, Served, row_of, table)
from kvmesh.demo.workload import qa_route


def served(vllm=0, kvmesh=0, local=0, remote=0, prompt=1536) -> Served:
    return Served(prompt, vllm, kvmesh, local, remote)


@pytest.mark.parametrize("s, row", [
    (served(), RECOMPUTED),
    (served(vllm=1536), VLLM_OWN),
    (served(kvmesh=1536, local=6), KVMESH_LOCAL),
    (served(kvmesh=1536, remote=6), KVMESH_PEER),
    # vLLM's cache held the first round of a chat, kvmesh pulled the rest from peers.
    (served(vllm=768, kvmesh=512, remote=2), MIXED),
    # A repeated prompt: vLLM holds all but its last block, kvmesh's store that block.
    (served(vllm=992, kvmesh=31, local=1, prompt=1024), MIXED),
    # Some chunks from this engine's store, some from a peer: a pull happened.
    (served(kvmesh=1536, local=3, remote=3), KVMESH_PEER),
    # kvmesh's counters moved but vLLM took none of its tokens (e.g. its own cache
    # covered them by then): vLLM's reuse, not kvmesh's.
    (served(vllm=1536, local=6), VLLM_OWN),
])
def test_row_of(s, row):
    assert row_of(s) == row


def test_served_of_takes_vllms_split_and_the_counter_deltas():
    reuse = {"prompt_tokens": 1560, "vllm_cached_tokens": 768, "connector_tokens": 512}
    before = {"local_hits": 4, "remote_hits": 10}
    after = {"local_hits": 5, "remote_hits": 12}
    assert Served.of(reuse, before, after) == Served(1560, 768, 512, 1, 2)
    # An engine without kvmesh: no counters, no connector tokens.
    assert Served.of({"prompt_tokens": 9, "vllm_cached_tokens": 8}, {}, {}) == Served(9, 8, 0, 0, 0)


def test_table_means_and_ratios_per_row_in_fixed_order():
    measured = [
        Measured(served(kvmesh=1536, remote=6), 0.2, alone_s=2.0, nothing_s=2.2),
        Measured(served(), 2.0, alone_s=2.0, nothing_s=2.1),
        Measured(served(kvmesh=1536, remote=6), 0.4, alone_s=2.2, nothing_s=2.3),
        Measured(served(vllm=1536), 0.1, alone_s=0.1, nothing_s=2.0),
    ]
    lines = table(measured)
    rows = lines[3:]
    assert [r[:54].strip() for r in rows] == [RECOMPUTED, VLLM_OWN, KVMESH_PEER]
    # 2 requests of 1,536 tokens, all from kvmesh; TTFT mean 300 ms; vLLM alone
    # 2,100 ms = 7.00x; nothing reused 2,250 ms = 7.50x.
    assert rows[2][54:].split() == ["2", "1,536", "0", "1,536", "300ms", "2,100ms", "7.00x",
                                    "2,250ms", "7.50x"]
    assert rows[0].split()[-4:] == ["2,000ms", "1.00x", "2,100ms", "1.05x"]
    assert KVMESH_LOCAL not in "\n".join(lines)


def test_table_without_baselines_has_no_baseline_columns():
    lines = table([Measured(served(kvmesh=512, local=2), 0.05)])
    assert not any("vLLM alone" in line or "nothing reused" in line for line in lines)
    assert lines[3].startswith(KVMESH_LOCAL) and lines[3].endswith("50ms")


def test_every_row_label_fits_its_column():
    assert all(len(row) < 54 for row in ROWS)


@pytest.mark.parametrize("doc, engines, routes", [
    # home engine 0: compute, vLLM's cache, reset then kvmesh's store; then engines 1, 2, 1
    (0, 3, [(0, False), (0, False), (0, True), (1, False), (2, False), (1, False)]),
    (1, 3, [(1, False), (1, False), (1, True), (2, False), (0, False), (2, False)]),
    (0, 1, [(0, False), (0, False), (0, True), (0, False), (0, False), (0, False)]),
])
def test_qa_route(doc, engines, routes):
    assert [qa_route(doc, q, engines) for q in range(6)] == routes
