import struct

import pytest
import torch

from kvmesh.codecs import (
    HEADER_BYTES, decode_chunk, encode_chunk, encoded_bound, get_codec, is_encoded, read_header,
)
from kvmesh.errors import CodecError, ConfigError

from tests.codecs.kv import geometry, random_chunk

G = geometry(dtype=torch.bfloat16, head_dim=16)
BLOCKS = 3


def _envelope(codec="fp8", blocks=BLOCKS, g=G):
    raw, _, _ = random_chunk(g, blocks)
    return encode_chunk(raw, codec, g, blocks)


def _with_header(env: torch.Tensor, **fields) -> torch.Tensor:
    """A copy of `env` with header fields replaced."""
    names = ["magic", "codec_id", "flags", "blocks", "raw_len", "payload_len"]
    values = dict(zip(names, struct.unpack("<4sBBHQQ", env[:HEADER_BYTES].numpy().tobytes())))
    values.update(fields)
    out = env.clone()
    out[:HEADER_BYTES] = torch.frombuffer(bytearray(struct.pack("<4sBBHQQ", *values.values())),
                                          dtype=torch.uint8)
    return out


def test_header_says_what_was_encoded():
    env = _envelope()
    h = read_header(env)
    assert (h.codec_id, h.flags, h.blocks) == (get_codec("fp8").codec_id, 0, BLOCKS)
    assert h.raw_len == G.raw_bytes(BLOCKS)
    assert h.payload_len == get_codec("fp8").payload_bytes(G, BLOCKS)
    assert env.numel() == encoded_bound("fp8", G, BLOCKS) < G.raw_bytes(BLOCKS)
    assert is_encoded(env.numel()) and not is_encoded(G.raw_bytes(BLOCKS))


def test_bytes_and_tensors_decode_alike_and_out_is_filled_in_place():
    env = _envelope()
    from_bytes = decode_chunk(env.numpy().tobytes(), G, accept_lossy="fp8")
    out = torch.full((G.raw_bytes(BLOCKS) + 10,), 7, dtype=torch.uint8)
    into = decode_chunk(env, G, accept_lossy="fp8", out=out)
    assert torch.equal(from_bytes, into) and into.data_ptr() == out.data_ptr()
    assert into.numel() == G.raw_bytes(BLOCKS) and bool((out[-10:] == 7).all())


def test_misaligned_envelope_still_decodes():
    env = _envelope()
    buf = torch.zeros(env.numel() + 1, dtype=torch.uint8)
    buf[1:] = env
    assert torch.equal(decode_chunk(buf[1:], G, "fp8"), decode_chunk(env, G, "fp8"))


def _bad_cases():
    raw_len = G.raw_bytes(BLOCKS)
    payload = get_codec("fp8").payload_bytes(G, BLOCKS)
    return {
        "bad magic": lambda e: _with_header(e, magic=b"KVC2"),
        "unknown codec": lambda e: _with_header(e, codec_id=250),
        "no codec id": lambda e: _with_header(e, codec_id=0),
        "unknown flags": lambda e: _with_header(e, flags=1),
        "zero blocks": lambda e: _with_header(e, blocks=0),
        "more blocks than a chunk": lambda e: _with_header(e, blocks=G.max_blocks + 1),
        "blocks not matching raw_len": lambda e: _with_header(e, blocks=BLOCKS - 1),
        "raw_len off the geometry": lambda e: _with_header(e, raw_len=raw_len + 2),
        "huge raw_len": lambda e: _with_header(e, raw_len=1 << 62),
        "payload_len short": lambda e: _with_header(e, payload_len=payload - 2),
        "payload_len long": lambda e: _with_header(e, payload_len=payload + 2),
        "truncated": lambda e: e[:-2],
        "truncated header": lambda e: e[:HEADER_BYTES - 1],
        "extended": lambda e: torch.cat([e, torch.zeros(2, dtype=torch.uint8)]),
        "even length": lambda e: e[:-1],
        "empty": lambda e: e[:0],
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_envelope_refusals(case):
    env = _envelope()
    bad = _bad_cases()[case](env)
    out = torch.full((G.raw_bytes(BLOCKS),), 9, dtype=torch.uint8)
    with pytest.raises(CodecError):
        decode_chunk(bad, G, "fp8", out=out)
    assert bool((out == 9).all())  # refused before anything was written


@pytest.mark.parametrize("accept", ["", "int8", "zstd"])
def test_lossy_codec_not_accepted(accept):
    with pytest.raises(CodecError, match="not accepted"):
        decode_chunk(_envelope(), G, accept_lossy=accept)


def test_other_geometry_is_refused():
    env = _envelope()
    for g in (geometry(dtype=torch.float32, head_dim=16), geometry(dtype=torch.bfloat16),
              geometry(dtype=torch.bfloat16, head_dim=16, max_blocks=2)):
        with pytest.raises(CodecError):
            decode_chunk(env, g, "fp8")


def test_corrupt_scale_is_refused():
    env = _envelope()
    bad = env.clone()
    scales_at = HEADER_BYTES + BLOCKS * G.block_elements
    bad[scales_at:scales_at + 2].view(torch.bfloat16)[0] = float("inf")
    with pytest.raises(CodecError, match="scale"):
        decode_chunk(bad, G, "fp8")
    bad[scales_at:scales_at + 2].view(torch.bfloat16)[0] = -1.0
    with pytest.raises(CodecError, match="scale"):
        decode_chunk(bad, G, "fp8")


def test_encode_refuses_wrong_raw_and_unknown_codec():
    raw, _, _ = random_chunk(G, BLOCKS)
    with pytest.raises(CodecError):
        encode_chunk(raw[:-2], "fp8", G, BLOCKS)
    with pytest.raises(CodecError):
        encode_chunk(raw, "fp8", G, G.max_blocks + 1)
    for name in ("nope", "none"):
        with pytest.raises(ConfigError):
            encode_chunk(raw, name, G, BLOCKS)


def test_fixed_codec_that_would_grow_the_chunk_is_declined():
    g = geometry(dtype=torch.float16, head_dim=1, heads=1, block_size=1, layers=1)
    raw, _, _ = random_chunk(g, 1)
    assert encode_chunk(raw, "fp8", g, 1) is None
