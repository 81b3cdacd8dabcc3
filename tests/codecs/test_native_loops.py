"""The C loops of fp8 and int8 give the torch path's bytes, and refuse what it refuses."""

import pytest
import torch

from kvmesh.codecs import decode_chunk, encode_chunk, get_codec
from kvmesh.codecs import native_loops
from kvmesh.errors import CodecError

from tests.codecs.kv import DTYPES, LAYOUT_NAMES, geometry, paged_chunk

pytestmark = pytest.mark.skipif(not native_loops.QUANT,
                                reason="C extension not built, or this CPU lacks AVX2/F16C")
CODECS = ["fp8", "int8"]
# (block_size, head_dim): runs of 16 and more, and runs with scalar tails
SIZES = [(32, 64), (20, 24), (5, 3)]


def _payloads(codec_name, g, ids, scale=1.0):
    codec = get_codec(codec_name)
    raw, _, _ = paged_chunk(g, ids, scale=scale)
    blocks = len(ids)
    c_payload = codec.encode(raw, g, blocks)
    t_payload = torch.empty_like(c_payload)
    codec.encode_torch(raw, g, blocks, t_payload)
    return codec, raw, c_payload, t_payload


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_c_and_torch_give_the_same_bytes(codec_name, layout, dtype, size):
    block_size, head_dim = size
    g = geometry(layout, dtype, block_size=block_size, head_dim=head_dim)
    ids = [3, 0, 4]
    codec, raw, c_payload, t_payload = _payloads(codec_name, g, ids)
    assert torch.equal(c_payload, t_payload)
    c_out, t_out = torch.empty_like(raw), torch.empty_like(raw)
    codec.decode(c_payload, g, len(ids), c_out)
    codec.decode_torch(c_payload, g, len(ids), t_out)
    assert torch.equal(c_out, t_out)


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("scale", [1e-30, 3e-3, 1e30])  # subnormal codes; huge scales
def test_extreme_magnitudes_match(codec_name, scale):
    g = geometry("vllm-cpu", torch.float32, block_size=32, head_dim=64)
    codec, raw, c_payload, t_payload = _payloads(codec_name, g, [0, 1], scale=scale)
    assert torch.equal(c_payload, t_payload)
    c_out, t_out = torch.empty_like(raw), torch.empty_like(raw)
    codec.decode(c_payload, g, 2, c_out)
    codec.decode_torch(c_payload, g, 2, t_out)
    assert torch.equal(c_out, t_out)


def _both_decoders(codec, payload, g, blocks):
    out = torch.empty(g.raw_bytes(blocks), dtype=torch.uint8)
    yield lambda: codec.decode(payload, g, blocks, out)
    yield lambda: codec.decode_torch(payload, g, blocks, out)


@pytest.mark.parametrize("code", [0x7F, 0xFF])
def test_fp8_nan_codes_are_refused(code):
    g = geometry(dtype=torch.bfloat16, block_size=32, head_dim=64)
    codec, _, payload, _ = _payloads("fp8", g, [0])
    payload[1000] = code
    for decode in _both_decoders(codec, payload, g, 1):
        with pytest.raises(CodecError, match="codes"):
            decode()


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, 2.0 ** 121])
def test_bad_scales_are_refused(codec_name, bad):
    g = geometry(dtype=torch.float16, block_size=32, head_dim=64)
    codec, _, payload, _ = _payloads(codec_name, g, [0, 1])
    scales = payload[2 * g.block_elements:].view(torch.bfloat16)
    scales[len(scales) - 1] = bad
    for decode in _both_decoders(codec, payload, g, 2):
        with pytest.raises(CodecError, match="scale"):
            decode()


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_kv_with_inf_or_nan_is_not_encoded(codec_name, bad):
    g = geometry(dtype=torch.float32, block_size=32, head_dim=64)
    raw, _, _ = paged_chunk(g, [0, 1])
    raw.view(torch.float32)[777] = bad
    codec = get_codec(codec_name)
    with pytest.raises(CodecError, match="inf or NaN"):
        encode_chunk(raw, codec_name, g, 2)
    with pytest.raises(CodecError, match="inf or NaN"):
        codec.encode_torch(raw, g, 2, torch.empty(codec.payload_bytes(g, 2), dtype=torch.uint8))


def test_decode_chunk_uses_the_c_loops_on_cpu(monkeypatch):
    g = geometry(dtype=torch.bfloat16, block_size=32, head_dim=64)
    raw, _, _ = paged_chunk(g, [0, 1])
    env = encode_chunk(raw, "fp8", g, 2)
    calls = []
    real = native_loops.decode
    monkeypatch.setattr(native_loops, "decode", lambda *a: calls.append(1) or real(*a))
    decode_chunk(env, g, "fp8")
    assert calls == [1]
