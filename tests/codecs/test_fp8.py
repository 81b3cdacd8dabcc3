import numpy as np
import pytest
import torch

from kvmesh.codecs import decode_chunk, encode_chunk, get_codec, kv_views
from kvmesh.codecs.reference import fp8_roundtrip

from tests.codecs.kv import DTYPES, LAYOUT_NAMES, geometry, paged_chunk

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _roundtrip(g, ids, scale=1.0, seed=0):
    raw, k, v = paged_chunk(g, ids, scale=scale, seed=seed)
    env = encode_chunk(raw, "fp8", g, len(ids))
    assert env is not None and env.numel() % 2 == 1
    out = decode_chunk(env, g, accept_lossy="fp8")
    return env, raw, out, k, v


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids", [[0, 1, 2], [5]])  # full and partial chunks
def test_fp8_matches_the_numpy_twin(layout, dtype, ids):
    g = geometry(layout, dtype)
    _, _, out, k, v = _roundtrip(g, ids)
    for got, x in zip(kv_views(out, g, len(ids)), (k, v)):
        want = fp8_roundtrip(x.float().numpy(), DTYPE_NAMES[dtype])
        np.testing.assert_array_equal(got.float().numpy(), want)


@pytest.mark.parametrize("scale", ["tiny", 1e-3, 1.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_error_is_bounded_by_each_rows_amax(scale, dtype):
    if scale == "tiny":  # near the dtype's subnormals
        scale = 1e-6 if dtype == torch.float16 else 1e-30
    g = geometry("flash", dtype, head_dim=16)
    _, _, out, k, v = _roundtrip(g, [0, 1], scale=scale)
    for got, x in zip(kv_views(out, g, 2), (k, v)):
        amax = x.float().abs().amax(-1, keepdim=True)
        err = (got.float() - x.float()).abs()
        assert bool((err <= amax * (1 / 16 + 1 / 128) + 1e-45).all()), float((err / amax).max())
        assert float(err.max()) > 0  # it is lossy: the bound is not vacuous


def test_fp8_zero_rows_stay_zero():
    g = geometry(dtype=torch.bfloat16)
    raw = torch.zeros(g.raw_bytes(2), dtype=torch.uint8)
    out = decode_chunk(encode_chunk(raw, "fp8", g, 2), g, accept_lossy="fp8")
    assert torch.equal(out, raw)


@pytest.mark.parametrize("dtype, head_dim, at_least", [
    (torch.bfloat16, 64, 1.9), (torch.float32, 64, 3.8), (torch.float16, 128, 1.9)])
def test_fp8_ratio(dtype, head_dim, at_least):
    g = geometry(dtype=dtype, head_dim=head_dim, block_size=16)
    codec = get_codec("fp8")
    assert g.raw_bytes(4) / codec.payload_bytes(g, 4) >= at_least
