"""Model shapes kvmesh builds locally, and what their prefill costs per KV byte.

kvmesh trades prefill compute for moving KV bytes, so a demo is only honest
if its model spends about as much compute per KV byte as a real one. A real
8B model with grouped-query attention spends ~10^5 prefill FLOPs per KV byte;
`flops_per_kv_byte` states the figure for any shape so benchmarks can print
it next to their results.

FLOPs count multiply-adds as 2: the projections and MLP (2 per weight per
token) plus causal attention (QK^T and AV: on average 2 * prompt * hidden per
token per layer). Embedding lookups and the LM head are left out (vLLM
computes logits only for the last prompt token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A Llama-architecture shape. `dtype` is the weight and KV dtype."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int = 1024
    max_position_embeddings: int = 8192
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dtype_bytes(self) -> int:
        return getattr(torch, self.dtype).itemsize

    def layer_params(self) -> int:
        """Weights of one decoder layer's matmuls (norms left out)."""
        q_and_o = 2 * self.hidden_size * self.num_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        mlp = 3 * self.hidden_size * self.intermediate_size
        return q_and_o + k_and_v + mlp

    def kv_bytes_per_token(self, dtype_bytes: int | None = None) -> int:
        """K and V of one token over all layers."""
        size = self.kv_dtype_bytes if dtype_bytes is None else dtype_bytes
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * size

    def prefill_flops_per_token(self, prompt_tokens: int) -> float:
        """Mean FLOPs per token of a causal prefill of `prompt_tokens` tokens."""
        matmuls = 2 * self.layer_params()
        attention = 2 * prompt_tokens * self.num_heads * self.head_dim
        return float(self.num_layers * (matmuls + attention))


SHAPES: dict[str, ModelShape] = {
    # Correctness tests: fast to build and to run; recompute looks cheap here.
    "tiny": ModelShape("tiny", hidden_size=256, num_layers=4, num_heads=4,
                       num_kv_heads=2, intermediate_size=512),
    # Demos and TTFT benchmarks: wide MLP and few KV heads, like real models
    # (~33,000 prefill FLOPs per float32 KV byte). A 2,048-token prefill takes
    # ~4-6 s on 2 cores; a 256-token chunk of KV is 1.5 MiB.
    "demo": ModelShape("demo", hidden_size=1024, num_layers=6, num_heads=16,
                       num_kv_heads=2, intermediate_size=4096),
}

# For comparison only (never built): Llama-3-8B in bfloat16.
LLAMA3_8B = ModelShape("llama3-8b", hidden_size=4096, num_layers=32, num_heads=32,
                       num_kv_heads=8, intermediate_size=14336, vocab_size=128256,
                       dtype="bfloat16")


def get_shape(shape: ModelShape | str) -> ModelShape:
    """The shape named `shape`; raises ValueError for an unknown name."""
    if isinstance(shape, ModelShape):
        return shape
    try:
        return SHAPES[shape]
    except KeyError:
        raise ValueError(f"unknown model shape {shape!r}; known: {sorted(SHAPES)}") from None


def flops_per_kv_byte(shape: ModelShape | str, prompt_tokens: int = 2048,
                      kv_dtype_bytes: int | None = None) -> float:
    """Prefill FLOPs spent per byte of KV produced, for a prompt of that length.

    `kv_dtype_bytes` overrides the shape's dtype (e.g. 2 to compare a float32
    demo with bf16 production KV).
    """
    spec = get_shape(shape)
    per_token = spec.prefill_flops_per_token(prompt_tokens)
    return per_token / spec.kv_bytes_per_token(kv_dtype_bytes)
