import json

import pytest
import torch

from kvmesh.models import SHAPES, build_model, flops_per_kv_byte
from kvmesh.models.local import MARKER, sample_text
from kvmesh.models.shapes import LLAMA3_8B

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("models") / "tiny", "tiny")


def test_tokenizer_round_trips_text(tiny_dir):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    for text in [sample_text(300, seed=5), "Ünïcödé ✓ tabs\tand\nnewlines  42 🚀", ""]:
        ids = tok(text).input_ids
        assert tok.decode(ids) == text
        assert all(0 <= i < SHAPES["tiny"].vocab_size for i in ids)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)


def test_transformers_loads_and_generates_deterministically(tiny_dir):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    config = model.config
    spec = SHAPES["tiny"]
    assert (config.num_hidden_layers, config.num_key_value_heads, config.hidden_size) == (
        spec.num_layers, spec.num_kv_heads, spec.hidden_size)
    assert config.max_position_embeddings >= 8192
    prompt = tok(sample_text(50, seed=3), return_tensors="pt").input_ids
    runs = [model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
            for _ in range(2)]
    assert runs[0].shape == (1, prompt.shape[1] + 8)
    assert torch.equal(runs[0], runs[1])


def test_same_seed_gives_identical_files(tiny_dir, tmp_path):
    again = build_model(tmp_path / "again", "tiny")
    for name in ["model.safetensors", "tokenizer.json", "config.json"]:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes()


def test_build_is_idempotent(tiny_dir):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()}
    assert build_model(tiny_dir, "tiny") == tiny_dir
    assert {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()} == before
    assert json.loads((tiny_dir / MARKER).read_text())["shape"]["name"] == "tiny"


def test_refuses_a_directory_it_did_not_write(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="not empty"):
        build_model(tiny_dir, "demo")
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        build_model(tmp_path, "tiny")
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_unknown_shape_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown model shape"):
        build_model(tmp_path / "x", "huge")


def test_flops_per_kv_byte_orders_shapes():
    tiny, demo, real = (flops_per_kv_byte(s) for s in ("tiny", "demo", LLAMA3_8B))
    assert 1_000 < tiny < 5_000
    assert demo > 10 * tiny
    assert 90_000 < real < 130_000  # ~10^5 for an 8B GQA model in bf16
    assert flops_per_kv_byte("demo", kv_dtype_bytes=2) == 2 * demo
