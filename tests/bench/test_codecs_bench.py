"""`kvmesh bench codecs --synthetic`: every section's table, with figures that must hold."""

from __future__ import annotations

import json

import pytest
import torch

from kvmesh.bench import codecs as bench
from kvmesh.bench import report
from kvmesh.bench.codec_measure import chunks_per_gib, working_set
from kvmesh.codecs import ChunkGeometry


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    return tmp_path


def _rows(results_dir, name):
    saved = json.loads((results_dir / f"{name}.json").read_text())
    return [dict(zip(saved["columns"], row)) for row in saved["rows"]]


def test_synthetic_run_writes_every_section(results_dir, capsys):
    assert bench.main(["--synthetic", "--dtypes", "bfloat16", "--chunks", "2", "--reps", "1",
                       "--working-mib", "2"]) == 0
    speed = {(r["codec"], r["torch threads"]): r for r in _rows(results_dir, "codecs")}
    assert {codec for codec, _ in speed} == {"fp8", "int8", "zstd"}
    assert speed["fp8", "1"]["ratio"] == pytest.approx(2 / (1 + 2 / 64), rel=1e-3)
    assert speed["zstd", "1"]["ratio"] > 1.1  # normal bf16 values: the exponent plane shrinks
    assert all(r["decode GB/s"] > 0 and r["memcpy GB/s"] > 0 for r in speed.values())
    errors = {r["codec"]: r for r in _rows(results_dir, "codecs_error")}
    assert errors["zstd"]["max abs err"] == 0
    assert 0 < errors["int8"]["max abs err"] < errors["fp8"]["max abs err"]
    assert errors["fp8"]["max err / max |x|"] < 1 / 16
    pool = {r["codec"]: r for r in _rows(results_dir, "codecs_pool")}
    assert pool["none (exact)"]["chunks per GiB"] == 2048  # 512 KiB chunks
    assert pool["fp8"]["vs exact"] > 1.9 and pool["zstd"]["chunks per GiB"].startswith("not on CPU")
    assert "== codecs ==" in capsys.readouterr().out


def test_sections_are_functions_of_the_run():
    assert [s[0] for s in bench.SECTIONS] == ["speed", "pool", "error", "drift", "remote"]


def test_chunks_per_gib_uses_the_codec_slot():
    g = ChunkGeometry(layout="vllm-cpu", dtype=torch.float32, num_layers=4, block_size=32,
                      num_kv_heads=2, head_dim=64, max_blocks=8)
    assert chunks_per_gib("none", g, 8) == 1024  # 1 MiB chunks
    assert chunks_per_gib("fp8", g, 8) == 3971
    assert chunks_per_gib("zstd", g, 8) is None


def test_working_set_repeats_chunks_as_copies():
    chunks = [torch.zeros(100, dtype=torch.uint8), torch.ones(100, dtype=torch.uint8)]
    out = working_set(chunks, 450)
    assert len(out) == 5 and out[0] is chunks[0] and out[2] is not chunks[0]
    assert torch.equal(out[3], chunks[1])
