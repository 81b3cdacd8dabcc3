"""The front class: passthrough when disabled, role routing, metadata, plugin.

Imports vLLM (a few seconds) but starts no engine.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm_fakes import fake_blocks, fake_request, new_req, sched_output  # noqa: E402

from kvmesh.config import CodecConfig, KvmeshConfig  # noqa: E402
from kvmesh.connectors.vllm import peer_factory  # noqa: E402
from kvmesh.connectors.vllm.connector import KVMeshConnector, KVMeshMetadata  # noqa: E402
from kvmesh.connectors.vllm.metadata import ChunkSpec, RequestPlan  # noqa: E402
from kvmesh.connectors.vllm.namespace import build_namespace  # noqa: E402
from kvmesh.errors import ConfigError  # noqa: E402
from kvmesh.hashring.keys import ChunkHasher  # noqa: E402


def vllm_config(role="kv_both", block_size=32):
    transfer = SimpleNamespace(kv_role=role, engine_id="e1", kv_load_failure_policy="fail",
                               is_kv_producer=role in ("kv_producer", "kv_both"),
                               is_kv_consumer=role in ("kv_consumer", "kv_both"))
    model = SimpleNamespace(model="org/model", revision=None, dtype=torch.float32,
                            get_num_layers=lambda parallel: 2,
                            get_num_kv_heads=lambda parallel: 2, get_head_size=lambda: 8)
    return SimpleNamespace(kv_transfer_config=transfer, model_config=model,
                           cache_config=SimpleNamespace(block_size=block_size, cache_dtype="auto"),
                           parallel_config=SimpleNamespace(pipeline_parallel_size=1,
                                                           tensor_parallel_size=1))


@pytest.fixture
def no_factories():
    def refuse(*args):
        raise AssertionError("a disabled connector must not open anything")

    peer_factory.set_factories(open_peer=refuse, open_lookup_client=refuse)
    yield
    peer_factory.set_factories()


@pytest.mark.parametrize("role", [KVConnectorRole.SCHEDULER, KVConnectorRole.WORKER])
def test_disabled_connector_is_a_passthrough(role, no_factories):
    c = KVMeshConnector(vllm_config(), role, None, config=KvmeshConfig(enabled=False))
    req = fake_request("r", list(range(1000)))
    assert c.get_num_new_matched_tokens(req, 0) == (0, False)
    c.update_state_after_alloc(req, None, 0)
    meta = c.build_connector_meta(sched_output(new=[new_req("r", [1, 2], 0)], scheduled={"r": 1000}))
    assert meta == KVMeshMetadata()
    assert c.request_finished(req, [1, 2]) == (False, None)
    c.register_kv_caches({})
    c.bind_connector_metadata(meta)
    c.start_load_kv(None)
    c.wait_for_save()
    assert c.get_finished({"r"}) == (None, None)
    assert c.get_block_ids_with_load_errors() == set()
    c.shutdown()


def test_enable_flag_comes_from_the_environment(monkeypatch, no_factories):
    monkeypatch.delenv("KVMESH_ENABLE", raising=False)
    c = KVMeshConnector(vllm_config(), KVConnectorRole.SCHEDULER, None)
    assert c.get_num_new_matched_tokens(fake_request("r", list(range(1000))), 0) == (0, False)
    monkeypatch.setenv("KVMESH_ENABLE", "0")
    c = KVMeshConnector(vllm_config(), KVConnectorRole.SCHEDULER, None)
    assert c.get_num_new_matched_tokens(fake_request("r", list(range(1000))), 0) == (0, False)


def test_metadata_pickles_as_vllm_sends_it_to_workers():
    meta = KVMeshMetadata([RequestPlan("r", loads=[ChunkSpec(b"k" * 16, [-1, 4])],
                                       saves=[ChunkSpec(b"s" * 16, [5, 6])])], ["p"])
    assert pickle.loads(pickle.dumps(meta)) == meta


def test_a_best_effort_cache_does_not_require_delivery(no_factories):
    c = KVMeshConnector(vllm_config(), KVConnectorRole.WORKER, None, config=KvmeshConfig(enabled=False))
    assert c.requires_kv_delivery is False


def test_plugin_registers_once():
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    from kvmesh.connectors.vllm import plugin

    plugin.register()
    plugin.register()  # vLLM loads plugins more than once
    transfer = SimpleNamespace(kv_connector="KVMeshConnector", kv_connector_module_path=None)
    assert KVConnectorFactory.get_connector_class(transfer) is KVMeshConnector


def test_module_path_form_finds_the_class():
    import importlib

    assert getattr(importlib.import_module("kvmesh.connectors.vllm"), "KVMeshConnector") is KVMeshConnector


class Lookups:
    """An open_lookup_client that answers "all held" and records what it saw."""

    def __init__(self):
        self.opened, self.asked = [], 0

    def __call__(self, config, engine_id, namespace):
        self.opened.append((engine_id, namespace))
        return self

    def lookup_prefix(self, keys):
        self.asked += 1
        return len(keys)


@pytest.fixture
def lookups():
    recorder = Lookups()
    peer_factory.set_factories(open_lookup_client=recorder)
    yield recorder
    peer_factory.set_factories()


ENABLED = KvmeshConfig(enabled=True, chunk_tokens=64)
PROMPT = list(range(10, 210))


def run_prompt(c):
    """Admit PROMPT, compute it in one step, finish it: (matched, plan, finished)."""
    req = fake_request("r", PROMPT)
    matched = c.get_num_new_matched_tokens(req, 0)
    meta = c.build_connector_meta(sched_output(new=[new_req("r", list(range(1, 8)), 0)],
                                               scheduled={"r": 200}))
    return matched, meta, c.request_finished(req, list(range(1, 8)))


def test_kv_both_loads_saves_and_recomputes_failed_loads(lookups):
    cfg = vllm_config("kv_both")
    c = KVMeshConnector(cfg, KVConnectorRole.SCHEDULER, None, config=ENABLED)
    matched, meta, finished = run_prompt(c)
    assert matched == (192, True) and finished == (True, None)
    assert cfg.kv_transfer_config.kv_load_failure_policy == "recompute"
    assert lookups.opened == [("e1", build_namespace(cfg, 64))]


def test_a_failed_load_reported_by_vllm_ends_the_requests_mesh_loads(lookups):
    c = KVMeshConnector(vllm_config("kv_both"), KVConnectorRole.SCHEDULER, None, config=ENABLED)
    req = fake_request("r", PROMPT)
    matched, _ = c.get_num_new_matched_tokens(req, 0)
    c.update_state_after_alloc(req, fake_blocks(list(range(1, 8))), matched)
    c.build_connector_meta(sched_output())
    c.update_connector_output(SimpleNamespace(finished_recving=set(), invalid_block_ids={1}))
    assert c.get_num_new_matched_tokens(req, 0) == (192, True)  # not finished yet: no verdict
    c.update_connector_output(SimpleNamespace(finished_recving={"r"}, invalid_block_ids={1}))
    assert c.get_num_new_matched_tokens(req, 0) == (0, False)


def test_kv_producer_never_looks_up(lookups):
    cfg = vllm_config("kv_producer")
    c = KVMeshConnector(cfg, KVConnectorRole.SCHEDULER, None, config=ENABLED)
    matched, meta, finished = run_prompt(c)
    assert matched == (0, False) and lookups.opened == [] and lookups.asked == 0
    assert [len(p.saves) for p in meta.requests] == [3] and finished == (True, None)
    assert cfg.kv_transfer_config.kv_load_failure_policy == "fail"


def test_kv_consumer_never_saves(lookups):
    cfg = vllm_config("kv_consumer")
    c = KVMeshConnector(cfg, KVConnectorRole.SCHEDULER, None, config=ENABLED)
    matched, meta, finished = run_prompt(c)
    assert matched == (192, True)
    assert all(not p.saves for p in meta.requests) and finished == (False, None)


def test_namespace_binds_model_shape_layout_and_rank():
    ns = build_namespace(vllm_config(), 64)
    assert (ns.model, ns.dtype, ns.num_layers, ns.num_kv_heads, ns.head_dim, ns.chunk_tokens,
            ns.kv_layout, ns.tp_rank, ns.tp_size) == (
        "org/model", "float32", 2, 2, 8, 64, "vllm-cpu/block32", 0, 1)
    other_block = build_namespace(vllm_config(block_size=64), 64)
    assert ChunkHasher(other_block).keys(PROMPT) != ChunkHasher(ns).keys(PROMPT)
    assert build_namespace(vllm_config(), 64, tp_rank=1) != ns


def test_a_lossy_codec_setting_gives_the_scheduler_a_lossy_namespace(lookups):
    cfg = vllm_config("kv_both")
    lossy = KvmeshConfig(enabled=True, chunk_tokens=64, codecs=CodecConfig(cpu="fp8"))
    KVMeshConnector(cfg, KVConnectorRole.SCHEDULER, None, config=lossy)
    ((_, namespace),) = lookups.opened
    exact = build_namespace(cfg, 64)
    assert namespace.lossy_codec == "fp8" and exact.lossy_codec == ""
    assert namespace == build_namespace(cfg, 64, lossy_codec="fp8")
    assert set(ChunkHasher(namespace).keys(PROMPT)).isdisjoint(ChunkHasher(exact).keys(PROMPT))


def test_chunk_size_must_be_a_multiple_of_the_block_size():
    with pytest.raises(ConfigError):
        build_namespace(vllm_config(block_size=128), 64)


def test_the_metadata_tells_the_worker_when_a_step_computes_nothing(lookups):
    c = KVMeshConnector(vllm_config("kv_both"), KVConnectorRole.SCHEDULER, None, config=ENABLED)
    assert c.build_connector_meta(sched_output()).idle is True
    assert c.build_connector_meta(sched_output(scheduled={"r": 5})).idle is False
