"""`KVMeshConnector`: vLLM's v1 KV connector for kvmesh, a thin front.

vLLM builds one instance per role: SCHEDULER in the engine-core process and
WORKER in each worker process. This class only routes each hook to the half of
its role (`MeshScheduler` or `MeshWorker`).

With `KVMESH_ENABLE` unset or false neither half is built and every hook is a
constant-time no-op: no tokens matched, empty metadata, nothing saved.
Either way every hook on vLLM's step path is timed into `hook_times` (calls
and nanoseconds; see `hook_times`), which the benchmarks read.

Roles: kv_consumer loads only, kv_producer saves only, kv_both does both.
When loading, vLLM's `kv_load_failure_policy` is set to "recompute": kvmesh is
a best-effort cache, so a chunk that cannot be loaded is recomputed, never
turned into a failed request. For prefill/decode disaggregation the producer
and consumer exchange chunk counts through kv_transfer_params (see
`scheduler`), which is what `pd_proxy` forwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvmesh.config import KvmeshConfig
from kvmesh.connectors.vllm import peer_factory
from kvmesh.connectors.vllm.hook_times import HookTimes, timed
from kvmesh.connectors.vllm.metadata import StepPlan
from kvmesh.connectors.vllm.namespace import build_namespace
from kvmesh.connectors.vllm.scheduler import MeshScheduler
from kvmesh.connectors.vllm.worker import MeshWorker
from kvmesh.errors import KvmeshError

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)

# How long a decode request may wait for its prefill's chunks, in units of the
# mesh's network timeout (the prefill's last saves are gathered and committed
# after its reply has been sent).
HANDOFF_WAIT_TIMEOUTS = 5


@dataclass
class KVMeshMetadata(StepPlan, KVConnectorMetadata):
    """A `StepPlan` as the metadata type vLLM expects; pickled to the workers."""


class KVMeshConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig | None" = None,
                 config: KvmeshConfig | None = None) -> None:
        self.hook_times = HookTimes()  # see hook_times: every step-path hook is timed
        super().__init__(vllm_config, role, kv_cache_config)
        self._config = config if config is not None else KvmeshConfig.from_env()
        self._scheduler: MeshScheduler | None = None
        self._worker: MeshWorker | None = None
        if not self._config.enabled:
            return
        transfer = self._kv_transfer_config
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = _build_scheduler(vllm_config, self._config)
            if transfer.is_kv_consumer and transfer.kv_load_failure_policy != "recompute":
                logger.info("kvmesh: setting kv_load_failure_policy=recompute (a chunk that "
                            "cannot be loaded is recomputed)")
                transfer.kv_load_failure_policy = "recompute"
        else:
            self._worker = MeshWorker(self._config, transfer.engine_id,
                                      vllm_config.cache_config.block_size)

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a dropped save is a future cache miss, nothing more

    # -- worker side ----------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Hand the worker half its layers in model order and this rank's namespace."""
        if self._worker is None:
            return
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        from vllm.model_executor.models.utils import extract_layer_index

        layers = [kv_caches[name] for name in sorted(kv_caches, key=extract_layer_index)]
        namespace = build_namespace(self._vllm_config, self._config.chunk_tokens,
                                    tp_rank=get_tensor_model_parallel_rank(),
                                    lossy_codec=self._config.codecs.lossy)
        self._worker.register_kv_caches(layers, namespace)

    @timed
    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        if self._worker is not None:
            self._worker.handle_preemptions(kv_connector_metadata)

    @timed
    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        if self._worker is not None:
            self._worker.start_load_kv(self._get_connector_metadata())

    @timed
    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are asynchronous: a loading request is not in the batch

    @timed
    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: "AttentionMetadata", **kwargs: Any) -> None:
        return  # chunks are gathered whole, all layers at once, in wait_for_save

    @timed
    def wait_for_save(self) -> None:
        if self._worker is not None:
            self._worker.wait_for_save(self._get_connector_metadata())

    @timed
    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        if self._worker is None:
            return None, None
        return self._worker.get_finished(finished_req_ids)

    @timed
    def get_block_ids_with_load_errors(self) -> set[int]:
        if self._worker is None:
            return set()
        return self._worker.get_block_ids_with_load_errors()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
        if self._scheduler is not None:
            self._scheduler.shutdown()

    # -- scheduler side -------------------------------------------------------

    @timed
    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        if self._scheduler is None:
            return 0, False
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    @timed
    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int) -> None:
        if self._scheduler is not None:
            self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    @timed
    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        if self._scheduler is None:
            return KVMeshMetadata()
        plan = self._scheduler.build_connector_meta(scheduler_output)
        return KVMeshMetadata(plan.requests, plan.preempted_req_ids, plan.idle)

    @timed
    def update_connector_output(self, connector_output: "KVConnectorOutput") -> None:
        if self._scheduler is not None and connector_output.finished_recving:
            self._scheduler.loads_finished(set(connector_output.finished_recving),
                                           set(connector_output.invalid_block_ids or ()))

    @timed
    def request_finished(self, request: "Request",
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        if self._scheduler is None:
            return False, None
        return self._scheduler.request_finished(request, block_ids)


def _build_scheduler(vllm_config: "VllmConfig", config: KvmeshConfig) -> MeshScheduler:
    """The scheduler half, with a lookup client when this engine loads."""
    transfer = vllm_config.kv_transfer_config
    namespace = build_namespace(vllm_config, config.chunk_tokens, lossy_codec=config.codecs.lossy)
    lookup = None
    if transfer.is_kv_consumer:
        try:
            lookup = peer_factory.open_lookup_client(config, transfer.engine_id, namespace)
        except KvmeshError as exc:
            logger.warning("kvmesh: no lookup client, this engine will not load: %s", exc)
    return MeshScheduler(namespace, vllm_config.cache_config.block_size, lookup,
                         saves=transfer.is_kv_producer,
                         handoff_wait_s=HANDOFF_WAIT_TIMEOUTS * config.transfer.timeout_s)
