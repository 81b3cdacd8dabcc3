"""fp8 and int8 round trips against their numpy twins, on every layout and dtype."""

import numpy as np
import pytest
import torch

from kvmesh.codecs import decode_chunk, encode_chunk, get_codec, kv_views
from kvmesh.codecs.reference import fp8_roundtrip, int8_roundtrip

from tests.codecs.kv import DTYPES, LAYOUT_NAMES, geometry, paged_chunk

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# codec -> (twin of K's round trip, twin of V's, error bound as a fraction of a group's amax)
TWINS = {
    "fp8": (fp8_roundtrip, fp8_roundtrip, 1 / 16 + 1 / 128),
    "int8": (lambda x, d: int8_roundtrip(x, d, axis=-2),
             lambda x, d: int8_roundtrip(x, d, axis=-1), 1 / 254 + 1 / 128),
}
GROUP_AXIS = {"fp8": (-1, -1), "int8": (-2, -1)}


def _roundtrip(codec, g, ids, scale=1.0, seed=0):
    raw, k, v = paged_chunk(g, ids, scale=scale, seed=seed)
    env = encode_chunk(raw, codec, g, len(ids))
    assert env is not None and env.numel() % 2 == 1
    return decode_chunk(env, g, accept_lossy=codec), k, v


@pytest.mark.parametrize("codec", sorted(TWINS))
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids", [[0, 1, 2], [5]])  # a full chunk and a partial one
def test_round_trip_matches_the_numpy_twin(codec, layout, dtype, ids):
    g = geometry(layout, dtype)
    out, k, v = _roundtrip(codec, g, ids)
    for got, x, twin in zip(kv_views(out, g, len(ids)), (k, v), TWINS[codec][:2]):
        np.testing.assert_array_equal(got.float().numpy(), twin(x.float().numpy(),
                                                                DTYPE_NAMES[dtype]))


@pytest.mark.parametrize("codec", sorted(TWINS))
@pytest.mark.parametrize("scale", ["tiny", 1e-3, 1.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_error_is_bounded_by_each_groups_amax(codec, scale, dtype):
    if scale == "tiny":  # near the dtype's subnormals
        scale = 1e-4 if dtype == torch.float16 else 1e-30
    g = geometry("flash", dtype, head_dim=16)
    out, k, v = _roundtrip(codec, g, [0, 1], scale=scale)
    for got, x, axis in zip(kv_views(out, g, 2), (k, v), GROUP_AXIS[codec]):
        amax = x.float().abs().amax(axis, keepdim=True)
        err = (got.float() - x.float()).abs()
        assert bool((err <= amax * TWINS[codec][2]).all()), float((err / amax).max())
        assert float(err.max()) > 0  # it is lossy: the bound is not vacuous


@pytest.mark.parametrize("codec", sorted(TWINS))
def test_zero_groups_stay_zero(codec):
    g = geometry(dtype=torch.bfloat16)
    raw = torch.zeros(g.raw_bytes(2), dtype=torch.uint8)
    out = decode_chunk(encode_chunk(raw, codec, g, 2), g, accept_lossy=codec)
    assert torch.equal(out, raw)


@pytest.mark.parametrize("codec, dtype, block_size, head_dim, at_least", [
    ("fp8", torch.bfloat16, 16, 64, 1.9), ("fp8", torch.float32, 16, 64, 3.8),
    ("fp8", torch.float16, 16, 128, 1.9),
    ("int8", torch.bfloat16, 32, 64, 1.9), ("int8", torch.float32, 32, 64, 3.8)])
def test_ratio(codec, dtype, block_size, head_dim, at_least):
    g = geometry(dtype=dtype, head_dim=head_dim, block_size=block_size)
    assert g.raw_bytes(4) / get_codec(codec).payload_bytes(g, 4) >= at_least


@pytest.mark.parametrize("codec", sorted(TWINS))
def test_decode_refuses_a_payload_of_the_wrong_size(codec):
    from kvmesh.errors import CodecError

    g = geometry(dtype=torch.bfloat16)
    raw, _, _ = paged_chunk(g, [0, 1])
    payload = get_codec(codec).encode(raw, g, 2)
    with pytest.raises(CodecError, match="expected"):
        get_codec(codec).decode(payload[:-2], g, 2, torch.empty_like(raw))
