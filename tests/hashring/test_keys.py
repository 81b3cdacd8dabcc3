import subprocess
import sys

import numpy as np
import pytest
import torch
import xxhash
from dataclasses import asdict
from hypothesis import given, strategies as st

from kvmesh import native
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace

NS = KeyNamespace("llama-tiny", "float32", 4, 2, 64, 16, "vllm-cpu")


def test_chain_matches_the_contract():
    tokens = list(range(40))
    keys = ChunkHasher(NS).keys(tokens)
    k0 = xxhash.xxh3_128_digest(NS.encode())
    k1 = xxhash.xxh3_128_digest(k0 + np.arange(16, dtype="<i4").tobytes())
    k2 = xxhash.xxh3_128_digest(k1 + np.arange(16, 32, dtype="<i4").tobytes())
    assert keys == [k1, k2]  # the partial third chunk gets no key


def test_same_keys_from_list_numpy_and_torch():
    tokens = list(range(1000, 1064))
    hasher = ChunkHasher(NS)
    assert hasher.keys(tokens) == hasher.keys(np.array(tokens, dtype=np.int64)) \
        == hasher.keys(torch.tensor(tokens))


def test_deterministic_across_processes():
    code = ("from kvmesh.hashring.keys import ChunkHasher, KeyNamespace;"
            "ns = KeyNamespace('llama-tiny', 'float32', 4, 2, 64, 16, 'vllm-cpu');"
            "print(ChunkHasher(ns).keys(list(range(64)))[-1].hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "123"}, check=True).stdout.strip()
    assert out == ChunkHasher(NS).keys(list(range(64)))[-1].hex()


@pytest.mark.parametrize("field,value", [
    ("model", "other"), ("dtype", "bfloat16"), ("num_layers", 5), ("num_kv_heads", 4),
    ("head_dim", 128), ("chunk_tokens", 32), ("kv_layout", "flash"), ("tp_rank", 1),
    ("tp_size", 2), ("format_version", 2), ("cache_salt", "tenant-b"), ("lossy_codec", "fp8"),
])
def test_every_namespace_field_separates_key_spaces(field, value):
    other = KeyNamespace(**{**asdict(NS), field: value})
    tokens = list(range(64))
    assert set(ChunkHasher(NS).keys(tokens)).isdisjoint(ChunkHasher(other).keys(tokens))


def test_exact_namespaces_keep_the_keys_they_had_before_lossy_codec():
    """Digests and keys computed before `lossy_codec` existed (same fields, commit bd1e272)."""
    salted = KeyNamespace("llama-tiny", "float32", 4, 2, 64, 16, "vllm-cpu/block32", tp_rank=1,
                          tp_size=2, cache_salt="t")
    assert salted.digest().hex() == "4c1fe39379e05b0ed1049af7ca287a78"
    assert ChunkHasher(salted).keys(list(range(32)))[-1].hex() == "92ff2ec80b2aed83e666137b3f55243c"
    assert NS.digest().hex() == "ee7492fa446e1178d46b0ff07b3392a4"
    assert ChunkHasher(NS).keys(list(range(32)))[-1].hex() == "5eb0150ac4c0eeecee516971ffb5bfce"


def test_lossy_namespaces_differ_by_codec_and_keep_it_through_a_salt():
    fp8, int8 = (KeyNamespace(**{**asdict(NS), "lossy_codec": c}) for c in ("fp8", "int8"))
    assert len({NS.digest(), fp8.digest(), int8.digest()}) == 3
    assert fp8.with_salt("tenant").lossy_codec == "fp8"
    assert fp8.with_salt("tenant").digest() != NS.with_salt("tenant").digest()


def test_keyed_hash_differs_by_secret():
    tokens = list(range(32))
    plain = ChunkHasher(NS).keys(tokens)
    a = ChunkHasher(NS, secret=b"a").keys(tokens)
    b = ChunkHasher(NS, secret=b"b").keys(tokens)
    assert len({plain[0], a[0], b[0]}) == 3
    assert a == ChunkHasher(NS, secret=b"a").keys(tokens)


@pytest.mark.parametrize("bad", [[[1, 2]], [1.5, 2.0], [1 << 40]])
def test_bad_tokens_are_refused(bad):
    with pytest.raises(ValueError):
        ChunkHasher(NS).keys(bad)


@given(st.lists(st.integers(0, (1 << 31) - 1), max_size=200), st.integers(0, 12))
def test_prefix_property(tokens, cut):
    """Keys of a prefix are a prefix of the keys: the chain never looks ahead."""
    hasher = ChunkHasher(NS)
    full = hasher.keys(tokens)
    assert hasher.keys(tokens[: cut * 16]) == full[:cut]
    assert hasher.keys(tokens, max_chunks=cut) == full[:cut]


@pytest.mark.parametrize("chunk_tokens", [16, 256])  # the C kernel's copied and in-place paths
@pytest.mark.parametrize("n_chunks", [0, 1, 7])
def test_keys_equal_the_python_twin_from_every_input_form(chunk_tokens, n_chunks):
    hasher = ChunkHasher(KeyNamespace(**{**asdict(NS), "chunk_tokens": chunk_tokens}))
    tokens = np.random.default_rng(n_chunks).integers(0, 1 << 31, n_chunks * chunk_tokens + 5,
                                                      dtype=np.int32)
    want = native.py_chain_keys(hasher.root, tokens.tobytes(), chunk_tokens * 4, n_chunks)
    assert len(want) == n_chunks
    strided = np.repeat(tokens, 2)[::2]  # int32 but not contiguous: must not be read in place
    for form in (tokens, tokens.tolist(), tokens.astype(">i4"), strided, torch.from_numpy(tokens)):
        assert hasher.keys(form) == want


@pytest.mark.parametrize("length, tail", [(16 * 3 + 11, 8), (16 * 3 + 7, 4), (16 * 3 + 3, 0),
                                          (16 * 3, 0), (12, 12)])
def test_the_tail_key_chains_the_rest_cut_to_whole_blocks(length, tail):
    h = ChunkHasher(NS)  # chunks of 16 tokens; blocks of 4 here
    tokens = list(range(100, 100 + length))
    full = h.keys(tokens)
    keys = h.keys(tokens, tail_multiple=4)
    assert keys[:len(full)] == full and len(keys) == len(full) + (tail > 0)
    if tail:
        start = len(full) * 16
        rest = np.array(tokens[start:start + tail], dtype="<i4").tobytes()
        assert keys[-1] == xxhash.xxh3_128_digest((full[-1] if full else h.root) + rest)


def test_no_tail_when_the_chunks_are_capped_or_no_multiple_is_given():
    h = ChunkHasher(NS)
    tokens = list(range(16 * 3 + 11))
    assert h.keys(tokens, max_chunks=2, tail_multiple=4) == h.keys(tokens)[:2]
    assert h.keys(tokens, tail_multiple=0) == h.keys(tokens)
