"""The drift benchmark's negative control on a real engine (~1-2 min).

One engine with KVMESH_CODEC_CPU=fp8-broken (registered in that engine's
process only): its saved chunks are reused, every one of them, and the
reuse must show up as drift against the same engine's computed round. If
it did not, the benchmark would not be measuring the loaded KV.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmesh.bench import codec_drift
from kvmesh.bench.drift_stats import drift
from kvmesh.models.local import build_model

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def test_the_broken_codec_is_loaded_and_shows_as_drift(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the checkout's .cache: models and vLLM's compile caches
    model_dir = build_model(codec_drift.CACHE_DIR / "models" / "tiny-seed0", "tiny", seed=0)
    batch = codec_drift.prompts(4, vocab=1024)
    broken = next(s for s in codec_drift.SETUPS if s.broken)
    run = codec_drift.run_setup(broken, "float32", str(model_dir), batch, 8, tmp_path)
    chunks = sum(len(p) // codec_drift.CHUNK_TOKENS for p in batch)
    assert run.chunks_saved == run.chunks_loaded == chunks
    assert [r["cached"] for r in run.reused] == [len(p) - 1 for p in batch]
    d = drift(run.reused, run.computed)
    # V at twice its value: measured here, no prompt kept all 8 tokens, |dlogprob| ~0.05-0.1.
    assert d.identical < d.prompts and d.max_dlogprob > 0.01
