"""vLLM plugin entry point (`vllm.general_plugins` -> `register`).

Makes `{"kv_connector": "KVMeshConnector", "kv_role": "kv_both"}` work without
`kv_connector_module_path`, and keeps vLLM's CPU thread binding as it is
without a connector (see `cpu_threads`). vLLM may load plugins several times
per process and once in every process, so registering twice is a no-op.
"""

from __future__ import annotations

CONNECTOR_NAME = "KVMeshConnector"


def register() -> None:
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    from kvmesh.connectors.vllm.cpu_threads import keep_worker_cores_as_without_connector

    try:
        KVConnectorFactory.register_connector(
            CONNECTOR_NAME, "kvmesh.connectors.vllm.connector", "KVMeshConnector")
    except ValueError:
        pass  # already registered (by an earlier load of this plugin)
    keep_worker_cores_as_without_connector()
