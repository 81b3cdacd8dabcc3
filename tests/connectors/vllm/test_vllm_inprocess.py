"""Real vLLM engines, one process: KV saved by engine A is loaded by engine B.

Engines run one after another in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
and share one dict-backed fake peer installed through `peer_factory`. Engine B
runs with vLLM's prefix cache off, so every reused token must come through the
connector. Checks: B's greedy tokens and logprobs equal a run without the
connector; B reports the loaded tokens as cached; corrupting the stored chunks
changes B's output (the loaded KV is really used).
"""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path

import pytest

from kvmesh.hashring.keys import ChunkHasher

pytestmark = pytest.mark.vllm

BLOCK = 32
CHUNK = 64
MAX_TOKENS = 8
# 300 tokens: four full chunks and a 44-token rest, whose one whole block is
# the tail chunk; 256: the whole prompt is chunks.
PROMPT_LENGTHS = (300, 256)


def chunks_of(n: int) -> int:
    """Chunks a prompt of n tokens is cached as: the full ones and its tail, if any."""
    return n // CHUNK + (n % CHUNK >= BLOCK)


def covered(n: int) -> int:
    """Tokens of a prompt of n tokens that its chunks cover."""
    return n // CHUNK * CHUNK + n % CHUNK // BLOCK * BLOCK
MODEL_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "models" / "tiny-seed0"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from kvmesh.models.local import build_model

    return build_model(MODEL_CACHE, "tiny", seed=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_HOST_IP", "127.0.0.1")
        mp.setenv("VLLM_CACHE_ROOT", str(MODEL_CACHE.parent.parent / "vllm"))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(MODEL_CACHE.parent.parent / "inductor"))
        mp.setenv("KVMESH_CHUNK_TOKENS", str(CHUNK))
        mp.setenv("KVMESH_RUN_DIR", str(root))
        yield mp


class Mesh:
    """One store shared by every engine of this module, as a mesh would be."""

    def __init__(self):
        self.chunks: dict = {}
        self.fail_keys: set = set()
        self.peers: list = []  # one per engine with the connector, in order
        self.lag_s = 0.0  # lookups miss the last held chunk for this long after the first
        self.lookups: list[float] = []

    def open_peer(self, config, namespace, slot_bytes, engine_id):
        from vllm_fakes import FakePeer

        self.peers.append(FakePeer(slot_bytes, chunks=self.chunks, fail_keys=self.fail_keys,
                                   namespace=namespace))
        return self.peers[-1]

    def open_lookup_client(self, config, engine_id, namespace):
        return self

    def lookup_prefix(self, keys):
        """Held prefix length; during the lag, one chunk short (its save is "in flight")."""
        self.lookups.append(time.monotonic())
        held = 0
        while held < len(keys) and bytes(keys[held]) in self.chunks:
            held += 1
        lagging = time.monotonic() < self.lookups[0] + self.lag_s
        return max(0, held - 1) if lagging else held


@pytest.fixture(scope="module")
def mesh():
    from kvmesh.connectors.vllm import peer_factory

    m = Mesh()
    peer_factory.set_factories(open_peer=m.open_peer, open_lookup_client=m.open_lookup_client)
    yield m
    peer_factory.set_factories()


def prompts():
    rng = random.Random(0)
    return [[rng.randrange(3, 1000) for _ in range(n)] for n in PROMPT_LENGTHS]


def run_engine(model_dir: Path, env, role: str | None = "kv_both", prefix_caching: bool = False,
               batches: list[list[list[int]]] | None = None,
               transfer_params: list[dict] | None = None,
               profile: dict | None = None) -> list[dict]:
    """Start an engine, generate each batch in turn (default: `prompts()`), shut it down.

    `role` None runs without the connector. Returns the outputs of the last batch;
    `profile`, if given, gets the engine's `engine_profile.profile` before shutdown.
    """
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    env.setenv("KVMESH_ENABLE", "0" if role is None else "1")
    transfer = None if role is None else KVTransferConfig(
        kv_connector="KVMeshConnector", kv_connector_module_path="kvmesh.connectors.vllm",
        kv_role=role)
    t0 = time.monotonic()
    llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True, block_size=BLOCK,
              kv_cache_memory_bytes=64 << 20, enable_prefix_caching=prefix_caching,
              max_model_len=1024, seed=0, kv_transfer_config=transfer)
    started = time.monotonic()
    try:
        for batch in batches or [prompts()]:
            params = [SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1,
                                     extra_args={"kv_transfer_params": kv} if kv else None)
                      for kv in transfer_params or [None] * len(batch)]
            outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        if profile is not None:
            from kvmesh.demo.engine_profile import profile as engine_profile

            profile.update(engine_profile(llm))
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    print(f"engine role={role}: start {started - t0:.1f}s, "
          f"generate {time.monotonic() - started:.1f}s")
    return [summarize(o) for o in outs]


def summarize(out):
    comp = out.outputs[0]
    logprobs = [lp[tok].logprob for tok, lp in zip(comp.token_ids, comp.logprobs)]
    return {"tokens": list(comp.token_ids), "logprobs": logprobs, "cached": out.num_cached_tokens,
            "params": out.kv_transfer_params}


