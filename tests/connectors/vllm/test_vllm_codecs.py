"""Real vLLM engines with KVMESH_CODEC_CPU=fp8: lossy KV, kept apart from exact KV.

Three engines of the tiny float32 model, one after another (each start costs
~30 s here):

- L (fp8): computes the prompts and saves them as fp8 envelopes, then runs
  them again, its prefix cache off, so every cached token is its own saved
  KV, decoded. It stays up as a holder.
- E (exact, no codec setting) joins L's seeds and runs the same prompts: its
  namespace is exact, so it never finds, and never loads, L's lossy chunks.
- L2 (fp8) joins L: round 0 reads L's envelopes in place out of L's shared
  pool and decodes them; from round 1 on, a test build flips the first byte
  of every envelope it is handed (the magic), which must be a miss: the
  prompts are recomputed and give exactly the exact engine's output.
"""

from __future__ import annotations

import pytest

from test_vllm_mesh import (CACHED, CHUNKS, EngineProc, base_env,  # noqa: F401
                            free_port, max_logprob_diff, model_dir, prompts, run_once)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

# engine_script's generation length; every comparison below is over these tokens.
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def codec_runs(model_dir, base_env):  # noqa: F811 - fixtures from test_vllm_mesh
    spec = {"model_dir": model_dir, "prompts": prompts(), "kvmesh": True}
    lossy_env = {**base_env, "KVMESH_CODEC_CPU": "fp8"}
    port = free_port()
    holder = EngineProc({**spec, "engine_id": "lossy-l", "rounds": 2, "linger": True},
                        {**lossy_env, "KVMESH_PORT": str(port)})
    out = {}
    try:
        out["lossy"] = holder.result()
        seeds = {"KVMESH_SEEDS": f"127.0.0.1:{port}"}
        out["exact"] = run_once({**spec, "engine_id": "exact-e"}, {**base_env, **seeds})
        out["lossy_peer"] = run_once({**spec, "engine_id": "lossy-l2", "rounds": 2,
                                      "corrupt": "envelope", "corrupt_from_round": 1},
                                     {**lossy_env, **seeds})
    finally:
        holder.stop()
    exact = out["lossy"]["rounds"][0]  # L's first round: computed, nothing to load
    for name, results in (("L round 1 (own fp8 KV)", out["lossy"]["rounds"][1]),
                          ("L2 round 0 (L's fp8 KV, in place)", out["lossy_peer"]["rounds"][0]),
                          ("L2 round 1 (corrupt envelopes)", out["lossy_peer"]["rounds"][1]),
                          ("E (exact engine)", out["exact"]["results"])):
        print(name, "agreement with the exact run:",
              [f"{agreement(got, want)}/{MAX_TOKENS} tokens, first {first_divergence(got, want)}"
               f" identical, max |dlogprob| over those {prefix_logprob_diff(got, want):.4f}"
               for got, want in zip(results, exact)])
    return out


def agreement(got: dict, want: dict) -> int:
    """Positions at which the two greedy outputs hold the same token."""
    return sum(a == b for a, b in zip(got["tokens"], want["tokens"]))


def first_divergence(got: dict, want: dict) -> int:
    """How many leading tokens the outputs share (after a divergence each
    continues its own text, so later positions are not comparable)."""
    n = 0
    while n < min(len(got["tokens"]), len(want["tokens"])) and got["tokens"][n] == want["tokens"][n]:
        n += 1
    return n


def prefix_logprob_diff(got: dict, want: dict) -> float:
    """Largest |logprob difference| over the shared leading tokens, including
    the first diverging position (both logprobs are of each run's own token)."""
    n = min(first_divergence(got, want) + 1, len(got["logprobs"]), len(want["logprobs"]))
    return max(abs(a - b) for a, b in zip(got["logprobs"][:n], want["logprobs"][:n]))


