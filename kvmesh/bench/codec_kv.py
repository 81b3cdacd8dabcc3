"""Real KV for the codec benchmark: chunks of a vLLM engine's filled KV cache.

`capture(...)` starts an offline vLLM engine (in-process engine core, eager,
prefix caching on) on a locally built model in a child process, prefills a
few prompts of generated text, and gathers the engine's cached full blocks
with kvmesh's own kernels (`PagedKV`), exactly as the connector stores them:
the chunks' raw bytes, with their `ChunkGeometry`. Nothing in vLLM is
patched: the worker is asked for its KV tensors through `collective_rpc`
and the scheduler's block pool says which blocks hold complete prompt
blocks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kvmesh.codecs import ChunkGeometry

CACHE_DIR = Path(".cache")


@dataclass
class CapturedKV:
    geometry: ChunkGeometry
    chunks: list[torch.Tensor]  # raw chunk bytes, `blocks_per_chunk` blocks each
    blocks_per_chunk: int
    prompt_tokens: int
    seconds: float  # engine start to chunks gathered


def capture(shape: str = "tiny", dtype: str = "float32", num_prompts: int = 8,
            prompt_words: int = 700, block_size: int = 32, chunk_tokens: int = 256,
            timeout: float = 600.0, cache_dir: Path = CACHE_DIR) -> CapturedKV:
    """Chunks of the KV of `num_prompts` prompts prefilled by a real vLLM engine
    (in a child process; blocks up to `timeout` seconds, ~30-60 s for "tiny").

    Prompt i is `sample_text(prompt_words, seed=100 + i)`; the first chunk
    starts with prompt 0's first block. The model is built under
    `cache_dir`/models (and vLLM's caches kept under `cache_dir`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kv.pt"
        ctx = mp.get_context("spawn")
        proc = ctx.Process(target=_child, args=(str(out), str(cache_dir), shape, dtype,
                                                num_prompts, prompt_words, block_size,
                                                chunk_tokens))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise TimeoutError(f"KV capture took longer than {timeout:.0f} s")
        if proc.exitcode != 0 or not out.exists():
            raise RuntimeError(f"KV capture failed (exit code {proc.exitcode})")
        saved = torch.load(out)
    return CapturedKV(geometry=ChunkGeometry(**saved["geometry"]), chunks=saved["chunks"],
                      blocks_per_chunk=saved["blocks_per_chunk"],
                      prompt_tokens=saved["prompt_tokens"], seconds=saved["seconds"])


PROMPT_SEED = 100


def _child(out: str, cache_dir: str, shape: str, dtype: str, num_prompts: int,
           prompt_words: int, block_size: int, chunk_tokens: int) -> None:
    root = Path(cache_dir).resolve()
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_HOST_IP="127.0.0.1",
                      VLLM_ALLOW_INSECURE_SERIALIZATION="1",  # collective_rpc of a function
                      VLLM_CACHE_ROOT=str(root / "vllm"),
                      TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"))
    from vllm import LLM, SamplingParams

    from kvmesh.models.local import build_model, sample_text

    model_dir = build_model(root / "models" / f"{shape}-seed0", shape, seed=0)
    start = time.monotonic()
    llm = LLM(model=str(model_dir), dtype=dtype, enforce_eager=True, block_size=block_size,
              kv_cache_memory_bytes=256 << 20, enable_prefix_caching=True, seed=0)
    prompts = [sample_text(prompt_words, seed=PROMPT_SEED + i) for i in range(num_prompts)]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    block_ids = _cached_full_blocks(llm, block_size)
    per_chunk = chunk_tokens // block_size
    groups = [block_ids[i:i + per_chunk] for i in range(0, len(block_ids) - per_chunk + 1,
                                                          per_chunk)]
    geometry, chunks = llm.collective_rpc(_gather_chunks, args=(groups, block_size))[0]
    torch.save({"geometry": geometry, "chunks": chunks, "blocks_per_chunk": per_chunk,
                "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
                "seconds": time.monotonic() - start}, out)


def _cached_full_blocks(llm, block_size: int) -> list[int]:
    """Ids of the blocks the prefix cache holds as complete blocks, in
    allocation order (a fresh engine hands blocks out in id order)."""
    pool = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_manager.block_pool
    return sorted(b.block_id for b in pool.blocks if b.block_hash is not None
                  and (b.block_hash_num_tokens or 0) % block_size == 0)


def _gather_chunks(worker, groups: list[list[int]], block_size: int):
    """(geometry fields, chunks) gathered in the worker from its KV tensors."""
    from kvmesh.kernels.layouts import detect_layout
    from kvmesh.kernels.paged import PagedKV

    config = worker.model_runner.model_config
    heads = config.get_num_kv_heads(worker.parallel_config)
    head_dim = config.get_head_size()
    layers = list(worker.model_runner.kv_caches)
    layout = detect_layout(layers, block_size=block_size, num_kv_heads=heads,
                           head_size=head_dim)
    paged = PagedKV(layers, layout)
    chunks = []
    for ids in groups:
        raw = torch.empty(paged.chunk_bytes(len(ids)), dtype=torch.uint8)
        paged.gather(ids, raw)
        chunks.append(raw)
    geometry = dict(layout=layout.name, dtype=layers[0].dtype, num_layers=len(layers),
                    block_size=block_size, num_kv_heads=heads, head_dim=head_dim,
                    max_blocks=max(len(ids) for ids in groups))
    return geometry, chunks
