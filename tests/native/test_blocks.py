"""gather_blocks / scatter_blocks: the C functions against their Python twins,
and every bad argument refused before a byte moves."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kvmesh import native

GATHERS = [native.py_gather_blocks] + ([native.gather_blocks] if native.NATIVE else [])
SCATTERS = [native.py_scatter_blocks] + ([native.scatter_blocks] if native.NATIVE else [])
I64 = np.int64


def reference_gather(kv, rows, row_bytes, ids, slab_blocks, first):
    """The slab, from numpy slicing of the documented layout."""
    out = np.zeros(len(rows) * slab_blocks * row_bytes, dtype=np.uint8)
    for r, (buf, offset, stride) in enumerate(rows):
        for p, block in enumerate(ids):
            at = (r * slab_blocks + first + p) * row_bytes
            out[at:at + row_bytes] = kv[buf][offset + block * stride:][:row_bytes]
    return out


@st.composite
def layouts(draw):
    """KV buffers, a row table that fits them, ids, and where they sit in the slab."""
    row_bytes = draw(st.sampled_from([1, 3, 64, 100, 4096]))
    num_blocks = draw(st.integers(1, 12))
    stride = row_bytes + draw(st.sampled_from([0, 0, 5, 64]))  # 0: blocks back to back
    num_bufs = draw(st.integers(1, 3))
    span = (num_blocks - 1) * stride + row_bytes
    sizes = [span + draw(st.integers(0, 3 * row_bytes)) for _ in range(num_bufs)]
    rows = [(b := draw(st.integers(0, num_bufs - 1)), draw(st.integers(0, sizes[b] - span)),
             stride) for _ in range(draw(st.integers(1, 5)))]
    ids = draw(st.lists(st.integers(0, num_blocks - 1), min_size=0, max_size=2 * num_blocks))
    first = draw(st.integers(0, 3))
    slab_blocks = first + len(ids) + draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    return row_bytes, sizes, rows, ids, first, slab_blocks, seed


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_gather_matches_the_layout_and_the_twin(case):
    row_bytes, sizes, rows, ids, first, slab_blocks, seed = case
    rng = np.random.default_rng(seed)
    kv = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    want = reference_gather(kv, rows, row_bytes, ids, slab_blocks, first)
    for gather in GATHERS:
        slab = np.zeros_like(want)
        gather(kv, np.array(rows, dtype=I64), row_bytes, ids, slab, first, slab_blocks)
        assert slab.tobytes() == want.tobytes(), gather


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_scatter_twins_write_the_same_bytes(case):
    row_bytes, sizes, rows, ids, first, slab_blocks, seed = case
    rng = np.random.default_rng(seed)
    kv = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    slab = rng.integers(0, 256, len(rows) * slab_blocks * row_bytes, dtype=np.uint8)
    results = []
    for scatter in SCATTERS:
        out = [b.copy() for b in kv]
        scatter(out, np.array(rows, dtype=I64), row_bytes, ids, slab, first, slab_blocks)
        results.append(b"".join(b.tobytes() for b in out))
    assert len(set(results)) == 1


@pytest.mark.parametrize("gather,scatter", list(zip(GATHERS, SCATTERS)))
def test_round_trip_of_a_large_chunk(gather, scatter):
    """Past the size where the C code lets go of the GIL; runs coalesce."""
    row_bytes, num_blocks, layers = 32 << 10, 16, 4
    kv = np.random.default_rng(1).integers(0, 256, layers * num_blocks * row_bytes, dtype=np.uint8)
    rows = np.array([(0, i * num_blocks * row_bytes, row_bytes) for i in range(layers)], I64)
    ids = [3, 4, 5, 6, 0, 15, 9, 10]
    slab = np.empty(layers * len(ids) * row_bytes, dtype=np.uint8)
    gather([kv], rows, row_bytes, ids, slab, 0, len(ids))
    assert slab.tobytes() == reference_gather([kv], rows, row_bytes, ids, len(ids), 0).tobytes()
    back = np.zeros_like(kv)
    scatter([back], rows, row_bytes, ids, slab, 0, len(ids))
    blocks = kv.reshape(layers, num_blocks, row_bytes)
    assert (back.reshape(layers, num_blocks, row_bytes)[:, ids] == blocks[:, ids]).all()


def good_args():
    kv = [np.arange(1000, dtype=np.uint8)]
    rows = np.array([(0, 0, 100), (0, 50, 100)], dtype=I64)
    return dict(kv=kv, rows=rows, row_bytes=10, ids=[9, 0, 2], slab=np.zeros(60, np.uint8),
                first=0, slab_blocks=3)


BIG = 1 << 62
BAD = [  # (change to the good arguments, exception)
    (dict(ids=[10]), ValueError),  # row 0: 10 * 100 + 10 > 1000
    (dict(ids=[-1]), ValueError),
    (dict(ids=[BIG]), ValueError),  # overflows offset + id * stride
    (dict(ids=[1 << 64]), OverflowError),
    (dict(ids=[1.0]), TypeError),
    (dict(ids=5), TypeError),
    (dict(row_bytes=0), ValueError),
    (dict(row_bytes=1 << 40), ValueError),
    (dict(rows=np.array([(1, 0, 100)], I64)), ValueError),  # no buffer 1
    (dict(rows=np.array([(0, -1, 100)], I64)), ValueError),
    (dict(rows=np.array([(0, 0, -100)], I64)), ValueError),
    (dict(rows=np.array([(0, 991, 0)], I64)), ValueError),
    (dict(rows=np.array([(0, BIG, BIG)], I64)), ValueError),
    (dict(rows=np.zeros(0, I64)), ValueError),
    (dict(rows=np.zeros(4, I64)), ValueError),  # not whole triples
    (dict(kv=[]), ValueError),
    (dict(kv=[b"x" * 1000, 7]), TypeError),
    (dict(slab=np.zeros(59, np.uint8)), ValueError),
    (dict(slab=np.zeros(61, np.uint8)), ValueError),
    (dict(first=1), ValueError),  # 3 ids from position 1 of a 3-block slab
    (dict(first=-1), ValueError),
    (dict(slab_blocks=2), ValueError),
    (dict(slab_blocks=BIG), ValueError),
]


@pytest.mark.parametrize("change,error", BAD)
@pytest.mark.parametrize("copy", GATHERS + SCATTERS)
def test_bad_arguments_raise_before_any_write(copy, change, error):
    args = {**good_args(), **change}
    kv_before = [bytes(b) for b in args["kv"] if not isinstance(b, int)]
    slab_before = bytes(args["slab"])
    with pytest.raises(error):
        copy(*args.values())
    assert [bytes(b) for b in args["kv"] if not isinstance(b, int)] == kv_before
    assert bytes(args["slab"]) == slab_before


def test_readonly_destinations_are_refused():
    for gather in GATHERS:
        args = good_args()
        args["slab"] = bytes(60)
        with pytest.raises(TypeError, match="writable"):
            gather(*args.values())
    for scatter in SCATTERS:
        args = good_args()
        args["kv"] = [bytes(1000)]
        with pytest.raises(TypeError, match="writable"):
            scatter(*args.values())