def test_an_fp8_engine_reuses_its_own_saved_kv_close_to_the_exact_run(codec_runs):
    computed, reused = codec_runs["lossy"]["rounds"]
    peer = codec_runs["lossy"]["peer"]
    assert [r["cached"] for r in computed] == [0, 0]
    assert peer["chunks_saved"] == CHUNKS
    assert [r["cached"] for r in reused] == CACHED  # prefix cache off: all from kvmesh
    assert peer["local_hits"] == CHUNKS and peer["load_failures"] == 0
    for got, want in zip(reused, computed):
        # e4m3 keeps 3 mantissa bits: each K/V value is off by at most 1/16 of
        # itself (half a step), ~1/50 on average, and attention averages such
        # errors over the prompt. Measured here: all 8 greedy tokens of both
        # prompts the exact run's, logprobs within 0.0015. The bounds (half
        # the tokens shared, 30x that logprob difference) leave room for a
        # close call between two tokens late in a generation (the texts then
        # part, so only the shared leading tokens are compared). That the
        # decoded bytes are exactly the codec's round trip is checked in
        # test_worker_codecs; this checks the engine runs well on them.
        assert first_divergence(got, want) >= MAX_TOKENS // 2
        assert prefix_logprob_diff(got, want) < 0.05
        assert got["logprobs"] != want["logprobs"], "lossy KV cannot be bit-identical"


def test_the_fp8_pool_holds_about_4x_the_chunks_of_an_exact_one(codec_runs):
    lossy, exact = codec_runs["lossy"]["store"], codec_runs["exact"]["store"]
    assert lossy["cpu_bytes_cap"] // lossy["cpu_slots_total"] < exact["cpu_bytes_cap"]
    ratio = lossy["cpu_slots_total"] / exact["cpu_slots_total"]
    print(f"CPU slots in 64 MiB: fp8 {lossy['cpu_slots_total']}, exact "
          f"{exact['cpu_slots_total']}: {ratio:.2f}x")
    # float32 KV, head_dim 64: 4 bytes a value against 1 plus a bf16 scale per 64 values.
    assert 3.7 < ratio < 4.0
    assert lossy["chunks_cpu"] == exact["chunks_cpu"] == CHUNKS


def test_an_exact_engine_never_loads_a_lossy_chunk(codec_runs):
    exact = codec_runs["exact"]
    peer, (rank,) = exact["peer"], exact["ranks"]
    assert [r["cached"] for r in exact["results"]] == [0, 0]
    assert peer["remote_hits"] == peer["local_hits"] == peer["load_failures"] == 0
    assert peer["lookup_hit_chunks"] == 0 and peer["chunks_saved"] == CHUNKS
    # Its namespace differs from L's, so it is not even in L's mesh.
    assert rank["members"] == [rank["peer_id"]]
    for got, want in zip(exact["results"], codec_runs["lossy"]["rounds"][0]):
        assert got["tokens"] == want["tokens"] and max_logprob_diff(got, want) < 1e-4


def test_a_second_fp8_engine_decodes_the_holders_envelopes_in_place(codec_runs):
    loaded = codec_runs["lossy_peer"]["rounds"][0]
    peer = codec_runs["lossy_peer"]["peer"]
    assert [r["cached"] for r in loaded] == CACHED
    assert peer["read_in_place"] == peer["remote_hits"] == CHUNKS  # round 0's: out of L's pool
    for got, want in zip(loaded, codec_runs["lossy"]["rounds"][1]):
        # The same envelopes decode to the same KV as L's own reuse.
        assert got["tokens"] == want["tokens"] and max_logprob_diff(got, want) < 1e-4


def test_corrupt_envelopes_are_misses_and_the_output_is_the_exact_recompute(codec_runs):
    recomputed = codec_runs["lossy_peer"]["rounds"][1]
    peer = codec_runs["lossy_peer"]["peer"]
    assert peer["load_failures"] >= CHUNKS  # round 1: every envelope refused
    assert peer["remote_hits"] == CHUNKS  # ... and none of them counted as a hit
    for got, want in zip(recomputed, codec_runs["lossy"]["rounds"][0]):
        assert got["tokens"] == want["tokens"] and max_logprob_diff(got, want) < 1e-4
