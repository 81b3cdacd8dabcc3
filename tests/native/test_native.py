"""The C kernels of kvmesh.native against their Python twins (and xxhash)."""

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings, strategies as st

from kvmesh import native

ROOT = xxhash.xxh3_128_digest(b"namespace")
IMPLS = [native.py_chain_keys] + ([native.chain_keys] if native.NATIVE else [])


def test_the_c_kernels_are_built_here():
    # The wheel and `pip install -e .` compile them; a miss here means the
    # fallback (slow, same results) is silently in use.
    assert native.NATIVE and native.ISA in ("avx512", "avx2", "default")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from([4, 16, 64, 1024, 1040, 4096]))
def test_chain_keys_match_the_python_chain(data, chunk_bytes):
    n = len(data) // chunk_bytes
    expected, prev = [], ROOT
    for i in range(n):
        prev = xxhash.xxh3_128_digest(prev + data[i * chunk_bytes:(i + 1) * chunk_bytes])
        expected.append(prev)
    for chain in IMPLS:
        assert chain(ROOT, data, chunk_bytes, n) == expected


@pytest.mark.parametrize("chain", IMPLS)
@pytest.mark.parametrize("root,chunk_bytes,n", [(b"short", 4, 1), (ROOT, 0, 1), (ROOT, 4, 3),
                                                (ROOT, 4, -1)])
def test_chain_keys_refuse_bad_arguments(chain, root, chunk_bytes, n):
    with pytest.raises(ValueError):
        chain(root, b"12345678", chunk_bytes, n)


# key + chunk: 240 bytes is XXH3's last short input (the chunk is copied after
# the key); from 241 the C kernel reads the chunk in place, 64-byte stripe by
# stripe, with a scramble after each 1024 bytes: sizes at each of those edges.
@pytest.mark.parametrize("chunk_bytes", [224, 225, 1007, 1008, 1009, 1024, 1072, 1073, 2032, 2033,
                                         4096])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_chain_keys_match_xxhash_at_the_edges_of_xxh3_sizes(chunk_bytes, n):
    data = np.random.default_rng(chunk_bytes).integers(0, 256, n * chunk_bytes + 3, dtype=np.uint8)
    expected, prev = [], ROOT
    for i in range(n):
        prev = xxhash.xxh3_128_digest(prev + data[i * chunk_bytes:(i + 1) * chunk_bytes].tobytes())
        expected.append(prev)
    for chain in IMPLS:
        assert chain(ROOT, data, chunk_bytes, n) == expected


# (C copy, its Python twin, what a copy of `src` returns)
COPIES = [
    (native.copy_checksum, native.py_copy_checksum, lambda src: xxhash.xxh3_64_intdigest(src)),
    (native.copy_stream, native.py_copy_stream, lambda src: None),
]


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 100_003,
                                  (2 << 20) + 13])
@pytest.mark.parametrize("dst_offset", [0, 1, 33])
@pytest.mark.parametrize("c_copy, py_copy, returns", COPIES)
def test_copies_copy_exactly_and_nothing_else(size, dst_offset, c_copy, py_copy, returns):
    src = np.random.default_rng(size).integers(0, 256, size + 5, dtype=np.uint8)[5:]  # unaligned
    want = returns(src.tobytes())
    for copy in (c_copy, py_copy):
        dst = np.full(size + 64, 0xAB, dtype=np.uint8)
        assert copy(dst[dst_offset:], src) == want
        assert dst[dst_offset:dst_offset + size].tobytes() == src.tobytes()
        assert (dst[:dst_offset] == 0xAB).all() and (dst[dst_offset + size:] == 0xAB).all()


@pytest.mark.parametrize("c_copy, py_copy, returns", COPIES)
def test_copies_refuse_a_small_or_readonly_destination(c_copy, py_copy, returns):
    for copy in (c_copy, py_copy):
        with pytest.raises(ValueError):
            copy(bytearray(3), b"four")
        with pytest.raises(TypeError):
            copy(b"readonly", b"four")


VALUES = [0, 1, -1, 7, -7, (1 << 30) - 1, 1 << 30, -(1 << 30), (1 << 31) - 1, -(1 << 31),
          True, False, np.int64(5), np.int32(-9)]


def test_pack_int32_matches_numpy_little_endian():
    want = np.array([int(v) for v in VALUES], dtype="<i4").tobytes()
    assert native.pack_int32(VALUES) == native.py_pack_int32(VALUES) == want
    assert native.pack_int32(tuple(VALUES)) == want
    assert native.pack_int32([]) == native.py_pack_int32([]) == b""


@pytest.mark.parametrize("bad,error", [([1 << 31], OverflowError), ([-(1 << 31) - 1], OverflowError),
                                       ([1 << 70], OverflowError), ([1.5], TypeError),
                                       ([[1, 2]], TypeError), (["7"], TypeError)])
def test_pack_int32_refuses_what_is_not_an_int32(bad, error):
    for pack in (native.pack_int32, native.py_pack_int32):
        with pytest.raises(error):
            pack([1, *bad])


@given(st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=300))
def test_pack_int32_twins_agree(values):
    assert native.pack_int32(values) == native.py_pack_int32(values)
