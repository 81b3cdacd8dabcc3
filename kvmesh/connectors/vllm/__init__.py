"""kvmesh's vLLM v1 KV connector.

`kv_connector_module_path="kvmesh.connectors.vllm"` finds `KVMeshConnector`
here. It is imported lazily, so importing this package (e.g. for
`peer_factory`) does not import vLLM.
"""

__all__ = ["KVMeshConnector"]


def __getattr__(name: str):
    if name == "KVMeshConnector":
        from kvmesh.connectors.vllm.connector import KVMeshConnector

        return KVMeshConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
