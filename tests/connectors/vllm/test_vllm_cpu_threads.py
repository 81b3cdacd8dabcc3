"""Real vLLM, multiprocess (its default on CPU), bf16: kvmesh configured changes nothing.

Any other KV connector makes vLLM's CPU backend bind its worker to a different
number of cores (see `kvmesh.connectors.vllm.cpu_threads`); bf16 logprobs then
differ from a run without a connector. With kvmesh's connector configured, the
worker must run as many OpenMP threads as without one and give bit-identical
tokens and logprobs. kvmesh is left disabled: the question is what configuring
it does to the engine, not what reuse does.
"""

from __future__ import annotations

import random
import time

import pytest

from multiprocess_env import ROOT, set_multiprocess_env

pytestmark = pytest.mark.vllm

MODEL_CACHE = ROOT / ".cache" / "models" / "tiny-seed0"
# Long enough that the split of bf16 reductions over threads shows in the
# logprobs (one of these differs between 1 and 2 threads on a 2-core machine).
PROMPT_LENGTHS = (2048, 2048, 2048)
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def env():
    from kvmesh.models.local import build_model

    build_model(MODEL_CACHE, "tiny", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        set_multiprocess_env(mp)
        mp.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # to ask the worker its threads
        mp.setenv("KVMESH_ENABLE", "0")
        mp.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
        mp.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
        yield


def worker_threads(worker) -> int:
    import torch

    return torch.get_num_threads()


def run_engine(with_kvmesh: bool) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    rng = random.Random(1)
    prompts = [[rng.randrange(3, 1000) for _ in range(n)] for n in PROMPT_LENGTHS]
    transfer = KVTransferConfig(kv_connector="KVMeshConnector", kv_role="kv_both",
                                kv_connector_module_path="kvmesh.connectors.vllm")
    t0 = time.monotonic()
    llm = LLM(model=str(MODEL_CACHE), dtype="bfloat16", kv_cache_memory_bytes=256 << 20,
              max_model_len=max(PROMPT_LENGTHS) + 64, seed=0,
              kv_transfer_config=transfer if with_kvmesh else None)
    try:
        threads = llm.collective_rpc(worker_threads)
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    print(f"engine kvmesh={with_kvmesh}: {time.monotonic() - t0:.1f}s, worker threads {threads}")
    comps = [o.outputs[0] for o in outs]
    return {"threads": threads, "tokens": [list(c.token_ids) for c in comps],
            "logprobs": [[lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)] for c in comps]}


def test_kvmesh_configured_gives_the_engine_without_a_connector(env):
    without = run_engine(with_kvmesh=False)
    configured = run_engine(with_kvmesh=True)
    assert configured["threads"] == without["threads"]
    assert configured["tokens"] == without["tokens"]
    assert configured["logprobs"] == without["logprobs"]  # bit-identical, not close
