"""The key namespace of a vLLM engine, built the same way by both halves.

The scheduler half (engine-core process) and the worker half (worker process)
hash tokens independently, so they must derive the very same `KeyNamespace`
from the `VllmConfig` they both receive. Everything here reads only that
config; the worker afterwards checks that the KV tensors it is given really
have the layout named here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmesh.errors import ConfigError
from kvmesh.hashring.keys import KeyNamespace

if TYPE_CHECKING:
    from vllm.config import VllmConfig


def build_namespace(vllm_config: "VllmConfig", chunk_tokens: int, tp_rank: int = 0,
                    lossy_codec: str = "") -> KeyNamespace:
    """The namespace of this engine's KV for TP rank `tp_rank` (no cache salt).

    The layout name carries the block size: on vLLM's CPU backend K is
    transposed inside each block, so chunks cut into blocks of different sizes
    have different bytes. `lossy_codec` is `KvmeshConfig.codecs.lossy`.
    """
    model, cache, parallel = vllm_config.model_config, vllm_config.cache_config, vllm_config.parallel_config
    check_chunk_tokens(chunk_tokens, cache.block_size)
    if parallel.pipeline_parallel_size != 1:
        raise ConfigError("kvmesh: pipeline parallelism is not supported by the vLLM connector")
    identity = model.model if not model.revision else f"{model.model}@{model.revision}"
    return KeyNamespace(
        model=identity,
        dtype=kv_dtype_name(vllm_config),
        num_layers=model.get_num_layers(parallel),
        num_kv_heads=model.get_num_kv_heads(parallel),
        head_dim=model.get_head_size(),
        chunk_tokens=chunk_tokens,
        kv_layout=layout_tag(expected_layout(), cache.block_size),
        tp_rank=tp_rank,
        tp_size=parallel.tensor_parallel_size,
        lossy_codec=lossy_codec,
    )


def layout_tag(layout_name: str, block_size: int) -> str:
    """`KeyNamespace.kv_layout`: the kernels' layout name and the block size."""
    return f"{layout_name}/block{block_size}"


def check_chunk_tokens(chunk_tokens: int, block_size: int) -> None:
    if chunk_tokens <= 0 or chunk_tokens % block_size:
        raise ConfigError(f"KVMESH_CHUNK_TOKENS={chunk_tokens} must be a positive multiple "
                          f"of vLLM's block size {block_size}")


def kv_dtype_name(vllm_config: "VllmConfig") -> str:
    """The KV cache's element format: vLLM's cache dtype, or the model's when "auto"."""
    cache_dtype = vllm_config.cache_config.cache_dtype
    if cache_dtype != "auto":
        return str(cache_dtype)
    return str(vllm_config.model_config.dtype).removeprefix("torch.")


def expected_layout() -> str:
    """The `kvmesh.kernels.layouts` name of this platform's paged KV layout.

    vLLM's CPU backend uses [B, H, N, 2D] ("vllm-cpu"). GPU backends are
    expected to hand vLLM >= 0.32's head-major views ("vllm-hnd"); the worker
    verifies the guess against the real tensors and refuses to start otherwise.
    """
    from vllm.platforms import current_platform

    return "vllm-cpu" if current_platform.is_cpu() else "vllm-hnd"
