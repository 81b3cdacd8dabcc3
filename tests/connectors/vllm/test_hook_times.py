"""Step-path hook timers: the counters, the wrapper, and that the connector counts.

The connector part imports vLLM (a few seconds) but starts no engine; the
real-engine check is in test_vllm_inprocess.
"""

from __future__ import annotations

import pytest

from kvmesh.connectors.vllm.hook_times import HOOKS, HookTimes, diff, merge, timed


class Hooked:
    def __init__(self):
        self.hook_times = HookTimes()

    @timed
    def wait_for_save(self):
        return "saved"

    @timed
    def get_finished(self, ids):
        raise RuntimeError("boom")


def test_timed_counts_calls_and_time_and_keeps_the_result():
    h = Hooked()
    assert h.wait_for_save() == "saved" and h.wait_for_save() == "saved"
    snap = h.hook_times.snapshot()
    assert list(snap) == ["wait_for_save"]
    assert snap["wait_for_save"]["calls"] == 2 and snap["wait_for_save"]["ns"] > 0


def test_a_hook_that_raises_is_still_counted():
    h = Hooked()
    with pytest.raises(RuntimeError):
        h.get_finished(set())
    assert h.hook_times.snapshot()["get_finished"]["calls"] == 1


def test_timed_refuses_a_method_that_is_not_a_step_hook():
    with pytest.raises(ValueError):
        @timed
        def register_kv_caches(self, caches):
            pass


def test_snapshot_is_a_copy():
    t = HookTimes()
    t.add("save_kv_layer", 5)
    snap = t.snapshot()
    t.add("save_kv_layer", 7)
    assert snap == {"save_kv_layer": {"calls": 1, "ns": 5}}


def test_merge_and_diff():
    a = {"wait_for_save": {"calls": 2, "ns": 10}}
    b = {"wait_for_save": {"calls": 1, "ns": 5}, "build_connector_meta": {"calls": 1, "ns": 3}}
    both = merge(a, b)
    assert both == {"wait_for_save": {"calls": 3, "ns": 15},
                    "build_connector_meta": {"calls": 1, "ns": 3}}
    assert diff(both, a) == b
    assert diff(a, a) == {}


def test_the_timer_is_cheap():
    """Always on only while a timed call costs well under 1 us (here ~0.5 us)."""
    import time

    h = Hooked()
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        h.wait_for_save()
    per_call = (time.perf_counter() - start) / n
    assert per_call < 5e-6  # generous: the machine is shared and noisy


# -- the connector ------------------------------------------------------------

vllm = pytest.importorskip("vllm")


def test_every_step_hook_of_the_connector_is_timed():
    from kvmesh.connectors.vllm.connector import KVMeshConnector

    for hook in HOOKS:
        assert getattr(getattr(KVMeshConnector, hook), "__wrapped__", None) is not None, hook


def test_a_connector_counts_its_hooks():
    from test_connector import ENABLED, Lookups, run_prompt, vllm_config
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    from kvmesh.config import KvmeshConfig
    from kvmesh.connectors.vllm import peer_factory
    from kvmesh.connectors.vllm.connector import KVMeshConnector

    peer_factory.set_factories(open_lookup_client=Lookups())
    try:
        c = KVMeshConnector(vllm_config(), KVConnectorRole.SCHEDULER, None, config=ENABLED)
        run_prompt(c)
        run_prompt(c)
    finally:
        peer_factory.set_factories()
    snap = c.hook_times.snapshot()
    assert {h: s["calls"] for h, s in snap.items()} == {
        "get_num_new_matched_tokens": 2, "build_connector_meta": 2, "request_finished": 2}
    worker = KVMeshConnector(vllm_config(), KVConnectorRole.WORKER, None,
                             config=KvmeshConfig(enabled=False))
    worker.wait_for_layer_load("layer.0")
    worker.get_finished(set())
    assert {h: s["calls"] for h, s in worker.hook_times.snapshot().items()} == {
        "wait_for_layer_load": 1, "get_finished": 1}
