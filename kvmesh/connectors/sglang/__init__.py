"""kvmesh as an SGLang HiCache storage backend.

Load it with

    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name":"kvmesh",
        "module_path":"kvmesh.connectors.sglang",
        "class_name":"KvmeshHiCacheStorage","interface_v1":1}'

`KvmeshHiCacheStorage` is imported lazily, so importing this package (e.g.
for `page_keys`) does not import SGLang.
"""

__all__ = ["KvmeshHiCacheStorage"]


def __getattr__(name: str):
    if name == "KvmeshHiCacheStorage":
        from kvmesh.connectors.sglang.backend import KvmeshHiCacheStorage

        return KvmeshHiCacheStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
