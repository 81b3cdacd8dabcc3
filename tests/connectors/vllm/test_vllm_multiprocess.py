"""Real vLLM in its default multiprocess mode, worker in a process of its own.

The scheduler half runs in vLLM's engine-core process and the worker half in a
worker process (`distributed_executor_backend="mp"`), so the connector
metadata crosses a process boundary every step. The fakes are installed in
those processes by importing `mp_fake_connector` (the connector module path)
and share a store of files. Engine A computes and saves; engine B, with its
prefix cache off, loads and must give A's tokens and logprobs.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from multiprocess_env import ROOT, set_multiprocess_env

pytestmark = pytest.mark.vllm

MODEL_CACHE = ROOT / ".cache" / "models" / "tiny-seed0"
BLOCK, CHUNK, MAX_TOKENS = 32, 64, 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from kvmesh.models.local import build_model

    build_model(MODEL_CACHE, "tiny", seed=0)
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        set_multiprocess_env(mp)
        mp.setenv("KVMESH_ENABLE", "1")
        mp.setenv("KVMESH_CHUNK_TOKENS", str(CHUNK))
        mp.setenv("KVMESH_TEST_STORE_DIR", str(store))
        yield store


def run_engine(store: Path) -> list[dict]:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    rng = random.Random(1)
    prompt = [rng.randrange(3, 1000) for _ in range(200)]  # three full chunks
    t0 = time.monotonic()
    llm = LLM(model=str(MODEL_CACHE), dtype="float32", enforce_eager=True, block_size=BLOCK,
              kv_cache_memory_bytes=64 << 20, enable_prefix_caching=False, max_model_len=1024,
              seed=0, distributed_executor_backend="mp",
              kv_transfer_config=KVTransferConfig(kv_connector="KVMeshConnector",
                                                  kv_connector_module_path="mp_fake_connector",
                                                  kv_role="kv_both"))
    started = time.monotonic()
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1)
        out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    print(f"mp engine: start {started - t0:.1f}s, generate {time.monotonic() - started:.1f}s, "
          f"store {len(list(store.glob('*.chunk')))} chunks")
    comp = out.outputs[0]
    return {"tokens": list(comp.token_ids), "cached": out.num_cached_tokens,
            "logprobs": [lp[t].logprob for t, lp in zip(comp.token_ids, comp.logprobs)]}


def test_save_and_load_across_processes(env):
    a = run_engine(env)
    assert a["cached"] == 0 and len(list(env.glob("*.chunk"))) == 3
    b = run_engine(env)
    assert b["cached"] == 3 * CHUNK
    workers = {p.suffix for p in env.glob("worker.*")}
    schedulers = {p.suffix for p in env.glob("scheduler.*")}
    assert len(workers) == len(schedulers) == 2  # one of each per engine
    assert not workers & schedulers and f".{os.getpid()}" not in workers | schedulers
    assert b["tokens"] == a["tokens"]
    assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])) < 1e-4