@pytest.fixture(scope="module")
def runs(model_dir, env, mesh):
    out = {"reference": run_engine(model_dir, env, role=None)}
    out["saved_profile"] = {}
    out["saved"] = run_engine(model_dir, env, profile=out["saved_profile"])  # A: computes, saves
    out["stored_after_a"] = len(mesh.chunks)
    out["loaded"] = run_engine(model_dir, env)  # engine B: loads
    # Chunk 2 of the first prompt cannot be loaded: chunks 2 and 3 are recomputed.
    mesh.fail_keys.add(bytes(ChunkHasher(mesh.peers[-1].namespace).keys(prompts()[0])[2]))
    out["partial"] = run_engine(model_dir, env)
    mesh.fail_keys.clear()
    # vLLM's own prefix cache holds 96 tokens (1.5 chunks) of the first prompt,
    # the mesh the rest: chunk 1 is loaded into its second block only.
    first = prompts()[0]
    out["mixed"] = run_engine(model_dir, env, prefix_caching=True,
                              batches=[[first[:96] + [7] * 50], [first]])
    # Prefill/decode: the producer announces its chunks; the consumer waits for
    # the last one, which the lookups report late.
    out["prefill"] = run_engine(model_dir, env, role="kv_producer",
                                transfer_params=[{"kvmesh_role": "prefill"}] * 2)
    mesh.lag_s, mesh.lookups = 1.0, []
    out["decode"] = run_engine(model_dir, env, role="kv_consumer",
                               transfer_params=[r["params"] for r in out["prefill"]])
    out["decode_lookups"], mesh.lag_s = list(mesh.lookups), 0.0
    mesh.peers[-1].corrupt()  # the store every engine shares
    out["corrupted"] = run_engine(model_dir, env)
    for name in ("loaded", "partial", "mixed", "decode", "corrupted"):
        # (cached tokens, max |logprob - reference|, same tokens as the reference)
        print(name, [(r["cached"], round(max_logprob_diff(r, ref), 6), r["tokens"] == ref["tokens"])
                     for r, ref in zip(out[name], out["reference"])])
    out["peers"] = mesh.peers  # A, B, B failing, mixed, prefill, decode, corrupted
    return out


def max_logprob_diff(a, b):
    return max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"]))


def test_engine_a_saves_every_prompt_chunk_and_tail(runs):
    assert runs["stored_after_a"] == sum(chunks_of(n) for n in PROMPT_LENGTHS) == 9
    assert all(r["cached"] == 0 for r in runs["saved"])


def test_engine_b_loads_the_prefix_from_the_connector(runs):
    # 300 tokens: four chunks and the tail's block (288 tokens) are loaded. The
    # 256-token prompt loads all four chunks but vLLM recomputes its last token.
    assert [r["cached"] for r in runs["loaded"]] == [covered(300), 255] == [288, 255]
    b_peer = runs["peers"][1]
    assert b_peer.chunks_loaded == sum(chunks_of(n) for n in PROMPT_LENGTHS)
    assert b_peer.pinned == 0


def test_engine_b_matches_a_run_without_the_connector(runs):
    for ref, got in zip(runs["reference"], runs["loaded"]):
        assert got["tokens"] == ref["tokens"]
        assert max_logprob_diff(got, ref) < 1e-4, (got["logprobs"], ref["logprobs"])
    for ref, got in zip(runs["reference"], runs["saved"]):
        assert got["tokens"] == ref["tokens"] and max_logprob_diff(got, ref) < 1e-4


def test_a_chunk_that_fails_to_load_is_recomputed(runs):
    b_peer = runs["peers"][2]
    assert b_peer.chunks_loaded == sum(chunks_of(n) for n in PROMPT_LENGTHS) - 1
    for ref, got in zip(runs["reference"], runs["partial"]):
        assert got["tokens"] == ref["tokens"]
        assert max_logprob_diff(got, ref) < 1e-4


def test_a_load_on_top_of_vllms_own_prefix_cache(runs):
    (got,) = runs["mixed"]
    assert got["cached"] == 288  # 96 local + 192 loaded
    # Warm-up loaded chunk 0; then chunk 1 (its second block only), 2, 3 and the tail.
    assert runs["peers"][3].chunks_loaded == 1 + 4
    assert got["tokens"] == runs["reference"][0]["tokens"]
    assert max_logprob_diff(got, runs["reference"][0]) < 1e-4


def test_corrupted_chunks_change_engine_b_output(runs):
    for ref, got in zip(runs["reference"], runs["corrupted"]):
        assert got["cached"] > 0
        assert got["tokens"] != ref["tokens"] or max_logprob_diff(got, ref) > 1e-2


def test_prefill_decode_hand_off(runs):
    assert [r["params"] for r in runs["prefill"]] == [{"kvmesh_chunks": 5}, {"kvmesh_chunks": 4}]
    assert [r["cached"] for r in runs["decode"]] == [288, 255]  # waited for the last chunk
    lookups = runs["decode_lookups"]
    assert len(lookups) > 2 and lookups[-1] - lookups[0] >= 1.0
    for ref, got in zip(runs["reference"], runs["decode"]):
        assert got["tokens"] == ref["tokens"] and max_logprob_diff(got, ref) < 1e-4


def test_engine_profile_counts_the_connectors_step_hooks(runs):
    """Both halves' hook timers are read from the engine, and they count what ran."""
    hooks = runs["saved_profile"]["hooks"]
    calls = {hook: h["calls"] for hook, h in hooks.items()}
    assert calls["request_finished"] == len(PROMPT_LENGTHS)
    assert calls["get_num_new_matched_tokens"] >= len(PROMPT_LENGTHS)
    steps = calls["build_connector_meta"]
    assert steps >= MAX_TOKENS and calls["wait_for_save"] == steps
    # One save_kv_layer and one wait_for_layer_load per layer (tiny: 4) per forward.
    assert calls["save_kv_layer"] == calls["wait_for_layer_load"] == 4 * steps
    assert all(h["ns"] > 0 for h in hooks.values())
    threads = runs["saved_profile"]["threads"]
    assert threads["kvmesh-save.run"] > 0 and threads["main.run"] > 0
    assert threads["kvmesh-save.run"] + threads["main.run"] <= threads["process"]
