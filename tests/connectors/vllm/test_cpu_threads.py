"""vLLM's CPU thread binding gives the worker the same cores with kvmesh as without a connector.

Builds vLLM's `OMPProcessManager` (no engine) for configs with no connector,
kvmesh, and vLLM's own ExampleConnector: any other connector makes vLLM keep
back one more core from the worker, kvmesh must not.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from vllm.platforms import current_platform  # noqa: E402

from kvmesh.connectors.vllm import plugin  # noqa: E402
from kvmesh.connectors.vllm.cpu_threads import is_kvmesh_connector  # noqa: E402

pytestmark = pytest.mark.skipif(not current_platform.is_cpu(), reason="vLLM's CPU backend only")


def transfer(name, module=None):
    return SimpleNamespace(kv_connector=name, kv_connector_module_path=module)


def binding(kv_transfer, monkeypatch, world_size=1):
    """(cores kept back, each worker's cores) that vLLM picks for this config."""
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setenv("VLLM_CPU_SIM_MULTI_NUMA", "1")  # any machine can host the workers
    parallel = SimpleNamespace(local_world_size=world_size, data_parallel_rank_local=0,
                               _api_process_count=1)
    m = OMPProcessManager(SimpleNamespace(parallel_config=parallel, kv_transfer_config=kv_transfer))
    return m.reserve_cpu_num, m.cpu_lists


@pytest.fixture(autouse=True)
def registered():
    plugin.register()
    plugin.register()  # vLLM loads plugins more than once: the hook goes in once


def test_another_connector_keeps_back_more_cores(monkeypatch):
    # What the hook undoes: without it kvmesh would be treated the same way.
    assert binding(transfer("ExampleConnector"), monkeypatch)[0] == binding(None, monkeypatch)[0] + 1


@pytest.mark.parametrize("module", [None, "kvmesh.connectors.vllm"])
def test_kvmesh_gets_the_cores_of_no_connector(monkeypatch, module):
    assert binding(transfer("KVMeshConnector", module), monkeypatch) == binding(None, monkeypatch)


def test_the_users_reserved_count_still_wins(monkeypatch):
    binding(None, monkeypatch)  # clears the variable first
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    parallel = SimpleNamespace(local_world_size=1, data_parallel_rank_local=0, _api_process_count=1)
    m = OMPProcessManager(SimpleNamespace(parallel_config=parallel,
                                          kv_transfer_config=transfer("KVMeshConnector")))
    assert m.reserve_cpu_num == 0


def test_only_kvmesh_alone_counts_as_kvmesh():
    assert is_kvmesh_connector(transfer("KVMeshConnector"))
    assert not is_kvmesh_connector(None)
    assert not is_kvmesh_connector(transfer("MultiConnector"))
    assert not is_kvmesh_connector(transfer("KVMeshConnector", "someone.else"))
