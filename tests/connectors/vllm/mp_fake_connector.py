"""`kv_connector_module_path` for the multiprocess vLLM test.

Importing it (in vLLM's engine-core and worker processes) installs file-backed
fake peers through `peer_factory.set_factories`, then exposes the real
`KVMeshConnector`. The store directory comes from KVMESH_TEST_STORE_DIR.
"""

import os

from vllm_fakes import DirChunks, FakePeer

from kvmesh.connectors.vllm import peer_factory
from kvmesh.connectors.vllm.connector import KVMeshConnector

__all__ = ["KVMeshConnector"]

_store = DirChunks(os.environ["KVMESH_TEST_STORE_DIR"])


def _opened(role: str) -> None:
    """Leave a `<role>.<pid>` marker so the test can see which process opened what."""
    (_store.root / f"{role}.{os.getpid()}").touch()


def _open_peer(config, namespace, slot_bytes, engine_id):
    _opened("worker")
    return FakePeer(slot_bytes, chunks=_store)


def _open_lookup_client(config, engine_id, namespace):
    _opened("scheduler")
    return FakePeer(0, chunks=_store)


peer_factory.set_factories(open_peer=_open_peer, open_lookup_client=_open_lookup_client)
