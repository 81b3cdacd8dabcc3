"""vLLM plugin entry point (`vllm.general_plugins` -> `register`).

Makes `{"kv_connector": "KVMeshConnector", "kv_role": "kv_both"}` work without
`kv_connector_module_path`. vLLM may load plugins several times per process
and once in every process, so registering twice is a no-op.
"""

from __future__ import annotations

CONNECTOR_NAME = "KVMeshConnector"


def register() -> None:
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    try:
        KVConnectorFactory.register_connector(
            CONNECTOR_NAME, "kvmesh.connectors.vllm.connector", "KVMeshConnector")
    except ValueError:
        pass  # already registered (by an earlier load of this plugin)
